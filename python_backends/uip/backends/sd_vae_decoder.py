"""`sd_vae_decoder` (Mono): latents [C, h, w] (as the sampler ends) -> image UINT8 [H, W, 3],
post-processed exactly as diffusers' VaeImageProcessor does (dynamic batching)."""

from __future__ import annotations

from uip.sd.models import VaeDecoder, setup
from uip.serving import pb


class SDVaeDecoder:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings, self.device, dtype = setup(args)
        self.model = VaeDecoder(self.settings.artifact_dir(), self.device, dtype)

    def _run(self, latents):
        return {"image": self.model(latents)}

    def execute(self, requests):
        return pb.execute_batched(requests, ["latents"], self._run, self.device)

    def finalize(self) -> None:
        self.model = None
