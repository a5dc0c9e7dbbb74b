"""uip.bench.memory: PSS from /proc/<pid>/smaps_rollup, over a process tree."""

import os
import subprocess
import sys

from uip.bench.memory import pss_bytes, report, tree_pss


def test_pss_of_a_process_tree():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        own = pss_bytes(os.getpid())
        assert own > 1 << 20  # this interpreter maps more than 1 MiB
        parts = tree_pss(os.getpid())
        assert parts[f"{next(k for k in parts if k.endswith(f' {os.getpid()}'))}"] > 0
        assert any(k.endswith(f" {child.pid}") for k in parts)  # descendants count
        assert report(os.getpid()).startswith("PSS ")
    finally:
        child.kill()
        child.wait()
    assert pss_bytes(child.pid) == 0  # gone: 0, no error
