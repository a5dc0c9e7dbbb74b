"""Adapter names and the adapter directory's layout (no torch: the gateway lists adapters too).

An adapter directory holds one PEFT folder per adapter, named by the adapter:
`<dir>/<name>/adapter_config.json` + `adapter_model.safetensors`.
"""

from __future__ import annotations

import re
from pathlib import Path

from uip.core.inputs import InvalidInput

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidInput(f"lora_name {name!r} is not a valid adapter name (letters, digits, "
                           "'.', '_', '-'; at most 128 characters)")
    return name


def available(directory: Path) -> list[str]:
    """The adapter folders under `directory` now (none when it does not exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir()
                  if (p / CONFIG_FILE).is_file() and NAME_RE.fullmatch(p.name))
