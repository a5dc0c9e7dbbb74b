"""Per-key rate limits over a sliding minute: requests (rpm) and tokens (tpm) -> 429.

A request is admitted while the key's requests in the last 60 s are under rpm and its tokens
under tpm; tokens are counted when a request ends, so one request may overshoot tpm once.
Only keys with a limit are counted: anonymous requests (no key exists) and keys without rpm
and tpm never touch the limiter.

One gateway process (`--workers 1`) keeps the window in its memory (`Limiter`). Several
worker processes share one window (`SharedLimiter`): it lives in their supervisor, behind a
Unix socket (`LimiterServer`), so a key over its rpm gets 429 whichever worker serves it.
Replicas of the gateway behind a load balancer still count their own share each.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import socketserver
import threading
import time
from collections import defaultdict, deque

from uip.gateway.errors import ApiError

WINDOW_S = 60.0

# (seconds until a request is allowed, the limit in words), or None: admitted
Refusal = tuple[float, str] | None


def _limited(caller) -> bool:
    return caller.key_id is not None and (caller.rpm is not None or caller.tpm is not None)


class Window:
    """The sliding minute of every key: the state of the limits (thread-safe, synchronous)."""

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

    def admit(self, key: str, rpm: int | None, tpm: int | None) -> Refusal:
        """Count one request of `key`, or say why not (it is then not counted)."""
        now = self._clock()
        with self._lock:
            self._trim(key, now)
            reqs, toks = self._requests[key], self._tokens[key]
            if rpm is not None and len(reqs) >= rpm:
                return reqs[0] + WINDOW_S - now, f"{rpm} requests per minute"
            if tpm is not None and sum(n for _, n in toks) >= tpm:
                return toks[0][0] + WINDOW_S - now, f"{tpm} tokens per minute"
            reqs.append(now)
        return None

    def spend(self, key: str, tokens: int) -> None:
        if tokens > 0:
            with self._lock:
                self._tokens[key].append((self._clock(), tokens))


def refuse(wait_s: float, limit: str) -> ApiError:
    retry = max(1, math.ceil(wait_s))
    return ApiError(429, f"Rate limit reached: this key allows {limit}; retry in {retry} s",
                    None, "rate_limit_exceeded", headers={"Retry-After": str(retry)})


class Limiter:
    """The limits of one gateway process, in its memory."""

    def __init__(self, clock=time.monotonic):
        self.window = Window(clock)

    async def admit(self, caller) -> None:
        """Count one request, or raise 429 with Retry-After (seconds until one is allowed)."""
        if _limited(caller):
            refusal = self.window.admit(caller.key_id, caller.rpm, caller.tpm)
            if refusal is not None:
                raise refuse(*refusal)

    async def spend(self, caller, tokens: int) -> None:
        if _limited(caller) and caller.tpm is not None:
            self.window.spend(caller.key_id, tokens)

    async def close(self) -> None:
        pass


# ------------------------------------------------------------- shared by worker processes
# One JSON array per line. Worker -> supervisor: ["admit", key, rpm, tpm] (answered, in
# order, by [] or [wait_s, limit]) and ["spend", key, tokens] (not answered).


class _Handler(socketserver.StreamRequestHandler):
    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.request)  # type: ignore[attr-defined]

    def finish(self) -> None:
        self.server.connections.discard(self.request)  # type: ignore[attr-defined]
        super().finish()

    def handle(self) -> None:
        window: Window = self.server.window  # type: ignore[attr-defined]
        for line in self.rfile:
            try:
                op, key, *args = json.loads(line)
                if op == "admit":
                    refusal = window.admit(key, args[0], args[1])
                    self.wfile.write(json.dumps(list(refusal or ())).encode() + b"\n")
                elif op == "spend":
                    window.spend(key, int(args[0]))
            except (ValueError, TypeError, IndexError):
                return  # not our protocol: drop the connection


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    connections: set[socket.socket]


class LimiterServer:
    """The window of all workers, served on a Unix socket from a thread of the supervisor
    (a thread per worker connection)."""

    def __init__(self, path: str, clock=time.monotonic):
        self.path = path
        self._server = _Server(path, _Handler)
        self._server.connections = set()
        os.chmod(path, 0o600)
        self._server.window = Window(clock)  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="uip-limiter")

    def __enter__(self) -> LimiterServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        for conn in list(self._server.connections):  # the workers see the limiter gone
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.writer = writer
        self.waiting: deque[asyncio.Future] = deque()  # admits sent, in order
        self.task = asyncio.ensure_future(self._answers(reader))

    async def _answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                waiter = self.waiting.popleft()
                if not waiter.done():  # its request was cancelled meanwhile
                    waiter.set_result(json.loads(line))
        except Exception:  # noqa: BLE001 - the waiters learn it below
            pass
        finally:
            self.writer.close()
            while self.waiting:
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_exception(ConnectionError("the limiter closed the connection"))

    @property
    def open(self) -> bool:
        return not self.task.done() and not self.writer.is_closing()

    def send(self, message: list) -> None:
        self.writer.write(json.dumps(message).encode() + b"\n")


class SharedLimiter:
    """A worker's client of the supervisor's `LimiterServer`: one connection per worker,
    opened when a limited key first calls; requests are pipelined on it. When the limiter
    cannot be reached a limited key gets 503 (its limits cannot be kept)."""

    def __init__(self, path: str):
        self.path = path
        self._conn: _Connection | None = None
        self._opening: asyncio.Lock | None = None

    async def _connection(self) -> _Connection:
        if self._conn is not None and self._conn.open:
            return self._conn
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._conn is None or not self._conn.open:
                try:
                    reader, writer = await asyncio.open_unix_connection(self.path)
                except OSError as e:
                    raise _unavailable(e) from None
                self._conn = _Connection(reader, writer)
        return self._conn

    async def admit(self, caller) -> None:
        if not _limited(caller):
            return
        conn = await self._connection()
        waiter = asyncio.get_running_loop().create_future()
        conn.waiting.append(waiter)
        conn.send(["admit", caller.key_id, caller.rpm, caller.tpm])
        try:
            refusal = await waiter
        except ConnectionError as e:
            raise _unavailable(e) from None
        if refusal:
            raise refuse(*refusal)

    async def spend(self, caller, tokens: int) -> None:
        if _limited(caller) and caller.tpm is not None and tokens > 0:
            try:
                (await self._connection()).send(["spend", caller.key_id, tokens])
            except ApiError:
                pass  # the response is out already; the next admit answers 503

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.writer.close()
            await asyncio.gather(self._conn.task, return_exceptions=True)


def _unavailable(e: Exception) -> ApiError:
    return ApiError(503, f"rate limits cannot be checked (the gateway's limiter: {e})")
