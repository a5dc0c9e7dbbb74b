"""Where the project's folders are: repository root, artifacts, specs, model repository."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def artifacts_root() -> Path:
    """`UIP_ARTIFACTS` if set, else `artifacts/` at the project root."""
    env = os.environ.get("UIP_ARTIFACTS")
    return Path(env).resolve() if env else PROJECT_ROOT / "artifacts"


def resolve_artifact(path: str) -> Path:
    """An artifact path from a spec: absolute as is, relative to the artifacts root otherwise."""
    p = Path(path)
    return p if p.is_absolute() else artifacts_root() / p


DEFAULT_SPECS = PROJECT_ROOT / "specs"
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
