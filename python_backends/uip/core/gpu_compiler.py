"""Keep the Triton GPU compiler (`triton`, OpenAI's) out of stubs on hosts without a GPU.

torch._dynamo imports `triton` whenever it is installed, and diffusers and transformers import
torch._dynamo at import time, so every SD and embedding stub loaded it: libtriton.so and its
Python modules, ~20 MiB PSS per stub, for a compiler that needs an NVIDIA GPU. On a host with
no NVIDIA device node, `skip_on_cpu_host` makes `import triton` fail (torch then reports no
Triton, as on a machine without the package). It changes nothing on a GPU host, under
`TRITON_INTERPRET=1` (the CPU tests run Triton kernels in its interpreter), or with
`UIP_TRITON_COMPILER=import`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "UIP_TRITON_COMPILER"  # "auto" (default): skipped on hosts without a GPU; "import"


def gpu_host(dev: Path = Path("/dev")) -> bool:
    """An NVIDIA device node exists (without importing torch: light stubs stay light)."""
    return any(dev.glob("nvidia[0-9]*"))


def skip_on_cpu_host(env: dict[str, str] | None = None, dev: Path = Path("/dev")) -> bool:
    """Make `import triton` raise ImportError in this process when it cannot be of use;
    True when it did."""
    env = os.environ if env is None else env
    if (env.get(ENV, "auto") != "auto" or env.get("TRITON_INTERPRET") == "1"
            or "triton" in sys.modules or gpu_host(dev)):
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # the import system's "absent"
    return True
