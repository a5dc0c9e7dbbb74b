"""Prometheus text format (Triton's /metrics) as samples: fetch, parse, select, sum.

    text = fetch(server.metrics_url)
    total(text, "uip_llm_active_sequences", model="llm_engine")   # summed over other labels
    totals_by(text, "model")[("nv_inference_request_success", "llm_bls")]

A histogram is its samples as exported: `<name>_bucket{le=...}`, `<name>_sum`, `<name>_count`.
Comments (# HELP, # TYPE) and lines that do not parse are skipped; values may be NaN or
+-Inf; a timestamp after the value is ignored; label values may hold escaped quotes, `\\`,
`\\n`, commas and braces.
"""

from __future__ import annotations

import re
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,?)\s*')
_VALUE = re.compile(r"\s+(\S+)(?:\s+-?\d+)?\s*$")  # value [timestamp]
_UNESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


Source = str | Iterable[Sample]


def fetch(url: str, timeout: float = 10.0) -> str:
    """The body of `url` (Triton's metrics endpoint) as text."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def _sample(line: str) -> Sample | None:
    m = _NAME.match(line)
    if not m:
        return None
    pos, labels = m.end(), {}
    if line.startswith("{", pos):
        pos += 1
        while not line.startswith("}", pos):
            lm = _LABEL.match(line, pos)
            if not lm:
                return None
            labels[lm.group(1)] = _UNESCAPE.sub(
                lambda e: "\n" if e.group(1) == "n" else e.group(1), lm.group(2))
            pos = lm.end()
            if not lm.group(3) and not line.startswith("}", pos):
                return None
        pos += 1
    vm = _VALUE.fullmatch(line, pos)
    if not vm:
        return None
    try:
        value = float(vm.group(1))
    except ValueError:
        return None
    return Sample(m.group(), labels, value)


def samples(text: str) -> list[Sample]:
    """Every sample line of `text`, in order."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and (s := _sample(line)) is not None:
            out.append(s)
    return out


def _samples(source: Source) -> Iterable[Sample]:
    return samples(source) if isinstance(source, str) else source


def select(source: Source, name: str, **labels: str) -> list[Sample]:
    """The samples named `name` whose labels include all of `labels`."""
    return [s for s in _samples(source) if s.name == name
            and all(s.labels.get(k) == v for k, v in labels.items())]


def total(source: Source, name: str, **labels: str) -> float:
    """Sum of `select(source, name, **labels)` values (0.0 when none matches)."""
    return sum((s.value for s in select(source, name, **labels)), 0.0)


def totals_by(source: Source, label: str) -> defaultdict[tuple[str, str], float]:
    """(name, value of `label` or "") -> value summed over the other labels; missing keys 0.0."""
    out: defaultdict[tuple[str, str], float] = defaultdict(float)
    for s in _samples(source):
        out[(s.name, s.labels.get(label, ""))] += s.value
    return out
