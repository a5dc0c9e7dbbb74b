"""`http(s)://host/path` through urllib3 (2-4x less CPU per byte than httpx on large bodies,
measured here): ranged GETs (any server with range support); push by WebDAV-style PUT of whole
files (e.g. nginx with `dav_methods PUT`), no multipart over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlparse

import urllib3

from uip.transfer.options import TransferError, TransferOptions

_TRANSIENT = {408, 425, 429}  # 4xx worth a retry; every other 4xx is final


class HttpStore:
    def __init__(self, url: str, options: TransferOptions):
        if not urlparse(url).netloc:
            raise TransferError(f"{url!r}: no host")
        self.url = url
        self.base = url.rstrip("/") + "/"
        # retries are uip.transfer.parts' (one place); redirects are followed
        retries = urllib3.Retry(connect=0, read=0, status=0, other=0, redirect=5)
        timeout = urllib3.Timeout(connect=options.timeout_s, read=options.timeout_s)
        self.pool = urllib3.PoolManager(maxsize=options.parallel + 2, retries=retries,
                                        timeout=timeout)

    def _url(self, key: str) -> str:
        return self.base + quote(key)

    def _check(self, method: str, url: str, r: urllib3.BaseHTTPResponse) -> None:
        """A client error (4xx) ends the transfer at once; 5xx and network faults are retried."""
        if r.status < 400:
            return
        what = f"{method} {url}: HTTP {r.status} {r.reason}"
        if r.status < 500 and r.status not in _TRANSIENT:
            raise TransferError(what)
        raise RuntimeError(what)

    def read(self, key: str) -> bytes:
        url = self._url(key)
        r = self.pool.request("GET", url)
        self._check("GET", url, r)
        return r.data

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        url = self._url(key)
        rng = f"bytes={offset}-{offset + length - 1}"
        r = self.pool.request("GET", url, headers={"Range": rng})
        self._check("GET", url, r)
        if r.status == 206:
            return r.data
        if r.status == 200 and offset == 0 and len(r.data) == length:
            return r.data  # a server without range support, and the whole file is one part
        raise TransferError(f"GET {url}: HTTP {r.status} to a Range request; pull needs a "
                            "server with range support")

    def write(self, key: str, data: bytes) -> None:
        self._put(key, data, len(data))

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as f:
            self._put(key, f, path.stat().st_size)

    def _put(self, key: str, body: bytes | BinaryIO, size: int) -> None:
        url = self._url(key)
        r = self.pool.request("PUT", url, body=body, headers={"Content-Length": str(size)})
        if r.status in (403, 405, 501):
            raise TransferError(f"PUT {url}: HTTP {r.status}; push over HTTP needs a server "
                                "that accepts PUT (WebDAV, e.g. nginx dav_methods PUT)")
        self._check("PUT", url, r)

    def start_multipart(self, key: str) -> None:
        return None
