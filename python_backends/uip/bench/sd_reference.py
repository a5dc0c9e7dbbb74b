"""diffusers' own StableDiffusionPipeline (and StableDiffusionXLPipeline) on the same folder:
the reference our images equal.

The in-process side of `uip bench sd` (uip.bench.sd), and what tests/unit/test_sd_loop.py and
tests/integration/test_sd.py compare the served images with. The scheduler is switched the way
diffusers users do it, `Cls.from_config(<the folder's scheduler>.config)`, freshly per call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from uip.sd.request import DEFAULT_SEED
from uip.sd.schedulers import SCHEDULERS


class DiffusersReference:
    pipeline_class = "StableDiffusionPipeline"
    pipeline_kwargs: dict = {}

    def __init__(self, folder: Path, device: str = "cpu", dtype: torch.dtype | None = None):
        import diffusers

        kw = {"torch_dtype": dtype} if dtype is not None else {}
        cls = getattr(diffusers, self.pipeline_class)
        self.pipe = cls.from_pretrained(Path(folder), **kw, **self.pipeline_kwargs).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.base = self.pipe.scheduler
        self.default_scheduler = {v: k for k, v in SCHEDULERS.items()}.get(
            type(self.base).__name__)

    def scheduler(self, name: str | None):
        import diffusers

        cls = type(self.base) if name is None else getattr(diffusers, SCHEDULERS[name])
        return cls.from_config(self.base.config)

    def images(self, prompts: list[str], negative_prompt: str | list[str] | None = "",
               steps: int = 50, guidance_scale: float = 7.5, seed: int = DEFAULT_SEED,
               height: int | None = None, width: int | None = None,
               scheduler: str | None = None, **extra) -> np.ndarray:
        """uint8 [B, H, W, 3], as the pipeline's PIL output (its numpy_to_pil arithmetic);
        `extra`: more arguments of the pipeline's call."""
        self.pipe.scheduler = self.scheduler(scheduler)
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * len(prompts)
        out = self.pipe(
            prompts, negative_prompt=negative_prompt, num_inference_steps=steps,
            guidance_scale=guidance_scale, height=height, width=width,
            generator=torch.Generator(device="cpu").manual_seed(seed), output_type="np",
            **extra,
        ).images
        return (out * 255).round().astype("uint8")

    def __call__(self, prompt: str, **kw) -> np.ndarray:
        """One image, uint8 [H, W, 3]."""
        return self.images([prompt], **kw)[0]


class DiffusersXLReference(DiffusersReference):
    """StableDiffusionXLPipeline (no watermark), with its own defaults: no negative prompt
    (zero embeddings) and CFG 5.0; `extra` takes original_size, crops_coords_top_left,
    target_size."""

    pipeline_class = "StableDiffusionXLPipeline"
    pipeline_kwargs = {"add_watermarker": False}

    def images(self, prompts: list[str], negative_prompt: str | list[str] | None = None,
               guidance_scale: float = 5.0, **kw) -> np.ndarray:
        return super().images(prompts, negative_prompt=negative_prompt,
                              guidance_scale=guidance_scale, **kw)
