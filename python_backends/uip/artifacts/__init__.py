"""Default artifacts: built offline and deterministically when missing."""

from __future__ import annotations

import importlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from uip.core.paths import artifacts_root

# artifact folder name -> "module:function" that builds it into a given (empty) folder
BUILDERS: dict[str, str] = {
    "embedding": "uip.artifacts.embedding:build",
    "llm-tiny": "uip.artifacts.llm_tiny:build",
    "sd-tiny": "uip.artifacts.sd_tiny:build",
    "sdxl-tiny": "uip.artifacts.sdxl_tiny:build",
}


def builder(name: str) -> Callable[[Path], None]:
    module, func = BUILDERS[name].split(":")
    return getattr(importlib.import_module(module), func)


def ensure(names: list[str] | None = None, root: Path | None = None, force: bool = False
           ) -> list[str]:
    """Build the named default artifacts that are missing; returns the names it built.

    Each is written to a temporary folder first and renamed into place, so an interrupted
    build never leaves a half-written artifact behind.
    """
    root = root or artifacts_root()
    root.mkdir(parents=True, exist_ok=True)
    built = []
    for name in names if names is not None else list(BUILDERS):
        dest = root / name
        if dest.exists() and not force:
            continue
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as tmp:
            work = Path(tmp) / name
            work.mkdir()
            builder(name)(work)
            if dest.exists():
                shutil.rmtree(dest)
            work.rename(dest)
        built.append(name)
    return built
