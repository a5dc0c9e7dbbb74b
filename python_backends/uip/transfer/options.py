"""Transfer settings (every limit explicit) and the one error a transfer raises."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_PARALLEL = 8


class TransferError(RuntimeError):
    """A transfer that cannot finish; the message names the URL, file or part and why."""


@dataclass(frozen=True)
class TransferOptions:
    part_size: int = DEFAULT_PART_SIZE  # push: recorded in the manifest, pull follows it
    parallel: int = DEFAULT_PARALLEL  # parts in flight at once
    attempts: int = 5  # per part (or small object), the first try included
    backoff_s: float = 0.5  # first retry delay; doubles each retry (with jitter)
    max_backoff_s: float = 16.0
    timeout_s: float = 60.0  # per request (connect and each read)
    progress: bool = True  # tqdm bars on stderr
    # called before each retry with (what, attempt, error): `uip` prints a warning
    on_retry: Callable[[str, int, BaseException], None] | None = None
    # called in the calling thread after each part lands, with (file, part index)
    on_part: Callable[[str, int], None] | None = None

    def __post_init__(self) -> None:
        if self.part_size < 1:
            raise TransferError(f"part size must be at least 1 byte, got {self.part_size}")
        if self.parallel < 1:
            raise TransferError(f"parallel must be at least 1, got {self.parallel}")
        if self.attempts < 1:
            raise TransferError(f"attempts must be at least 1, got {self.attempts}")
