"""`http(s)://host/path` through httpx: ranged GETs (any server with range support); push by
WebDAV-style PUT of whole files (e.g. nginx with `dav_methods PUT`), no multipart over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlparse

import httpx

from uip.transfer.options import TransferError, TransferOptions

_CHUNK = 1024 * 1024
_TRANSIENT = {408, 425, 429}  # 4xx worth a retry; every other 4xx is final


def _check(r: httpx.Response) -> None:
    """A client error (4xx) ends the transfer at once; 5xx and network faults are retried."""
    if 400 <= r.status_code < 500 and r.status_code not in _TRANSIENT:
        raise TransferError(f"{r.request.method} {r.request.url}: HTTP {r.status_code} "
                            f"{r.reason_phrase}")
    r.raise_for_status()


class HttpStore:
    def __init__(self, url: str, options: TransferOptions):
        if not urlparse(url).netloc:
            raise TransferError(f"{url!r}: no host")
        self.url = url
        self.base = url.rstrip("/") + "/"
        limits = httpx.Limits(max_connections=options.parallel + 2,
                              max_keepalive_connections=options.parallel + 2)
        self.client = httpx.Client(timeout=options.timeout_s, limits=limits)

    def _url(self, key: str) -> str:
        return self.base + quote(key)

    def read(self, key: str) -> bytes:
        r = self.client.get(self._url(key))
        _check(r)
        return r.content

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        end = offset + length - 1
        r = self.client.get(self._url(key), headers={"Range": f"bytes={offset}-{end}"})
        if r.status_code == 206:
            return r.content
        if r.status_code == 200 and offset == 0:  # no range support: only whole-file parts work
            if len(r.content) == length:
                return r.content
            raise TransferError(f"{self._url(key)}: the server ignores Range requests; pull "
                                "needs range support (or a part size above the file size)")
        _check(r)
        raise RuntimeError(f"{self._url(key)}: unexpected HTTP {r.status_code} for a range")

    def write(self, key: str, data: bytes) -> None:
        self._put(key, data, len(data))

    def put_file(self, key: str, path: Path) -> None:
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while block := f.read(_CHUNK):
                    yield block

        self._put(key, chunks(), size)

    def _put(self, key: str, content: bytes | Iterator[bytes], size: int) -> None:
        r = self.client.put(self._url(key), content=content,
                            headers={"Content-Length": str(size)})
        if r.status_code in (403, 405, 501):
            raise TransferError(f"PUT {self._url(key)}: HTTP {r.status_code}; push over HTTP "
                                "needs a server that accepts PUT (WebDAV, e.g. nginx "
                                "dav_methods PUT)")
        _check(r)

    def start_multipart(self, key: str) -> None:
        return None
