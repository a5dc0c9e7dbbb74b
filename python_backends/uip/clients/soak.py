"""Soak test: many LLM gRPC streams (half cancelled at random points) mixed with Stable
Diffusion and embedding requests, for a while; then the server must be back at rest.

Checks: every request ends with a final response or a clean cancel (no error, no hang);
`uip_llm_active_sequences` and `uip_llm_kv_blocks_used` return to 0; no stub's RSS grew by
more than `max_rss_growth` between the end of the warm-up and the end; no error line in the
server log written during the run. `uip soak` / clients/soak.py run it.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

from uip.clients import metrics
from uip.core.stubs import stub_pids

PROMPTS = ["Hello world", "The cache is", "def main():", "Once upon a time", "Привет мир",
           "café naïve 😀", "model server request", "a b c d e f g"]
METRICS = ("uip_llm_active_sequences", "uip_llm_kv_blocks_used")
# Triton log lines that are errors, but not ours to fix (CPU machine, no GPU)
HARMLESS = ("CUDA driver version is insufficient", "Failed to initialize NVML",
            "DCGM unable to start")


@dataclass
class SoakConfig:
    grpc_url: str
    metrics_url: str
    streams: int = 256
    seconds: float = 600.0
    cancel_fraction: float = 0.5
    max_tokens: int = 64
    sd_clients: int = 1
    embedding_clients: int = 2
    model: str = "llm_bls"
    server_pid: int | None = None  # for stub RSS (None: not checked)
    log_path: Path | None = None  # for error lines (None: not checked)
    warmup_s: float = 30.0
    max_rss_growth: float = 0.05
    request_timeout_s: float = 120.0
    seed: int = 0


@dataclass
class SoakReport:
    seconds: float = 0.0
    outcomes: dict[str, Counter] = field(default_factory=dict)  # kind -> outcome -> count
    tokens: int = 0
    llm_latency_p50_s: float = 0.0
    llm_latency_p99_s: float = 0.0
    rss_mb: dict[str, tuple[float, float]] = field(default_factory=dict)  # stub: (start, end)
    metrics_at_rest: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # first failures seen, for the report
    log_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        data = asdict(self)  # asdict turns a Counter's items into keys: take them as they are
        data["outcomes"] = {k: dict(v) for k, v in self.outcomes.items()}
        return json.dumps(data, indent=1, default=str)


class _Run:
    def __init__(self, cfg: SoakConfig):
        self.cfg = cfg
        self.report = SoakReport(outcomes={"llm": Counter(), "sd": Counter(),
                                           "embedding": Counter()})
        self.lock = threading.Lock()
        self.deadline = 0.0
        self.latencies: list[float] = []

    def record(self, kind: str, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.report.outcomes[kind][outcome] += 1
            if detail and len(self.report.errors) < 20:
                self.report.errors.append(f"{kind}: {outcome}: {detail[:300]}")

    # --- clients -------------------------------------------------------------------------
    def llm_worker(self, index: int) -> None:
        from uip.clients.llm import GenerateError, Generation, GrpcStream

        rng = random.Random(self.cfg.seed * 10007 + index)
        while time.monotonic() < self.deadline:
            cancel_at = (rng.randint(0, self.cfg.max_tokens)
                         if rng.random() < self.cfg.cancel_fraction else None)
            stream = GrpcStream(self.cfg.grpc_url, self.cfg.model, rng.choice(PROMPTS),
                                max_tokens=rng.randint(1, self.cfg.max_tokens), stream=True,
                                return_num_output_tokens=True)
            gen, t0 = Generation(), time.monotonic()
            try:
                stream.start()
                if cancel_at == 0:
                    time.sleep(rng.random() * 0.05)
                    stream.cancel()
                    self.record("llm", "cancelled")
                    continue
                for outputs in stream.responses(self.cfg.request_timeout_s):
                    gen.add(outputs)
                    if cancel_at is not None and gen.responses >= cancel_at:
                        stream.cancel()
                        break
                if cancel_at is not None and stream.closed:
                    self.record("llm", "cancelled")
                elif gen.finish_reason in ("stop", "length"):
                    self.record("llm", "final")
                    with self.lock:
                        self.latencies.append(time.monotonic() - t0)
                        self.report.tokens += gen.num_output_tokens or 0
                else:
                    self.record("llm", "no_final", f"finish_reason {gen.finish_reason!r}")
            except GenerateError as e:
                # the request id and its age, to find it in the server log and metrics
                self.record("llm", "hung" if "no response within" in str(e) else "error",
                            f"{stream.request_id} after {time.monotonic() - t0:.0f} s, "
                            f"{gen.responses} responses: {e}")
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                self.record("llm", "error", f"{type(e).__name__}: {e}")
            finally:
                if not stream.closed:
                    stream.cancel()  # after an error the server may still hold the request

    def infer_worker(self, kind: str) -> None:
        import tritonclient.grpc as grpcclient

        from uip.clients.sd import infer_inputs

        client = grpcclient.InferenceServerClient(self.cfg.grpc_url)
        i = 0
        while time.monotonic() < self.deadline:
            i += 1
            try:
                if kind == "sd":
                    inputs = infer_inputs(grpcclient, rng_prompt(i), steps=4, height=64,
                                          width=64, seed=i)
                    out = client.infer("stable_diffusion", inputs,
                                       client_timeout=self.cfg.request_timeout_s)
                    ok = out.as_numpy("image").shape == (1, 64, 64, 3)
                else:
                    t = grpcclient.InferInput("text_input", [1, 1], "BYTES")
                    t.set_data_from_numpy(np.array([[rng_prompt(i).encode()]], dtype=object))
                    vec = client.infer("embedding", [t], client_timeout=self.cfg.request_timeout_s
                                       ).as_numpy("embedding")
                    ok = vec.shape == (1, 384) and abs(float(np.linalg.norm(vec)) - 1) < 1e-3
                self.record(kind, "final" if ok else "wrong_output")
            except Exception as e:  # noqa: BLE001 - counted and reported
                self.record(kind, "error", str(e))

    # --- server side ---------------------------------------------------------------------
    def stub_rss_mb(self) -> dict[str, float]:
        out = {}
        for model, pids in stub_pids(self.cfg.server_pid).items():
            total = 0
            for pid in pids:
                try:
                    total += psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    pass
            out[model] = total / 2**20
        return out

    def metrics(self) -> dict[str, float]:
        found = metrics.samples(metrics.fetch(self.cfg.metrics_url, timeout=5))
        return {name: metrics.total(found, name) for name in METRICS}

    def log_errors(self, offset: int) -> list[str]:
        if self.cfg.log_path is None:
            return []
        with open(self.cfg.log_path, errors="replace") as f:
            f.seek(offset)
            lines = f.read().splitlines()
        bad = [ln for ln in lines if (ln.startswith("E1") or "Traceback" in ln
                                      or "request failed" in ln or "Segmentation" in ln)]
        return [ln[:300] for ln in bad if not any(h in ln for h in HARMLESS)]


def rng_prompt(i: int) -> str:
    return f"{PROMPTS[i % len(PROMPTS)]} {i}"


def run_soak(cfg: SoakConfig, progress=print) -> SoakReport:
    run = _Run(cfg)
    rep = run.report
    offset = cfg.log_path.stat().st_size if cfg.log_path else 0
    start = time.monotonic()
    run.deadline = start + cfg.seconds
    threads = [threading.Thread(target=run.llm_worker, args=(i,), daemon=True)
               for i in range(cfg.streams)]
    threads += [threading.Thread(target=run.infer_worker, args=("sd",), daemon=True)
                for _ in range(cfg.sd_clients)]
    threads += [threading.Thread(target=run.infer_worker, args=("embedding",), daemon=True)
                for _ in range(cfg.embedding_clients)]
    for t in threads:
        t.start()
    rss_start: dict[str, float] = {}
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        now = time.monotonic() - start
        if cfg.server_pid and not rss_start and now >= min(cfg.warmup_s, cfg.seconds / 3):
            rss_start = run.stub_rss_mb()
        if int(now) % 30 == 0:
            progress(f"soak {now:5.0f} s: " + ", ".join(
                f"{k} {dict(v)}" for k, v in rep.outcomes.items()))
        if now > cfg.seconds + cfg.request_timeout_s + 30:
            rep.problems.append("clients still running long after the end (a hang)")
            break
    rep.seconds = round(time.monotonic() - start, 1)
    # back at rest: nothing in flight in the engine
    deadline = time.monotonic() + 30
    while True:
        rep.metrics_at_rest = run.metrics()
        if not any(rep.metrics_at_rest.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if any(rep.metrics_at_rest.values()):
        rep.problems.append(f"engine not at rest 30 s after the end: {rep.metrics_at_rest}")
    if cfg.server_pid:
        end = run.stub_rss_mb()
        rep.rss_mb = {m: (round(rss_start.get(m, 0), 1), round(v, 1)) for m, v in end.items()}
        grown = {m: v for m, v in rep.rss_mb.items() if v[0] and v[1] > v[0] * (
            1 + cfg.max_rss_growth)}
        if grown:
            rep.problems.append(f"stub RSS grew by more than {cfg.max_rss_growth:.0%}: {grown}")
    rep.log_errors = run.log_errors(offset)
    if rep.log_errors:
        rep.problems.append(f"{len(rep.log_errors)} error lines in the server log")
    lat = sorted(run.latencies)
    if lat:
        rep.llm_latency_p50_s = round(lat[len(lat) // 2], 3)
        rep.llm_latency_p99_s = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3)
    for kind, counts in rep.outcomes.items():
        bad = {k: v for k, v in counts.items() if k not in ("final", "cancelled")}
        if bad:
            rep.problems.append(f"{kind}: {bad}")
        if not counts.get("final"):
            rep.problems.append(f"{kind}: no request completed")
    return rep
