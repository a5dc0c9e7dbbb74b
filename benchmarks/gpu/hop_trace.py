"""Each hop of an LLM request between llm_bls and llm_engine, from `uip.core.hoptrace` files.

    python benchmarks/gpu/hop_trace.py DIR [--json out.json] [--skip 128]

DIR holds the `<model>-<pid>.tsv` files the stubs wrote with `UIP_HOP_TRACE_DIR=DIR` set.
For every request seen at every stage of a path: the time between consecutive stages, then
p50 / mean / p90 per hop over the requests (ms). Paths: the first token (client request ->
first text out of llm_bls) and the final response (llm_engine's final send -> llm_bls's).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

FIRST = ("bls_execute", "bls_submit", "engine_execute", "engine_enqueued",
         "engine_result_first", "engine_sent_first", "bls_read_first", "bls_deliver_first",
         "bls_sent_first")
FINAL = ("engine_sent_final", "bls_read_final", "bls_sent_final")


def load(folder: Path) -> dict[str, dict[str, float]]:
    marks: dict[str, dict[str, float]] = defaultdict(dict)
    for path in folder.glob("*.tsv"):
        for line in path.read_text().splitlines():
            rid, stage, t = line.split("\t")
            marks[rid].setdefault(stage, float(t))
    return marks


def hops(marks: dict[str, dict[str, float]], path: tuple[str, ...], skip: int = 0) -> list[dict]:
    """Per hop of `path`, over the requests with every stage, after the `skip` first ones
    (by their first stage: e.g. a calibration burst and the warm-up)."""
    full = sorted((m for m in marks.values() if all(s in m for s in path)),
                  key=lambda m: m[path[0]])[skip:]
    rows = []
    for a, b in zip(path, path[1:], strict=False):
        ms = sorted((m[b] - m[a]) * 1e3 for m in full)
        if ms:
            rows.append({"hop": f"{a} -> {b}", "n": len(ms), "p50_ms": statistics.median(ms),
                         "mean_ms": statistics.fmean(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1))]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--skip", type=int, default=128, help="first requests left out")
    a = p.parse_args()
    marks = load(a.folder)
    out = {"first": hops(marks, FIRST, a.skip), "final": hops(marks, FINAL, a.skip)}
    print(f"{a.folder}: {len(marks)} request ids")
    for name, rows in out.items():
        total = sum(r["mean_ms"] for r in rows)
        print(f"\n{name} path (mean total {total:.1f} ms)\n| hop | n | p50 ms | mean ms | p90 ms |"
              "\n|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['hop']} | {r['n']} | {r['p50_ms']:.2f} | {r['mean_ms']:.2f} | "
                  f"{r['p90_ms']:.2f} |")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
