"""`sd_vae_decoder` (Mono): latents [C, h, w] (as the sampler ends) -> image UINT8 [H, W, 3],
post-processed exactly as diffusers' VaeImageProcessor does (dynamic batching)."""

from __future__ import annotations

from uip.backends.sd_component import SDComponentModel
from uip.sd.models import VaeDecoder


class SDVaeDecoder(SDComponentModel):
    component, inputs, output = VaeDecoder, ["latents"], "image"
