"""Per-key rate limits over a sliding minute: requests (rpm) and tokens (tpm) -> 429.

In memory, per gateway process (replicas behind a load balancer each count their own share).
A request is admitted while the key's requests in the last 60 s are under rpm and its tokens
under tpm; tokens are counted when a request ends, so one request may overshoot tpm once.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque

from uip.gateway.errors import ApiError

WINDOW_S = 60.0


class Limiter:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: dict[str, deque[float]] = defaultdict(deque)
        self._tokens: dict[str, deque[tuple[float, int]]] = defaultdict(deque)

    def _trim(self, key: str, now: float) -> None:
        reqs, toks = self._requests[key], self._tokens[key]
        while reqs and reqs[0] <= now - WINDOW_S:
            reqs.popleft()
        while toks and toks[0][0] <= now - WINDOW_S:
            toks.popleft()

    def admit(self, caller) -> None:
        """Count one request, or raise 429 with Retry-After (seconds until one is allowed)."""
        if caller.key_id is None:
            return
        key, now = caller.key_id, self._clock()
        with self._lock:
            self._trim(key, now)
            reqs, toks = self._requests[key], self._tokens[key]
            if caller.rpm is not None and len(reqs) >= caller.rpm:
                self._refuse(reqs[0] + WINDOW_S - now, f"{caller.rpm} requests per minute")
            if caller.tpm is not None and sum(n for _, n in toks) >= caller.tpm:
                self._refuse(toks[0][0] + WINDOW_S - now, f"{caller.tpm} tokens per minute")
            reqs.append(now)

    def spend(self, caller, tokens: int) -> None:
        if caller.key_id is not None and tokens > 0:
            with self._lock:
                self._tokens[caller.key_id].append((self._clock(), tokens))

    @staticmethod
    def _refuse(wait_s: float, limit: str) -> None:
        retry = max(1, math.ceil(wait_s))
        raise ApiError(429, f"Rate limit reached: this key allows {limit}; retry in {retry} s",
                       None, "rate_limit_exceeded", headers={"Retry-After": str(retry)})
