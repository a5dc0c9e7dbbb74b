"""A throw-away nginx (Debian's package) serving one folder on a free port: range GETs (on by
default), WebDAV PUT (push), and `/slow/` — the same files with `limit_rate` per connection.
Used by `uip bench transfer` and the transfer tests; the access log records each request's
method, path, Range header and status."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from uip.launch.command import free_port, port_in_use

CONF = """\
{user}daemon off;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
  log_format uip '$request_method $uri "$http_range" $status $body_bytes_sent';
  access_log {dir}/access.log uip;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    client_max_body_size 0;
    dav_methods PUT;
    create_full_put_path on;
    dav_access user:rw group:r all:r;
    location /slow/ {{ alias {root}/; limit_rate {rate}; }}
  }}
}}
"""


@dataclass(frozen=True)
class LogLine:
    method: str
    path: str
    range: str
    status: int


class Nginx:
    def __init__(self, root: Path, limit_rate: str = "8m"):
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(self.binary):
            raise RuntimeError("nginx is not installed (apt-get install -y nginx; "
                               "./bootstrap.sh setup does it)")
        self.root = root
        self.limit_rate = limit_rate
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="uip-nginx-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def slow_url(self) -> str:
        """The same files through `limit_rate` per connection."""
        return f"{self.url}/slow"

    def start(self) -> Nginx:
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers may write the tmp folders
        conf = self.dir / "nginx.conf"
        conf.write_text(CONF.format(user=user, dir=self.dir, port=self.port, root=self.root,
                                    rate=self.limit_rate))
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not port_in_use(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError(f"nginx did not start: {err}{self.error_log()}")
            time.sleep(0.05)
        return self

    def error_log(self) -> str:
        p = self.dir / "error.log"
        return p.read_text() if p.exists() else ""

    def log(self) -> list[LogLine]:
        """The access log so far (nginx writes each line when its request ends)."""
        out = []
        path = self.dir / "access.log"
        for line in path.read_text().splitlines() if path.exists() else []:
            method, uri, rest = line.split(" ", 2)
            rng, status, _ = rest.rsplit(" ", 2)
            rng = rng.strip('"')
            out.append(LogLine(method, uri, "" if rng == "-" else rng, int(status)))
        return out

    def clear_log(self) -> None:
        """Empty the access log (in place: nginx keeps its file open)."""
        path = self.dir / "access.log"
        if path.exists():
            os.truncate(path, 0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
