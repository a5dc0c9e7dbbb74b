"""How often a Python thread that holds the GIL hands it to one that waits for it.

The LLM stubs run several busy threads (engine loop, dispatcher, driver, gRPC reader); every
hop of a request between them can wait for a GIL holder's switch interval (CPython's default:
5 ms). `switch_interval_ms` (model parameter; the environment's `UIP_SWITCH_INTERVAL_MS` when
the spec leaves it out) sets it for the stub's process; 0 or unset keeps CPython's default.
"""

from __future__ import annotations

import os
import sys

ENV = "UIP_SWITCH_INTERVAL_MS"


def apply_switch_interval(settings) -> float:
    """Sets the process's switch interval from `settings`; returns it in ms (0: untouched)."""
    ms = settings.param("switch_interval_ms", float(os.environ.get(ENV) or 0), float)
    if ms < 0:
        raise ValueError(f"switch_interval_ms must be >= 0, got {ms}")
    if ms > 0:
        sys.setswitchinterval(ms / 1000)
    return ms
