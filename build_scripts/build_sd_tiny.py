#!/usr/bin/env python3
"""Build the Stable Diffusion artifact: a diffusers StableDiffusionPipeline folder, offline.

  build_sd_tiny.py                       # artifacts/sd-tiny (the default tiny model, fp32)
  build_sd_tiny.py --config sd15         # artifacts/sd15-random: SD 1.5-shaped, random fp16
                                         # weights (~2 GB; for GPU benchmarks, not for tests)
  build_sd_tiny.py --out DIR --force     # somewhere else, replacing what is there
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

try:
    from uip.artifacts import sd_tiny
    from uip.core.paths import artifacts_root
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_backends"))
    from uip.artifacts import sd_tiny
    from uip.core.paths import artifacts_root

DEFAULT_NAMES = {"tiny": "sd-tiny", "sd15": "sd15-random"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(DEFAULT_NAMES), default="tiny",
                    help="tiny (default) or sd15 (SD 1.5 shapes, random weights)")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="weights dtype (default: float32 for tiny, float16 for sd15)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None,
                    help="folder (default: <artifacts>/sd-tiny or <artifacts>/sd15-random)")
    ap.add_argument("--force", action="store_true", help="rebuild when the folder exists")
    args = ap.parse_args(argv)
    dest = args.out or artifacts_root() / DEFAULT_NAMES[args.config]
    if dest.exists() and not args.force:
        print(f"{dest} exists (use --force to rebuild)")
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        work = Path(tmp) / dest.name
        sd_tiny.build(work, config=args.config, dtype=args.dtype, seed=args.seed)
        if dest.exists():
            shutil.rmtree(dest)
        work.rename(dest)
    print(f"built {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
