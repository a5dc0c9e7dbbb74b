"""What a transfer needs of a remote store, and the store for a URL."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from uip.transfer.options import TransferError, TransferOptions


class Multipart(Protocol):
    """One multipart upload in progress: parts numbered from 1, any order, then complete."""

    def upload_part(self, number: int, data: bytes) -> str: ...  # returns the part's tag

    def complete(self, tags: dict[int, str]) -> None: ...

    def abort(self) -> None: ...


class Store(Protocol):
    """Objects under one URL prefix, named by POSIX paths relative to it."""

    url: str

    def read(self, key: str) -> bytes: ...

    def read_range(self, key: str, offset: int, length: int) -> bytes: ...

    def write(self, key: str, data: bytes) -> None: ...

    def put_file(self, key: str, path: Path) -> None:
        """One request with the whole file, streamed from disk."""
        ...

    def start_multipart(self, key: str) -> Multipart | None:
        """A multipart upload, or None where the store has none (then put_file)."""
        ...


def open_store(url: str, options: TransferOptions) -> Store:
    scheme = urlparse(url).scheme
    if scheme == "s3":
        from uip.transfer.s3 import S3Store

        return S3Store(url, options)
    if scheme in ("http", "https"):
        from uip.transfer.http import HttpStore

        return HttpStore(url, options)
    raise TransferError(f"{url!r}: unsupported URL; use s3://bucket/prefix or http(s)://host/path")
