"""Per-key sliding-minute limits: rpm and tpm refuse with 429 and a Retry-After that counts
down to when the oldest request or tokens leave the window. The window of several workers
lives behind a Unix socket (LimiterServer): each worker's SharedLimiter is a client of it."""

from __future__ import annotations

import asyncio

import pytest

from uip.gateway.errors import ApiError
from uip.gateway.limits import Limiter, LimiterServer, SharedLimiter
from uip.gateway.state import ANONYMOUS, Caller


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_rpm():
    async def run():
        clock = Clock()
        lim, caller = Limiter(clock), Caller("k1", "a", rpm=2)
        await lim.admit(caller)
        clock.t += 10
        await lim.admit(caller)
        with pytest.raises(ApiError) as e:
            await lim.admit(caller)
        assert e.value.status == 429 and e.value.headers["Retry-After"] == "50"
        clock.t += 50
        await lim.admit(caller)  # the first request left the window
        await lim.admit(Caller("k2", "b", rpm=2))  # per key

    asyncio.run(run())


def test_tpm_and_anonymous():
    async def run():
        clock = Clock()
        lim, caller = Limiter(clock), Caller("k1", "a", tpm=100)
        await lim.admit(caller)
        await lim.spend(caller, 120)
        with pytest.raises(ApiError, match="100 tokens per minute"):
            await lim.admit(caller)
        clock.t += 60
        await lim.admit(caller)
        for _ in range(1000):
            await lim.admit(ANONYMOUS)
            await lim.admit(Caller("k3", "no limits"))
        assert not lim.window._requests.get("k3")  # a key without limits is not counted

    asyncio.run(run())


@pytest.fixture
def limiter_server(tmp_path):
    clock = Clock()
    with LimiterServer(str(tmp_path / "limits.sock"), clock) as server:
        server.clock = clock
        yield server


def test_shared_window_across_workers(limiter_server):
    """Two workers (two clients, two connections): one key's requests and tokens count in
    one window, whichever worker admits them."""
    async def run():
        one, two = SharedLimiter(limiter_server.path), SharedLimiter(limiter_server.path)
        caller = Caller("k1", "a", rpm=3)
        await one.admit(caller)
        await two.admit(caller)
        limiter_server.clock.t += 20
        await one.admit(caller)
        for lim in (two, one):
            with pytest.raises(ApiError) as e:
                await lim.admit(caller)
            assert e.value.status == 429 and e.value.headers["Retry-After"] == "40"
            assert e.value.code == "rate_limit_exceeded"
        await two.admit(Caller("k2", "b", rpm=3))  # per key

        tokens = Caller("k4", "c", tpm=10)
        await one.admit(tokens)
        await one.spend(tokens, 12)
        await asyncio.sleep(0.05)  # spending is not answered: let it arrive
        with pytest.raises(ApiError, match="10 tokens per minute"):
            await two.admit(tokens)
        limiter_server.clock.t += 60
        await two.admit(tokens)
        await one.close()
        await two.close()

    asyncio.run(run())


def test_shared_pipelines_and_survives_a_cancelled_admit(limiter_server):
    """Concurrent admits on one connection get their own answers in order; an admit whose
    request was cancelled meanwhile does not shift the answers of the next ones."""
    async def run():
        lim = SharedLimiter(limiter_server.path)
        caller = Caller("k1", "a", rpm=5)
        await lim.admit(caller)  # connected
        cancelled = asyncio.ensure_future(lim.admit(caller))
        await asyncio.sleep(0)  # sent
        cancelled.cancel()  # its request still counts (as in one process)
        results = await asyncio.gather(*[lim.admit(caller) for _ in range(5)],
                                       return_exceptions=True)
        assert [r is None for r in results] == [True] * 3 + [False] * 2
        assert all(r.status == 429 for r in results[3:])
        await lim.close()

    asyncio.run(run())


def test_shared_without_the_server_is_503_and_reconnects(tmp_path):
    async def run():
        path = str(tmp_path / "limits.sock")
        lim, caller = SharedLimiter(path), Caller("k1", "a", rpm=1)
        await lim.admit(ANONYMOUS)  # no key, no limits: the limiter is not asked
        await lim.admit(Caller("k2", "b"))
        with pytest.raises(ApiError) as e:
            await lim.admit(caller)
        assert e.value.status == 503 and "rate limits" in e.value.message
        with LimiterServer(path):
            await lim.admit(caller)  # the next request connects
            with pytest.raises(ApiError) as e:
                await lim.admit(caller)
            assert e.value.status == 429
        with pytest.raises(ApiError) as e:  # the supervisor's limiter went away
            await lim.admit(caller)
        assert e.value.status == 503
        await lim.spend(caller, 5)  # after the response: never raises
        await lim.close()

    asyncio.run(run())
