"""Server faults a client should retry (UNAVAILABLE / HTTP 503), told apart from client errors.

A dead Python stub, a model being reloaded by the watchdog, a full queue or an engine at its
admission limit are the server's state, never the request's fault: they must not reach the
client as INVALID_ARG (400).
"""

from __future__ import annotations


class Unavailable(RuntimeError):
    """The server cannot take this request now (retry later); becomes UNAVAILABLE."""


# Triton 2.51's own messages for the states above (python backend, model repository, queues,
# gRPC transport).
UNAVAILABLE_MARKERS = (
    "is not healthy",
    "has no available versions",
    "is not ready",
    "Request for unknown model",
    "Exceeds maximum queue size",
    "Request timeout expired",
    "failed to connect",
    "Socket closed",
    "Connection reset",
    "StatusCode.UNAVAILABLE",
    "unavailable, retry later",  # ours (uip.triton.pb)
)


def is_unavailable(message: str) -> bool:
    """Whether an error message describes a server state the client should retry."""
    return any(m in message for m in UNAVAILABLE_MARKERS)
