"""The Stable Diffusion sampling loop, step for step as diffusers' StableDiffusionPipeline.

Pure logic: the three networks are callables (in-process modules in tests, BLS calls to
`sd_text_encoder`, `sd_unet` and `sd_vae_decoder` in the server), so the same loop is checked
against the pipeline without a server. What keeps it bit-exact with the pipeline:
- prompt and negative prompt are tokenized to the tokenizer's max length (77) and encoded
  separately, as `encode_prompt` does; CFG only when guidance_scale > 1;
- a fresh scheduler per request, `set_timesteps` first; the initial noise comes from
  `randn_tensor` with a CPU generator seeded per request, times `init_noise_sigma`;
- per step: `scale_model_input` on the [negative, positive] batch, ONE batch-2 UNet call,
  guidance, `scheduler.step(..., eta/generator only if its signature takes them)`;
- `decode` gets the final latents (the VAE model divides by its scaling factor).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from uip.sd.request import SDRequest
from uip.sd.schedulers import SchedulerFactory

Encode = Callable[[torch.Tensor], torch.Tensor]  # ids [B, L] int64 -> hidden [B, L, D]
UNet = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # x, t[B], h -> eps
Decode = Callable[[torch.Tensor], torch.Tensor | np.ndarray]  # latents -> uint8 [B, H, W, 3]


class Cancelled(Exception):
    """The request was cancelled by its client; the loop stopped before its next UNet call."""


@dataclass(frozen=True)
class PipelineInfo:
    """What the loop needs to know about a diffusers SD folder, without loading weights."""

    latent_channels: int
    vae_scale_factor: int
    sample_size: tuple[int, int]  # the UNet's latent size: default image = this x scale factor
    num_train_timesteps: int

    @classmethod
    def from_folder(cls, folder: Path) -> PipelineInfo:
        folder = Path(folder)
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        if unet.get("time_cond_proj_dim") is not None:
            raise ValueError(f"{folder}: UNets with time_cond_proj_dim (LCM) are not supported")
        size = unet.get("sample_size", 64)
        size = (size, size) if isinstance(size, int) else tuple(size)
        return cls(
            latent_channels=int(unet.get("in_channels", 4)),
            vae_scale_factor=2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1),
            sample_size=(int(size[0]), int(size[1])),
            num_train_timesteps=int(sched.get("num_train_timesteps", 1000)),
        )

    @property
    def default_size(self) -> tuple[int, int]:
        return (self.sample_size[0] * self.vae_scale_factor,
                self.sample_size[1] * self.vae_scale_factor)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(folder) / "tokenizer")


def _never() -> bool:
    return False


class SDLoop:
    """text -> image, calling `encode`, `unet` and `decode` like StableDiffusionPipeline does."""

    def __init__(self, tokenizer, schedulers: SchedulerFactory, info: PipelineInfo,
                 encode: Encode, unet: UNet, decode: Decode, device: str | torch.device = "cpu",
                 eta: float = 0.0):
        self.tokenizer = tokenizer
        self.schedulers = schedulers
        self.info = info
        self.encode = encode
        self.unet = unet
        self.decode = decode
        self.device = torch.device(device)
        self.eta = eta

    def tokenize(self, text: str, max_length: int | None = None) -> torch.Tensor:
        """Token ids [1, 77]: padded to and truncated at the tokenizer's max length."""
        return self.tokenizer(
            text, padding="max_length",
            max_length=max_length or self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids

    def embeddings(self, req: SDRequest, guided: bool) -> torch.Tensor:
        positive = self.encode(self.tokenize(req.prompt))
        if not guided:
            return positive
        negative = self.encode(self.tokenize(req.negative_prompt, positive.shape[1]))
        return torch.cat([negative.to(positive.dtype), positive])

    def __call__(self, req: SDRequest, cancelled: Callable[[], bool] = _never,
                 on_step: Callable[[int, torch.Tensor], None] | None = None) -> np.ndarray:
        """The image, uint8 [H, W, 3]; raises Cancelled when `cancelled()` turns true."""
        if cancelled():
            raise Cancelled()
        guided = req.guidance_scale > 1.0
        hidden = self.embeddings(req, guided)
        scheduler = self.schedulers.create(req.scheduler)
        scheduler.set_timesteps(req.steps, device=self.device)
        generator = torch.Generator(device="cpu").manual_seed(req.seed)
        s = self.info.vae_scale_factor
        shape = (1, self.info.latent_channels, req.height // s, req.width // s)
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=hidden.dtype)
        latents = latents * scheduler.init_noise_sigma
        params = set(inspect.signature(scheduler.step).parameters)
        extra = {}
        if "eta" in params:
            extra["eta"] = self.eta
        if "generator" in params:
            extra["generator"] = generator

        for i, t in enumerate(scheduler.timesteps):
            if cancelled():
                raise Cancelled()
            x = torch.cat([latents] * 2) if guided else latents
            x = scheduler.scale_model_input(x, t)
            noise = self.unet(x, t.reshape(1).expand(x.shape[0]), hidden)
            if guided:
                uncond, text = noise.chunk(2)
                noise = uncond + req.guidance_scale * (text - uncond)
            latents = scheduler.step(noise, t, latents, **extra, return_dict=False)[0]
            if on_step is not None:
                on_step(i, t)
        if cancelled():
            raise Cancelled()
        image = self.decode(latents)
        if isinstance(image, torch.Tensor):
            image = image.cpu().numpy()
        return np.asarray(image)[0]
