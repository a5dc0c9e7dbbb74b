"""HTTP fuzzing of Triton's `/v2` routes with boofuzz, in the style of Triton's L0_http_fuzz.

One boofuzz session per field of the request (method, path, version, headers, body): the other
fields stay valid while that one is mutated, so each field gets its share of `cases`. Every
answer's status is tallied; 5xx answers are kept with their body for the caller to judge (Triton's
own frontend answers 500 to malformed JSON and 501 to `infer` on a decoupled model before
any model sees them). Whether the server
survived is the caller's check (`uip fuzz http` and tests/integration/test_http_fuzz.py look
at health, readiness and the stub processes after the run).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import boofuzz as bf

METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")
FIELDS = ("method", "path", "version", "headers", "body")
_STATUS = re.compile(rb"^HTTP/\d(?:\.\d)? (\d{3})")
# what Triton 2.51's HTTP frontend answers itself, before any model sees the request: 500 to
# malformed JSON, 501 to `infer` on a decoupled model
FRONTEND_ERRORS = ("Unable to parse", "attempt to access JSON", "failed to parse",
                   "JSON parse error", "doesn't support models with decoupled")


def frontend_error(body: str) -> bool:
    """A 5xx body from Triton's own HTTP frontend, not from a model."""
    return any(p.lower() in body.lower() for p in FRONTEND_ERRORS)


def routes(models: list[str]) -> list[str]:
    """The `/v2` paths of Triton's HTTP API for these models (inference, health, metadata,
    repository, shared memory, trace, logging)."""
    out = ["/v2", "/v2/health/live", "/v2/health/ready", "/v2/repository/index",
           "/v2/systemsharedmemory/status", "/v2/cudasharedmemory/status", "/v2/trace/setting",
           "/v2/logging"]
    for m in models:
        base = f"/v2/models/{m}"
        out += [base, f"{base}/ready", f"{base}/config", f"{base}/stats", f"{base}/infer",
                f"{base}/generate", f"{base}/generate_stream", f"{base}/versions/1/infer",
                f"/v2/repository/models/{m}/load", f"/v2/repository/models/{m}/unload"]
    return out


@dataclass
class FuzzReport:
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)  # "200", "404", ..., "none" (no answer)
    by_field: Counter = field(default_factory=Counter)  # (field, status)
    server_errors: list[tuple[str, str, str]] = field(default_factory=list)  # (field, status, body)

    def add(self, fuzzed: str, received: bytes | None) -> None:
        self.cases += 1
        m = _STATUS.match(received or b"")
        status = m.group(1).decode() if m else "none"
        self.statuses[status] += 1
        self.by_field[(fuzzed, status)] += 1
        if status.startswith("5"):
            body = (received or b"").partition(b"\r\n\r\n")[2][:300]
            self.server_errors.append((fuzzed, status, body.decode("utf-8", "replace")))

    def table(self) -> str:
        rows = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        fields = "; ".join(f"{f} {st}: {n}" for (f, st), n in sorted(self.by_field.items()))
        return f"{self.cases} cases; answers by status: {rows}\nby field: {fields}"


def _message(name: str, fuzzed: str, model: str, body: str, all_routes: list[str]):
    """One request whose field `fuzzed` is mutated, every other field valid."""
    infer = f"/v2/models/{model}/infer"
    bf.s_initialize(name)
    with bf.s_block("request-line"):
        if fuzzed == "method":
            bf.s_group("method", values=list(METHODS))
        else:
            bf.s_static("POST")
        bf.s_static(" ")
        if fuzzed == "path":
            bf.s_group("route", values=all_routes)
            bf.s_string("", name="suffix")
        else:
            bf.s_static(infer)
        bf.s_static(" ")
        if fuzzed == "version":
            bf.s_string("HTTP/1.1", name="version")
        else:
            bf.s_static("HTTP/1.1")
        bf.s_static("\r\n")
    bf.s_static("Host: localhost\r\n")
    if fuzzed == "headers":
        bf.s_static("Content-Type: ")
        bf.s_string("application/json", name="content-type")
        bf.s_static("\r\nInference-Header-Content-Length: ")
        bf.s_string("0", name="binary-header-length")
        bf.s_static("\r\n")
    else:
        bf.s_static("Content-Type: application/json\r\n")
    bf.s_static("Content-Length: ")
    bf.s_size("body", output_format="ascii", fuzzable=fuzzed == "headers")
    bf.s_static("\r\nConnection: close\r\n\r\n")
    with bf.s_block("body"):
        if fuzzed == "body":
            bf.s_string(body, name="json")
        else:
            bf.s_static(body)


def fuzz(host: str, port: int, models: list[str], cases_per_field: int = 300,
         fields: tuple[str, ...] = FIELDS, recv_timeout_s: float = 0.3,
         model: str = "embedding", body: dict | None = None) -> FuzzReport:
    """Run the fuzz sessions against `host:port`; `cases_per_field` 0 runs every mutation."""
    body_text = json.dumps(body or {"inputs": [
        {"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": ["hello"]}]})
    all_routes = routes(models)
    report = FuzzReport()
    with tempfile.TemporaryDirectory(prefix="uip-fuzz-") as tmp:
        for fuzzed in fields:
            name = f"uip-{fuzzed}"
            _message(name, fuzzed, model, body_text, all_routes)
            connection = bf.TCPSocketConnection(host, port, recv_timeout=recv_timeout_s)

            def record(target, fuzz_data_logger, session, *args, _f=fuzzed, **kwargs):
                report.add(_f, session.last_recv)

            session = bf.Session(
                target=bf.Target(connection=connection), web_port=None, keep_web_open=False,
                fuzz_loggers=[], db_filename=str(Path(tmp) / f"{name}.db"),
                receive_data_after_fuzz=True, ignore_connection_reset=True,
                ignore_connection_aborted=True, restart_sleep_time=0,
                index_end=cases_per_field or None, post_test_case_callbacks=[record])
            session.connect(bf.s_get(name))
            session.fuzz()
    return report
