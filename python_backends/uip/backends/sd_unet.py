"""`sd_unet` (Mono): sample [C, h, w], timestep FP32 [1] (one per sample), encoder_hidden_states
[L, D] -> noise_pred [C, h, w]. Dynamic batching merges the steps of concurrent requests (each
sends its [negative, positive] pair) into one UNet call; per-sample timesteps let requests at
different steps share a batch."""

from __future__ import annotations

from uip.sd.models import UNet, setup
from uip.serving import pb


class SDUNet:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings, self.device, dtype = setup(args)
        self.model = UNet(self.settings.artifact_dir(), self.device, dtype)

    def _run(self, sample, timestep, encoder_hidden_states):
        return {"noise_pred": self.model(sample, timestep.reshape(-1), encoder_hidden_states)}

    def execute(self, requests):
        return pb.execute_batched(
            requests, ["sample", "timestep", "encoder_hidden_states"], self._run, self.device)

    def finalize(self) -> None:
        self.model = None
