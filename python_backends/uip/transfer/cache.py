"""Artifacts named by URL in specs: pulled once into the artifacts cache (keyed by URL, see
uip.core.paths.url_cache_path); a folder already pulled there (verified) is not fetched again."""

from __future__ import annotations

from uip.core.paths import url_cache_path
from uip.transfer.options import TransferOptions
from uip.transfer.pull import is_pulled, pull


def ensure_urls(urls: list[str], options: TransferOptions | None = None) -> list[str]:
    """Pull the URLs whose cache folder is missing; returns the URLs it pulled."""
    pulled = []
    for url in urls:
        dest = url_cache_path(url)
        if is_pulled(dest):
            continue
        pull(url, dest, options)
        pulled.append(url)
    return pulled
