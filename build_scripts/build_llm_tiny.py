"""Build the tiny offline LLM (Llama, GQA, byte-level BPE) into artifacts/llm-tiny/.

    .venv/bin/python build_scripts/build_llm_tiny.py [--dest DIR] [--force]

Deterministic: the same bytes on every run (see uip.artifacts.llm_tiny).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from uip import artifacts
from uip.core.paths import artifacts_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=None,
                        help="artifacts root to build into (default: artifacts/ or $UIP_ARTIFACTS)")
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    args = parser.parse_args()
    root = args.dest or artifacts_root()
    built = artifacts.ensure(["llm-tiny"], root=root, force=args.force)
    folder = root / "llm-tiny"
    print(("built " if built else "already present: ") + str(folder))
    for f in sorted(folder.iterdir()):
        print(f"  {hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}")


if __name__ == "__main__":
    main()
