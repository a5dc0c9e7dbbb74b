"""The three networks of a diffusers SD folder as plain torch callables (pure, no Triton).

`sd_text_encoder`, `sd_unet` and `sd_vae_decoder` wrap these; tests call them in-process.
Each loads its own subfolder with the class named in the folder's model_index.json, so any
SD 1.x/2.x pipeline folder works.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from uip.sd.accel import Acceleration, GraphedCall

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str | None) -> torch.dtype:
    name = (name or "float32").lower()
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _component_class(folder: Path, part: str):
    index = json.loads((Path(folder) / "model_index.json").read_text())
    library, class_name = index[part]
    module = __import__(library)
    return getattr(module, class_name)


def _load(folder: Path, part: str, device: str, dtype: torch.dtype):
    cls = _component_class(folder, part)
    kw = {"dtype": dtype} if part.startswith("text_encoder") else {"torch_dtype": dtype}
    model = cls.from_pretrained(Path(folder) / part, **kw)
    return model.to(device).eval()


class _Component:
    """One pipeline part (`part`, its subfolder) on a device and dtype; `model` replaces
    loading it from `folder` (tests pass the pipeline's own)."""

    part = ""

    def __init__(self, folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 model=None, accel: Acceleration | None = None):
        self.model = model if model is not None else _load(folder, self.part, device, dtype)
        self.device = torch.device(device)
        self.dtype = dtype
        self.accel = accel or Acceleration()


class TextEncoder(_Component):
    """Token ids [B, L] -> last hidden state [B, L, D] (`text_encoder(ids)[0]`)."""

    part = "text_encoder"

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(ids.to(self.device, torch.long))[0]
        return out.to(self.dtype)


class UNet(_Component):
    """(latents [B, C, h, w], timesteps [B], hidden [B, L, D]) -> noise prediction."""

    part = "unet"

    def __init__(self, folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 model=None, accel: Acceleration | None = None):
        super().__init__(folder, device, dtype, model, accel)
        self.forward = self.accel.prepare(self.model, self.accel.compile)
        self.graphed: GraphedCall | None = None
        if self.accel.cuda_graphs:
            self.graphed = GraphedCall(self._run, self.accel.graph_buckets,
                                       *graph_shapes(Path(folder), self.model.config),
                                       self.device, dtype)
            startup_note(f"sd unet: CUDA graphs for batches {self.graphed.buckets} captured in "
                         f"{sum(self.graphed.capture_s.values()):.1f} s (" + ", ".join(
                             f"{b}: {t:.1f} s" for b, t in sorted(self.graphed.capture_s.items()))
                         + f"; compile {self.accel.compile})")

    def _run(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.forward(x, t, encoder_hidden_states=h, return_dict=False)[0]

    @torch.inference_mode()
    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor,
                 hidden: torch.Tensor) -> torch.Tensor:
        x = latents.to(self.device, self.dtype)
        t = timesteps.to(self.device).reshape(-1)
        h = hidden.to(self.device, self.dtype)
        if self.graphed is not None:
            out = self.graphed(x, t.to(torch.float32), h)
            if out is not None:
                return out
        return self._run(x, t, h)


class VaeDecoder(_Component):
    """Final latents [B, C, h, w] -> uint8 images [B, H, W, 3], as the pipeline post-processes.

    `vae.decode(latents / scaling_factor)`, then VaeImageProcessor's arithmetic on the device:
    `(x * 0.5 + 0.5).clamp(0, 1)`, channels last, float32, `* 255`, round half to even.
    Compiled (`compile_vae`), it is compiled at start-up on one latent of the default size
    (the time is logged); with static shapes (`compile_dynamic` false) it then decodes one
    image at a time, so a batch of any size runs that compiled shape instead of compiling
    another one (~1 min) in the middle of serving.
    """

    part = "vae"

    def __init__(self, folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 model=None, accel: Acceleration | None = None):
        super().__init__(folder, device, dtype, model, accel)
        self.decode = self.accel.prepare(self.model, self.accel.compile_vae, self.model.decode)
        self.per_image = self.accel.compile_vae and not self.accel.compile_dynamic
        if self.accel.compile_vae:
            t0 = time.perf_counter()
            unet = json.loads((Path(folder) / "unet" / "config.json").read_text())
            size = latent_size(unet["sample_size"])
            self(torch.zeros(1, self.model.config.latent_channels, *size))
            startup_note(f"sd vae: compiled for one {'x'.join(map(str, size))} latent in "
                         f"{time.perf_counter() - t0:.1f} s")

    @torch.inference_mode()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        if self.per_image and latents.shape[0] > 1:
            return torch.cat([self(latents[i:i + 1]) for i in range(latents.shape[0])])
        latents = latents.to(self.device, self.dtype)
        image = self.decode(latents / self.model.config.scaling_factor, return_dict=False)[0]
        image = (image * 0.5 + 0.5).clamp(0, 1)
        image = image.permute(0, 2, 3, 1).float()
        return (image * 255).round().to(torch.uint8)


def startup_note(text: str) -> None:
    """A start-up timing line on stderr (the server log), whatever the logging set-up."""
    print(f"uip.sd: {text}", file=sys.stderr, flush=True)


def latent_size(sample_size: int | list[int]) -> tuple[int, ...]:
    """The latents' (height, width) from a UNet config's `sample_size` (one int or a pair)."""
    return (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)


def graph_shapes(folder: Path, unet_config) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The UNet's sample shape at the default size and its text hidden states' shape."""
    size = latent_size(unet_config.sample_size)
    text = json.loads((Path(folder) / "text_encoder" / "config.json").read_text())
    length = int(text.get("max_position_embeddings", 77))
    return (unet_config.in_channels, *size), (length, unet_config.cross_attention_dim)


def setup(args: dict[str, str]):
    """Settings, device and dtype shared by the SD tensor models (spec parameters `dtype`,
    `torch_threads`)."""
    from uip.core.settings import ModelSettings

    settings = ModelSettings.from_args(args)
    threads = settings.param("torch_threads", 0, int)
    if threads > 0:
        torch.set_num_threads(threads)
    return settings, settings.device, torch_dtype(settings.param("dtype", "float32"))
