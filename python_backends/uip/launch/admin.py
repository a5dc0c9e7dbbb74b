"""Restricted admin APIs and the small client the launcher, watchdog and tests use for them.

Triton 2.51 guards APIs with a header: `--http-restricted-api=<apis>:<key>=<value>` and
`--grpc-restricted-protocol=<apis>:<key>=<value>`. Inference, health and metadata stay open.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request

from uip.core.admin_key import ADMIN_KEY_ENV

ADMIN_HEADER = "uip-admin-key"
GRPC_PREFIX = "triton-grpc-protocol-"  # Triton looks for the gRPC key under this prefix
KEY_ENV = ADMIN_KEY_ENV
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace",
                   "logging")


def admin_key(given: str | None = None) -> tuple[str, bool]:
    """`given`, else $UIP_ADMIN_KEY, else a fresh random key; and whether it was generated."""
    key = given or os.environ.get(KEY_ENV)
    return (key, False) if key else (secrets.token_urlsafe(24), True)


def restricted_flags(key: str, open_apis: tuple[str, ...] = ()) -> list[str]:
    """tritonserver flags that put the admin APIs (but `open_apis`) behind `key`, HTTP and
    gRPC."""
    apis = ",".join(a for a in RESTRICTED_APIS if a not in open_apis)
    return [f"--http-restricted-api={apis}:{ADMIN_HEADER}={key}",
            f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={key}"]


def headers(key: str | None, protocol: str = "http") -> dict[str, str]:
    """HTTP headers (or gRPC metadata, protocol "grpc") that carry the admin key."""
    if not key:
        return {}
    return {(GRPC_PREFIX if protocol == "grpc" else "") + ADMIN_HEADER: key}


class AdminError(RuntimeError):
    """An admin API call failed (its HTTP status and Triton's message)."""


class AdminApi:
    """Triton's model repository API over HTTP, with the admin key."""

    def __init__(self, http_url: str, key: str | None = None, timeout: float = 600.0):
        self.base = f"http://{http_url}/v2"
        self.headers = headers(key)
        self.timeout = timeout

    def _post(self, path: str, timeout: float | None = None) -> object:
        req = urllib.request.Request(f"{self.base}{path}", data=b"{}", method="POST",
                                     headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise AdminError(f"POST {path}: {e.code} {e.read().decode(errors='replace')}") from e
        return json.loads(body) if body else None

    def states(self) -> dict[str, str]:
        """Model name -> state (READY, UNAVAILABLE, LOADING...)."""
        return {m["name"]: m.get("state", "") for m in self._post("/repository/index", 10)}

    def load(self, model: str) -> None:
        self._post(f"/repository/models/{model}/load")

    def unload(self, model: str) -> None:
        self._post(f"/repository/models/{model}/unload")
