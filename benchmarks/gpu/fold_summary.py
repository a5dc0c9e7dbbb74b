"""Summarise `uip.core.sampler` / py-spy collapsed stacks: per thread, its share of samples and
the frames it spends them in (the innermost frame of each sample).

    python benchmarks/gpu/fold_summary.py DIR_OR_FILES... [--top 12]
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path


def read(paths: list[Path]) -> dict[str, Counter]:
    """file label -> Counter of 'thread;stack' lines."""
    out: dict[str, Counter] = {}
    for p in paths:
        files = sorted(p.glob("*.folded")) + sorted(p.glob("pyspy-*.txt")) if p.is_dir() else [p]
        for f in files:
            c: Counter = Counter()
            for line in f.read_text().splitlines():
                stack, _, n = line.rpartition(" ")
                if stack and n.isdigit():
                    c[stack] += int(n)
            out[f.stem] = c
    return out


def summarise(label: str, counts: Counter, top: int) -> None:
    by_thread: dict[str, Counter] = defaultdict(Counter)
    for stack, n in counts.items():
        thread, _, rest = stack.partition(";")
        by_thread[thread][rest] += n
    total = max(1, max((sum(c.values()) for c in by_thread.values()), default=1))
    print(f"== {label}: {len(by_thread)} threads, {total} samples per busiest thread")
    for thread, c in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(c.values())
        leaves: Counter = Counter()
        for stack, k in c.items():
            frames = stack.split(";")
            leaves[frames[-1]] += k
        print(f"-- thread {thread}: {n} samples")
        for frame, k in leaves.most_common(top):
            print(f"   {100 * k / n:5.1f}%  {frame}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=10)
    a = ap.parse_args()
    for label, counts in read(a.paths).items():
        summarise(label, counts, a.top)


if __name__ == "__main__":
    main()
