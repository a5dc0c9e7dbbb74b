"""Sampling rules, normalised once (`uip.llm.sampling`) for every runtime and both sides."""

from __future__ import annotations

import numpy as np
import pytest

from uip.core.inputs import InvalidInput
from uip.llm import sampling
from uip.llm.engine import SamplingParams


@pytest.mark.parametrize("sp, greedy", [
    (SamplingParams(), True),
    (SamplingParams(temperature=0.0), True),
    (SamplingParams(top_k=1, temperature=0.9), True),
    (SamplingParams(seed=3), True),
    (SamplingParams(temperature=0.7), False),
    (SamplingParams(top_p=0.9), False),
    (SamplingParams(top_k=40), False),
])
def test_effective(sp, greedy):
    assert (sampling.effective(sp) is None) == greedy


@pytest.mark.parametrize("sp", [SamplingParams(temperature=-0.1), SamplingParams(top_p=0.0),
                                SamplingParams(top_p=1.5), SamplingParams(top_k=-2)])
def test_effective_refuses_bad_values(sp):
    with pytest.raises(InvalidInput):
        sampling.effective(sp)


def test_client_values_travel_to_the_engine_unchanged():
    given = sampling.read_client({"temperature": np.array([[0.5]], np.float32),
                                  "top_k": np.array([[7]], np.int32),
                                  "seed": np.array([[2**63]], np.uint64)})
    assert given == {"temperature": 0.5, "top_k": 7, "seed": 2**63}
    sp = sampling.read_engine(sampling.engine_tensors(given))
    assert sp == SamplingParams(temperature=0.5, top_k=7, seed=2**63)


def test_zero_means_unset_on_the_engine_side_only():
    zero = {"runtime_top_k": np.array([[0]], np.int32), "runtime_top_p": np.array([[0.0]])}
    assert sampling.read_engine(zero) == SamplingParams()
    with pytest.raises(InvalidInput, match="top_p"):
        sampling.read_client({"top_p": np.array([[0.0]], np.float32)})
