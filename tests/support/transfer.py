"""Helpers of the transfer tests: folder digests, part ranges in nginx's access log, byte
flips. The moto S3 server is `uip.bench.moto.MotoServer` (the benchmark starts it too)."""

from __future__ import annotations

from pathlib import Path

from uip.bench.transfer import digests  # noqa: F401 - the tests' helper too


def range_header(offset: int, length: int) -> str:
    return f"bytes={offset}-{offset + length - 1}"


def flip_byte(path: Path, offset: int) -> bytes:
    """Invert one byte in place; returns the original byte."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))
    return old


def restore_byte(path: Path, offset: int, old: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(old)
