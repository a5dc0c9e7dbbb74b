"""Where the project's folders are: repository root, artifacts, specs, model repository."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def artifacts_root() -> Path:
    """`UIP_ARTIFACTS` if set, else `artifacts/` at the project root."""
    env = os.environ.get("UIP_ARTIFACTS")
    return Path(env).resolve() if env else PROJECT_ROOT / "artifacts"


ARTIFACT_URL_SCHEMES = ("s3", "http", "https")


def is_artifact_url(path: str) -> bool:
    """`s3://bucket/prefix` or `http(s)://host/path`: an artifact pulled by `uip serve`."""
    return urlparse(path).scheme in ARTIFACT_URL_SCHEMES


def url_cache_path(url: str) -> Path:
    """Where an artifact named by URL is pulled to: `<artifacts root>/url-cache/<last part of
    the URL>-<sha256 of the URL, 16 hex>`, so each URL has its own folder."""
    name = PurePosixPath(urlparse(url).path.rstrip("/")).name or urlparse(url).netloc
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return artifacts_root() / "url-cache" / f"{name}-{key}"


def resolve_artifact(path: str) -> Path:
    """An artifact path from a spec: a URL's cache folder, absolute as is, relative to the
    artifacts root otherwise."""
    if is_artifact_url(path):
        return url_cache_path(path)
    p = Path(path)
    return p if p.is_absolute() else artifacts_root() / p


DEFAULT_SPECS = PROJECT_ROOT / "specs"
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
