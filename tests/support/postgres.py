"""A throw-away PostgreSQL 15 (Debian's packages) in a temporary folder, on its own port.

postgres refuses to run as root: initdb and pg_ctl run as the `postgres` user (runuser) when
the tests run as root, in a folder that user owns; the socket lives in that folder too.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from uip.launch.command import free_port


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class Postgres:
    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql; "
                               "./bootstrap.sh setup does it)")
        self.bin = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="uip-pg-"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, text=True,
                       cwd=self.dir)

    def start(self) -> Postgres:
        data = self.dir / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                  "--no-sync")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c max_connections=50")
        self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"),
                  "-o", opts, "-w", "-t", "60", "start")
        return self

    def reset(self) -> None:
        """A fresh database: drop what earlier tests made."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")

    def stop(self) -> None:
        data = self.dir / "data"
        if data.exists():
            subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(data), "-m",
                            "fast", "-w", "stop"], capture_output=True, cwd=self.dir)
        deadline = time.monotonic() + 10
        while (self.dir / "data" / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
