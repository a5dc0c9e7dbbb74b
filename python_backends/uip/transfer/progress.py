"""tqdm progress bars in bytes (or a silent stand-in when progress is off)."""

from __future__ import annotations

from tqdm import tqdm


def bar(desc: str, total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, leave=False, dynamic_ncols=True)
