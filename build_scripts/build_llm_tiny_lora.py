"""Build two tiny PEFT LoRA adapters (ranks 4 and 8) for artifacts/llm-tiny into a folder.

    .venv/bin/python build_scripts/build_llm_tiny_lora.py [--dest DIR]

DIR (default: artifacts/llm-tiny-lora/) becomes an adapter directory, as the spec's
`lora_dir` parameter names one: DIR/alpha, DIR/beta. Offline, fixed seeds (see
uip.artifacts.llm_tiny_lora); needs the dev dependencies (peft).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from uip import artifacts
from uip.artifacts import llm_tiny_lora
from uip.core.paths import artifacts_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=None,
                        help="adapter directory (default: artifacts/llm-tiny-lora)")
    args = parser.parse_args()
    artifacts.ensure(["llm-tiny"])
    dest = args.dest or artifacts_root() / "llm-tiny-lora"
    for folder in llm_tiny_lora.build(dest, artifacts_root() / "llm-tiny"):
        print(f"built {folder}")
        for f in sorted(folder.iterdir()):
            print(f"  {hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}")


if __name__ == "__main__":
    main()
