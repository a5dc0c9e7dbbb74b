"""How many GPUs this process can see, and their compute capabilities (`nvidia-smi`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping


def count_gpus(nvidia_smi_list: str | None, cuda_visible_devices: str | None) -> int:
    """GPUs visible from `nvidia-smi --list-gpus` output, narrowed by CUDA_VISIBLE_DEVICES.

    `nvidia_smi_list` None means nvidia-smi is missing or failed: no GPU. CUDA_VISIBLE_DEVICES
    lists indices or (prefixes of) UUIDs; as in CUDA, the list stops at the first entry that
    names no GPU, so an empty value, -1 or an index past the last GPU hide the rest.
    """
    if not nvidia_smi_list:
        return 0
    gpus = [ln for ln in nvidia_smi_list.splitlines() if ln.startswith("GPU ")]
    if cuda_visible_devices is None:
        return len(gpus)
    uuids = [ln.split("UUID: ", 1)[1].rstrip(")").strip() for ln in gpus if "UUID: " in ln]
    seen: list[str] = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if entry.isdigit():
            ok = int(entry) < len(gpus)
        elif entry.startswith("MIG-"):
            ok = True  # MIG instances are not in --list-gpus' top lines; trust them
        else:
            ok = bool(entry) and any(u.startswith(entry) for u in uuids)
        if not ok or entry in seen:
            break
        seen.append(entry)
    return len(seen)


def _nvidia_smi(*args: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def visible_gpus(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return count_gpus(_nvidia_smi("--list-gpus"), env.get("CUDA_VISIBLE_DEVICES"))


def compute_capabilities() -> list[float]:
    """Compute capability of each physical GPU (e.g. 9.0 for H100); empty without nvidia-smi."""
    out = _nvidia_smi("--query-gpu=compute_cap", "--format=csv,noheader")
    caps = []
    for line in (out or "").splitlines():
        try:
            caps.append(float(line.strip()))
        except ValueError:
            continue
    return caps
