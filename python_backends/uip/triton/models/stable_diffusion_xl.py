"""`stable_diffusion_xl` (Orchestrator): SDXL-shaped text -> UINT8 image [H, W, 3].

`stable_diffusion`'s contract, model and step batcher (uip.triton.models.stable_diffusion),
over an SDXL pipeline folder: two text encoders, pooled text embeddings and added time ids
(uip.sd.xl_loop), optional size-conditioning inputs (uip.sd.xl_request), CFG 5.0 and the
folder's scheduler (SDXL base: Euler) by default, default size = the UNet's sample size x the
VAE factor (1024x1024 for SDXL base). Every iteration is ONE UNet call over all active
requests of a latent size, with their `added_cond_kwargs` batched like the hidden states.

Placement: co-located only (the four networks in this process; `placement` must be
`colocated`): served separately they would need four more Mono models. The GPU speed
parameters of uip.sd.accel apply, except `cuda_graphs`. A float16 VAE whose config says
`force_upcast` (SDXL's) decodes in float32, as the pipeline does.
"""

from __future__ import annotations

import torch

from uip.sd.accel import Acceleration
from uip.sd.loop import PipelineInfo
from uip.sd.models import VaeDecoder
from uip.sd.xl_loop import SDXLLoop, XLInfo, load_tokenizers
from uip.sd.xl_models import TextEncoderXL, UNetXL, vae_dtype
from uip.sd.xl_request import SDXLLimits, SDXLRequest, parse_xl_request
from uip.triton.models.stable_diffusion import StableDiffusion


class StableDiffusionXL(StableDiffusion):
    limits_class = SDXLLimits
    default_guidance = 5.0  # StableDiffusionXLPipeline's

    def _make_loop(self, folder, info: PipelineInfo, default_threads: int) -> SDXLLoop:
        s = self.settings
        self.xl = XLInfo.from_folder(folder)
        self.placement = s.param("placement", "colocated")
        if self.placement != "colocated":
            raise ValueError("stable_diffusion_xl runs its networks in its own process: "
                             f"parameter placement must be colocated, got {self.placement!r}")
        torch.set_num_threads(s.param("colocated_torch_threads", default_threads, int))
        accel = Acceleration.from_settings(s, self.device)
        encoders = tuple(TextEncoderXL(folder, part, self.device, self.dtype)
                         for part in ("text_encoder", "text_encoder_2"))
        unet = UNetXL(folder, self.device, self.dtype, accel=accel)
        decode = VaeDecoder(folder, self.device, vae_dtype(folder, self.dtype), accel=accel)
        return SDXLLoop(load_tokenizers(folder), self.schedulers, info, encoders, unet, decode,
                        device=self.device, eta=s.param("eta", 0.0, float))

    def _parse(self, inputs) -> SDXLRequest:
        return parse_xl_request(inputs, self.limits, self.defaults,
                                check_scheduler=self.schedulers.check,
                                size_multiple=self.size_multiple,
                                force_zeros_for_empty_prompt=self.xl.force_zeros_for_empty_prompt)
