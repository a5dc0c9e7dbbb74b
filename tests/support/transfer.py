"""Helpers of the transfer tests: folder digests, part ranges in nginx's access log, and a
moto S3 server (`moto_server`, a subprocess on a free port) as the S3 endpoint."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from uip.launch.command import free_port, port_in_use
from uip.transfer.manifest import MANIFEST_NAME


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` but the manifest, by relative path (hashlib)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST_NAME:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            out[p.relative_to(folder).as_posix()] = h.hexdigest()
    return out


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


class MotoServer:
    """moto's standalone S3 server (the `moto[server]` package), one per test module. Its
    recorder (moto-api/recorder) logs the requests it serves, between record() and
    requests(), to a file of its own: the tests count ranged GETs there."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.recording = workdir / "moto-recording.jsonl"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
        env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(self.recording)}
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not port_in_use(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.1)
        return self

    def _api(self, action: str) -> None:
        import httpx

        httpx.post(f"{self.url}/moto-api/recorder/{action}", timeout=30).raise_for_status()

    def record(self) -> None:
        """Start logging requests afresh."""
        self._api("reset-recording")
        self._api("start-recording")

    def requests(self) -> list[tuple[str, str, str]]:
        """(method, path, Range header) of each request since record(); stops recording."""
        import json
        from urllib.parse import urlparse

        self._api("stop-recording")
        out = []
        for line in self.recording.read_text().splitlines():
            entry = json.loads(line)
            headers = {k.lower(): v for k, v in entry["headers"].items()}
            out.append((entry["method"], urlparse(entry["url"]).path, headers.get("range", "")))
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
