#!/usr/bin/env python3
"""Soak test (the same as `uip soak`): N concurrent LLM gRPC streams, half cancelled at random
points, with SD and embedding requests, for M minutes; exit 1 when a check fails.

  clients/soak.py --streams 256 --minutes 10 --report soak.json
  clients/soak.py --url localhost:8001 --metrics-url http://localhost:8002/metrics
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from uip.cli import main
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_backends"))
    from uip.cli import main

if __name__ == "__main__":
    sys.argv = ["uip", "soak", *sys.argv[1:]]
    main()
