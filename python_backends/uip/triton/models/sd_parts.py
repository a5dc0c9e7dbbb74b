"""The SD tensor models (Mono, dynamic batching): one pipeline part each, one output tensor.

- `sd_text_encoder`: input_ids INT64 [L] -> last_hidden_state [L, D].
- `sd_unet`: sample [C, h, w], timestep FP32 [1] (one per sample), encoder_hidden_states [L, D]
  -> noise_pred [C, h, w]. Dynamic batching merges the steps of concurrent requests (each sends
  its [negative, positive] pair) into one UNet call; per-sample timesteps let requests at
  different steps share a batch (`UNet` flattens the [B, 1] timesteps to [B]).
- `sd_vae_decoder`: latents [C, h, w] (as the sampler ends) -> image UINT8 [H, W, 3],
  post-processed exactly as diffusers' VaeImageProcessor does.
GPU speed (channels_last, torch.compile, CUDA graphs per batch bucket): parameters in
uip.sd.accel.
"""

from __future__ import annotations

from uip.sd.accel import Acceleration
from uip.sd.models import TextEncoder, UNet, VaeDecoder, setup
from uip.triton import pb


class SDComponentModel:
    component: type  # uip.sd.models.TextEncoder, UNet or VaeDecoder
    inputs: list[str]  # the model's input tensors, in the component's call order
    output: str

    def initialize(self, args: dict[str, str]) -> None:
        self.settings, self.device, dtype = setup(args)
        accel = Acceleration.from_settings(self.settings, self.device)  # see uip.sd.accel
        self.model = self.component(self.settings.artifact_dir(), self.device, dtype, accel=accel)

    def _run(self, **tensors):
        return {self.output: self.model(*(tensors[n] for n in self.inputs))}

    def execute(self, requests):
        return pb.execute_batched(requests, self.inputs, self._run, self.device)

    def finalize(self) -> None:
        self.model = None


class SDTextEncoder(SDComponentModel):
    component, inputs, output = TextEncoder, ["input_ids"], "last_hidden_state"


class SDUNet(SDComponentModel):
    component, inputs, output = UNet, ["sample", "timestep", "encoder_hidden_states"], "noise_pred"


class SDVaeDecoder(SDComponentModel):
    component, inputs, output = VaeDecoder, ["latents"], "image"
