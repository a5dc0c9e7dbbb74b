"""A throw-away moto S3 server (`moto_server` from `moto[server]`, a subprocess on a free
port) as the S3 endpoint of `uip bench transfer --round-trip` and the transfer tests. No MinIO
package reaches these machines, so moto is the S3 API they can start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from uip.launch.command import free_port, port_in_use


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

    def peak_rss_bytes(self) -> int:
        """The server process's peak resident memory so far (Linux: VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
