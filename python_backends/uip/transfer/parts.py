"""Parts: retry with exponential backoff, and the per-part sidecar state that makes a pull
resumable."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from uip.transfer.options import TransferError, TransferOptions

T = TypeVar("T")


class CorruptPart(Exception):
    """Bytes that do not match the manifest's sha256 (or length): retried, never kept."""


def backoff_delay(options: TransferOptions, retry: int) -> float:
    """Delay before retry number `retry` (1-based): doubling from backoff_s, capped, jittered."""
    base = min(options.max_backoff_s, options.backoff_s * 2 ** (retry - 1))
    return base * random.uniform(0.5, 1.0)


def with_retry(what: str, fn: Callable[[], T], options: TransferOptions,
               sleep: Callable[[float], None] = time.sleep) -> T:
    """`fn()`, retried on any exception up to `options.attempts` tries in all."""
    for attempt in range(1, options.attempts + 1):
        try:
            return fn()
        except (KeyboardInterrupt, TransferError):
            raise
        except Exception as e:  # network, server and checksum faults alike
            if attempt == options.attempts:
                raise TransferError(f"{what}: failed after {attempt} attempts: {e}") from e
            if options.on_retry is not None:
                options.on_retry(what, attempt, e)
            sleep(backoff_delay(options, attempt))
    raise AssertionError("unreachable")


class Sidecar:
    """Which parts of a pull are on disk, kept in `<dest>.uip-parts.json` beside the destination
    and rewritten atomically after each part, so a killed pull loses at most the parts in
    flight. Tied to the manifest's sha256: a changed remote folder starts afresh."""

    def __init__(self, path: Path, manifest_sha256: str):
        self.path = path
        self.manifest_sha256 = manifest_sha256
        self.done: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, manifest_sha256: str) -> Sidecar:
        state = cls(path, manifest_sha256)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return state
        if doc.get("manifest_sha256") == manifest_sha256:
            state.done = {k: set(v) for k, v in doc.get("done", {}).items()}
        return state

    def is_done(self, path: str, index: int) -> bool:
        return index in self.done.get(path, ())

    def mark(self, path: str, index: int, done: bool = True) -> None:
        with self._lock:
            parts = self.done.setdefault(path, set())
            (parts.add if done else parts.discard)(index)
            self._save()

    def _save(self) -> None:
        doc = {"manifest_sha256": self.manifest_sha256,
               "done": {k: sorted(v) for k, v in self.done.items()}}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)

    def save(self) -> None:
        with self._lock:
            self._save()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
