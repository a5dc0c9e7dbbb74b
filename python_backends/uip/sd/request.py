"""The `stable_diffusion` request contract: parsing and validation with limits from the spec.

Inputs (all shape [1] per request; [1, 1] with the batch dimension):
  prompt BYTES (required), negative_prompt BYTES (default ""), steps INT32, guidance_scale FP32,
  seed INT64 (default 0: requests without a seed are deterministic too), height INT32,
  width INT32, scheduler BYTES (ddim, euler, euler_a, dpm++, pndm, lms; default: the artifact's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from uip.core.inputs import InvalidInput, Scalar, one_text

DEFAULT_SEED = 0


@dataclass(frozen=True)
class SDLimits:
    """Request limits; each can be set in the spec as `limits.<field>`."""

    min_steps: int = 1
    max_steps: int = 1000
    min_height: int = 8
    max_height: int = 1024
    min_width: int = 8
    max_width: int = 1024
    size_multiple: int = 8
    min_guidance_scale: float = 0.0
    max_guidance_scale: float = 100.0
    max_prompt_bytes: int = 16384

    @classmethod
    def from_settings(cls, limits: Mapping[str, str]) -> SDLimits:
        """From a ModelSettings' `limits` (strings); unknown keys are a configuration error."""
        fields = cls.__dataclass_fields__
        unknown = set(limits) - set(fields)
        if unknown:
            raise ValueError(f"unknown stable_diffusion limits {sorted(unknown)}; "
                             f"allowed: {sorted(fields)}")
        kw = {}
        for k, v in limits.items():
            kind = float if "guidance" in k else int
            kw[k] = kind(v)
        out = cls(**kw)
        if out.min_steps < 1 or out.max_steps < out.min_steps:
            raise ValueError("limits need 1 <= min_steps <= max_steps")
        if out.size_multiple < 1:
            raise ValueError("limits.size_multiple must be >= 1")
        return out


@dataclass(frozen=True)
class SDDefaults:
    """What a request gets for an absent optional input."""

    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = DEFAULT_SEED
    height: int = 512
    width: int = 512
    scheduler: str = "pndm"


@dataclass(frozen=True)
class SDRequest:
    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    seed: int
    height: int
    width: int
    scheduler: str


def _size(name: str, value: int, lo: int, hi: int, multiple: int) -> int:
    if value < lo or value > hi:
        raise InvalidInput(f"'{name}' must be between {lo} and {hi} pixels, got {value}")
    if value % multiple:
        raise InvalidInput(f"'{name}' must be a multiple of {multiple}, got {value}")
    return value


def _text(inputs: Mapping[str, np.ndarray], name: str, limits: SDLimits, default: str | None):
    if name not in inputs:
        if default is None:
            raise InvalidInput(f"input '{name}' is required")
        return default
    text = one_text(inputs, name)
    if len(text.encode("utf-8")) > limits.max_prompt_bytes:
        raise InvalidInput(f"'{name}' must be at most {limits.max_prompt_bytes} bytes of UTF-8 "
                           "(only its first 77 tokens are used anyway)")
    return text


def parse_request(
    inputs: Mapping[str, np.ndarray],
    limits: SDLimits,
    defaults: SDDefaults,
    check_scheduler=None,
    size_multiple: int | None = None,
) -> SDRequest:
    """Validate one request's inputs; InvalidInput (-> INVALID_ARG) names the bad input.

    `check_scheduler(name_or_None) -> name` validates the scheduler (SchedulerFactory.check);
    `size_multiple` raises the size granularity (e.g. to the VAE's scale factor).
    """
    multiple = max(limits.size_multiple, size_multiple or 1)
    prompt = _text(inputs, "prompt", limits, None)
    negative = _text(inputs, "negative_prompt", limits, "")
    steps = Scalar("steps", int, defaults.steps, limits.min_steps, limits.max_steps).read(inputs)
    guidance = Scalar("guidance_scale", float, defaults.guidance_scale,
                      limits.min_guidance_scale, limits.max_guidance_scale).read(inputs)
    seed = Scalar("seed", int, defaults.seed, -(2**63), 2**63 - 1).read(inputs)
    height = Scalar("height", int, defaults.height).read(inputs)
    width = Scalar("width", int, defaults.width).read(inputs)
    height = _size("height", height, limits.min_height, limits.max_height, multiple)
    width = _size("width", width, limits.min_width, limits.max_width, multiple)
    scheduler = Scalar("scheduler", str, None).read(inputs)
    if scheduler is not None:
        scheduler = scheduler.strip().lower()
    if check_scheduler is not None:
        scheduler = check_scheduler(scheduler)
    elif scheduler is None:
        scheduler = defaults.scheduler
    return SDRequest(prompt=prompt, negative_prompt=negative, steps=int(steps),
                     guidance_scale=float(guidance), seed=int(seed), height=int(height),
                     width=int(width), scheduler=scheduler)
