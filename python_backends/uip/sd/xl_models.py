"""SDXL's networks as plain torch callables (pure, no Triton), beside uip.sd.models: the two
text encoders (penultimate hidden state, pooled projection) and the UNet with added
conditioning. The VAE decoder is uip.sd.models.VaeDecoder (`vae_dtype`: SDXL's fp16 VAE
overflows, so a folder with `force_upcast` decodes in float32, as the pipeline does).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from uip.sd.accel import Acceleration
from uip.sd.models import UNet, _Component


class TextEncoderXL(_Component):
    """Token ids [B, L] -> (`hidden_states[-2]` [B, L, D], pooled [B, P] or None): the pooled
    output is `text_embeds` of a CLIPTextModelWithProjection (`text_encoder_2`)."""

    def __init__(self, folder: Path, part: str, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, model=None):
        self.part = part
        super().__init__(folder, device, dtype, model)

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.model(ids.to(self.device, torch.long), output_hidden_states=True)
        pooled = out[0] if out[0].ndim == 2 else None
        return out.hidden_states[-2].to(self.dtype), (
            None if pooled is None else pooled.to(self.dtype))


class UNetXL(UNet):
    """(latents, timesteps [B], hidden, text_embeds [B, P], time_ids [B, 6]) -> noise
    prediction. channels_last and torch.compile apply (uip.sd.accel); CUDA graphs do not yet."""

    def __init__(self, folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 model=None, accel: Acceleration | None = None):
        if accel is not None and accel.cuda_graphs:
            raise ValueError("cuda_graphs is not supported for SDXL UNets yet (compile is)")
        super().__init__(folder, device, dtype, model, accel)

    @torch.inference_mode()
    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor,
                 text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
        added = {"text_embeds": text_embeds.to(self.device, self.dtype),
                 "time_ids": time_ids.to(self.device, self.dtype)}
        return self.forward(latents.to(self.device, self.dtype),
                            timesteps.to(self.device).reshape(-1),
                            encoder_hidden_states=hidden.to(self.device, self.dtype),
                            added_cond_kwargs=added, return_dict=False)[0]


def vae_dtype(folder: Path, dtype: torch.dtype) -> torch.dtype:
    """float32 for a float16 VAE whose config says `force_upcast`, else `dtype`."""
    cfg = json.loads((Path(folder) / "vae" / "config.json").read_text())
    upcast = dtype == torch.float16 and cfg.get("force_upcast", True)
    return torch.float32 if upcast else dtype
