"""Sampling parameters: one table of rules, read from either side of the contract (pure).

Clients send `temperature`, `top_p`, `top_k`, `seed`; llm_engine takes TensorRT-LLM's names
(`temperature`, `runtime_top_p`, `runtime_top_k`, `random_seed`), where 0 for top_k / top_p
means "not set". Absent means greedy; so do temperature 0 and top_k 1 (`effective`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from uip.core.inputs import InvalidInput, Scalar
from uip.llm.engine import SamplingParams

_INT32_MAX = 2**31 - 1
_UINT64_MAX = 2**64 - 1

# field -> (client input, engine input, numpy dtype on the wire)
NAMES = {
    "temperature": ("temperature", "temperature", np.float32),
    "top_p": ("top_p", "runtime_top_p", np.float32),
    "top_k": ("top_k", "runtime_top_k", np.int32),
    "seed": ("seed", "random_seed", np.uint64),
}


def _scalars(side: int, zero_is_unset: bool) -> dict[str, Scalar]:
    n = {field: names[side] for field, names in NAMES.items()}
    return {
        "temperature": Scalar(n["temperature"], float, minimum=0.0),
        "top_p": Scalar(n["top_p"], float, minimum=0.0, maximum=1.0,
                        exclusive_minimum=not zero_is_unset),
        "top_k": Scalar(n["top_k"], int, minimum=0, maximum=_INT32_MAX),
        "seed": Scalar(n["seed"], int, minimum=0, maximum=_UINT64_MAX),
    }


_CLIENT = _scalars(0, zero_is_unset=False)
_ENGINE = _scalars(1, zero_is_unset=True)


def read_client(inputs: Mapping[str, np.ndarray]) -> dict[str, float | int]:
    """The sampling inputs a client gave (validated), by field name; absent ones left out."""
    return {f: v for f, s in _CLIENT.items() if (v := s.read(inputs)) is not None}


def read_engine(inputs: Mapping[str, np.ndarray]) -> SamplingParams:
    """llm_engine's sampling inputs; top_k / top_p 0 mean "not set" (TensorRT-LLM)."""
    v = {f: s.read(inputs) for f, s in _ENGINE.items()}
    return SamplingParams(temperature=v["temperature"], top_k=v["top_k"] or None,
                          top_p=v["top_p"] or None, seed=v["seed"])


def engine_tensors(given: Mapping[str, float | int]) -> dict[str, np.ndarray]:
    """llm_engine's sampling inputs for the fields given (batch 1)."""
    return {NAMES[f][1]: np.array([[v]], dtype=NAMES[f][2]) for f, v in given.items()}


def effective(sp: SamplingParams) -> SamplingParams | None:
    """None for greedy decoding; else the validated parameters. Every runtime calls this."""
    if sp.temperature is not None and not (math.isfinite(sp.temperature) and sp.temperature >= 0):
        raise InvalidInput(f"temperature must be >= 0, got {sp.temperature}")
    if sp.top_p is not None and not (0.0 < sp.top_p <= 1.0):
        raise InvalidInput(f"top_p must be in (0, 1], got {sp.top_p}")
    if sp.top_k is not None and sp.top_k < 0:
        raise InvalidInput(f"top_k must be >= 0, got {sp.top_k}")
    if sp.temperature == 0 or sp.greedy or sp.top_k == 1:
        return None
    return sp
