"""The `stable_diffusion_xl` request contract: `stable_diffusion`'s inputs (uip.sd.request), plus
SDXL's size conditioning, all optional INT32 [1]:

  original_height, original_width (default: the image's height and width), crop_top,
  crop_left (default 0), target_height, target_width (default: the image's size)

They become the UNet's six added time ids, as StableDiffusionXLPipeline's `original_size`,
`crops_coords_top_left` and `target_size` (the negative sample gets the same ones). An absent
`negative_prompt` is not the same as an empty one: with the folder's
`force_zeros_for_empty_prompt` (SDXL base: true) the negative embeddings are zeros, as the
pipeline does for `negative_prompt=None`; an empty string is encoded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from uip.core.inputs import Scalar
from uip.sd.request import SDDefaults, SDLimits, SDRequest, parse_request


@dataclass(frozen=True)
class SDXLLimits(SDLimits):
    """SDLimits, plus the largest size-conditioning value (`limits.max_size_condition`):
    original/target sides and crop coordinates, in pixels."""

    max_size_condition: int = 8192


@dataclass(frozen=True)
class SDXLRequest(SDRequest):
    original_size: tuple[int, int] = (0, 0)  # (height, width)
    crop_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] = (0, 0)
    zero_negative: bool = False  # negative embeddings are zeros (absent negative prompt)

    @property
    def time_ids(self) -> list[int]:
        """add_time_ids: original_size + crops_coords_top_left + target_size."""
        return [*self.original_size, *self.crop_top_left, *self.target_size]


def parse_xl_request(inputs: Mapping[str, np.ndarray], limits: SDXLLimits, defaults: SDDefaults,
                     check_scheduler=None, size_multiple: int | None = None,
                     force_zeros_for_empty_prompt: bool = True) -> SDXLRequest:
    """Validate one request's inputs (InvalidInput names the bad one)."""
    base = parse_request(inputs, limits, defaults, check_scheduler, size_multiple)
    top = limits.max_size_condition

    def read(name: str, default: int, lo: int) -> int:
        return int(Scalar(name, int, default, lo, top).read(inputs))

    return SDXLRequest(
        **{f.name: getattr(base, f.name) for f in dataclasses.fields(SDRequest)},
        original_size=(read("original_height", base.height, 1),
                       read("original_width", base.width, 1)),
        crop_top_left=(read("crop_top", 0, 0), read("crop_left", 0, 0)),
        target_size=(read("target_height", base.height, 1), read("target_width", base.width, 1)),
        zero_negative=force_zeros_for_empty_prompt and "negative_prompt" not in inputs,
    )
