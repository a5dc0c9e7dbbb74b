"""Per-key sliding-minute limits: rpm and tpm refuse with 429 and a Retry-After that counts
down to when the oldest request or tokens leave the window."""

from __future__ import annotations

import pytest

from uip.gateway.errors import ApiError
from uip.gateway.limits import Limiter
from uip.gateway.state import ANONYMOUS, Caller


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_rpm():
    clock = Clock()
    lim, caller = Limiter(clock), Caller("k1", "a", rpm=2)
    lim.admit(caller)
    clock.t += 10
    lim.admit(caller)
    with pytest.raises(ApiError) as e:
        lim.admit(caller)
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "50"
    clock.t += 50
    lim.admit(caller)  # the first request left the window
    lim.admit(Caller("k2", "b", rpm=2))  # per key


def test_tpm_and_anonymous():
    clock = Clock()
    lim, caller = Limiter(clock), Caller("k1", "a", tpm=100)
    lim.admit(caller)
    lim.spend(caller, 120)
    with pytest.raises(ApiError, match="100 tokens per minute"):
        lim.admit(caller)
    clock.t += 60
    lim.admit(caller)
    for _ in range(1000):
        lim.admit(ANONYMOUS)
