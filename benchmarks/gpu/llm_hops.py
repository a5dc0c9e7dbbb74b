"""Where a request's time goes between perf_analyzer, llm_bls and llm_engine (GPU machine).

    python benchmarks/gpu/llm_hops.py /tmp/llm-repo [--variants base,switch1,...]
        [--concurrency 64] [--measurement-ms 6000] [--json llm-hops.json] [--deadline EPOCH]

For each variant (a copy of the repository with some model parameters changed, and/or
environment variables for the server): start tritonserver with llm_bls + llm_engine, calibrate
the tokens per request, run perf_analyzer at one concurrency (streaming, the bench's prompts),
and read Triton's metrics twice during it (a window of constant concurrency). Per
request, from the deltas:
- each model's Triton queue time and `execute` time (nv_inference_*; a decoupled model's
  request is released when `execute` returns, so Triton's request duration is no more);
- each model's end to end time (uip_llm_e2e_request_latency_seconds: llm_engine's enqueue ->
  final response; uip_llm_bls_e2e_request_latency_seconds: llm_bls's execute -> final);
- llm_engine's time to first token (its own execute -> first token sent) and llm_bls's time
  to first response (its execute -> first text sent to the client);
- by Little's law over a window of constant concurrency: how many streams are outside each
  model on average, and for how long per request (hops, queues, perf_analyzer);
- the engine's own output tokens per second over the window (`window_tok_per_s`) and over
  the whole perf_analyzer run (`run_tok_per_s`: ramp, trials and drain included), beside
  perf_analyzer's `tok_per_s` and Triton's own count over perf_analyzer's windows
  (`server_tok_per_s`, from its report).
Prints one table; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

from uip import artifacts
from uip.bench import llm as profile
from uip.bench.perf import run_perf
from uip.clients import metrics
from uip.launch.server import TritonServer
from uip.repo.needed import needed

INSTANCES = "instance_group.count"  # not a parameter: the model's instance count
POLL = {m: {"cancel_poll_s": "0.5"} for m in ("llm_bls", "llm_engine")}
# name -> (parameters per model, environment)
VARIANTS: dict[str, tuple[dict[str, dict[str, str]], dict[str, str]]] = {
    "base": ({}, {}),
    "switch1": ({}, {"UIP_SWITCH_INTERVAL_MS": "1"}),
    "switch0.2": ({}, {"UIP_SWITCH_INTERVAL_MS": "0.2"}),
    "poll0.5": (POLL, {}),
    "switch1-poll0.5": (POLL, {"UIP_SWITCH_INTERVAL_MS": "1"}),
    "trace": ({}, {"UIP_HOP_TRACE_DIR": "/tmp/hoptrace"}),  # then: hop_trace.py /tmp/hoptrace
    "bls4": ({"llm_bls": {INSTANCES: "4"}}, {}),
    "trace-bls4": ({"llm_bls": {INSTANCES: "4"}}, {"UIP_HOP_TRACE_DIR": "/tmp/hoptrace-bls4"}),
    "stream2": ({"llm_engine": {"stream_interval": "2"}}, {}),  # half the engine's responses
}
MODELS = ("llm_bls", "llm_engine")


def set_parameter(config: str, key: str, value: str) -> str:
    """config.pbtxt with parameter `key` set to `value` (added when absent)."""
    block = re.compile(r'(key: "' + re.escape(key) + r'"\s*value \{\s*string_value: ")[^"]*(")')
    if block.search(config):
        return block.sub(lambda m: m.group(1) + value + m.group(2), config)
    return config + (f'\nparameters {{\n  key: "{key}"\n  value {{\n    string_value: '
                     f'"{value}"\n  }}\n}}\n')


def variant_repo(repo: Path, name: str, params: dict[str, dict[str, str]]) -> Path:
    if not params:
        return repo
    out = Path(f"/tmp/llm-hops-{name}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(repo, out, symlinks=True)
    for model, values in params.items():
        path = out / model / "config.pbtxt"
        text = path.read_text()
        for key, value in values.items():
            if key == INSTANCES:
                text = re.sub(r"(instance_group \{\s*count: )\d+", r"\g<1>" + value, text)
            else:
                text = set_parameter(text, key, value)
        path.write_text(text)
    return out


def scrape(url: str) -> dict[tuple[str, str], float]:
    """(metric name, model label) -> value summed over the other labels."""
    return metrics.totals_by(metrics.fetch(url, timeout=10), "model")


def per_request(d: dict, name: str, model: str, count: float, scale: float = 1.0) -> float:
    return d.get((name, model), 0.0) / count * scale if count else float("nan")


def measure(repo: Path, name: str, concurrency: int, measurement_ms: int, texts: list[str],
            log_dir: Path, settle_s: float = 4.0, window_s: float = 10.0) -> dict:
    params, env = VARIANTS[name]
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    t0 = time.perf_counter()
    server = TritonServer(variant_repo(repo, name, params), log_dir / f"hops-{name}.server.log",
                          ["--model-control-mode=explicit", *[f"--load-model={m}" for m in MODELS]],
                          open_apis=("model-config", "statistics")).start()
    row: dict = {"variant": name, "start_s": time.perf_counter() - t0}
    try:
        tokens = profile.calibrate(server.grpc_url, "llm_bls", texts=texts)
        result: list = []
        t_run, at_run = time.monotonic(), scrape(server.metrics_url)
        bench = threading.Thread(target=lambda: result.append(run_perf(
            "llm_bls", server.grpc_url, [concurrency], log_dir / f"hops-{name}.perf.csv",
            profile.perf_args(texts=texts), measurement_ms=measurement_ms)[0]))
        bench.start()
        time.sleep(settle_s)  # perf_analyzer keeps `concurrency` requests in flight from here
        t_before = time.monotonic()
        before = scrape(server.metrics_url)
        inside: list[float] = []  # llm_engine's sequences (running + waiting), sampled
        end = time.monotonic() + window_s
        while time.monotonic() < end:
            time.sleep(0.2)
            now = scrape(server.metrics_url)
            inside.append(now[("uip_llm_active_sequences", "llm_engine")]
                          + now[("uip_llm_waiting_sequences", "llm_engine")])
        after = scrape(server.metrics_url)
        window_s = time.monotonic() - t_before
        row["streams_in_engine_sampled"] = sum(inside) / max(len(inside), 1)
        row["window_ok"] = bench.is_alive()  # else perf_analyzer ended inside the window
        bench.join()
        run_s, at_end = time.monotonic() - t_run, scrape(server.metrics_url)
        perf = result[0]
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    row.update(tok_per_s=perf.throughput * tokens, p50_ms=perf.p50_ms, tokens=tokens,
               server_tok_per_s=(float("nan") if perf.server_throughput is None
                                 else perf.server_throughput * tokens))
    # The engine's own token count beside perf_analyzer's figure: over the metric window, and
    # over the whole perf_analyzer run (its ramp, trials and drain included)
    generated = ("uip_llm_tokens_generated_total", "llm_engine")
    row["window_tok_per_s"] = d.get(generated, 0.0) / window_s
    row["run_tok_per_s"] = (at_end.get(generated, 0.0) - at_run.get(generated, 0.0)) / run_s
    for m in MODELS:
        n = d.get(("nv_inference_request_success", m), 0.0)
        row[f"{m}_requests"] = n
        row[f"{m}_queue_ms"] = per_request(d, "nv_inference_queue_duration_us", m, n, 1e-3)
        row[f"{m}_execute_ms"] = per_request(d, "nv_inference_compute_infer_duration_us", m, n,
                                             1e-3)
    for key, metric, model in (
            ("engine_ttft_ms", "uip_llm_time_to_first_token_seconds", "llm_engine"),
            ("bls_ttfr_ms", "uip_llm_bls_time_to_first_response_seconds", "llm_bls"),
            ("llm_engine_e2e_ms", "uip_llm_e2e_request_latency_seconds", "llm_engine"),
            ("llm_bls_e2e_ms", "uip_llm_bls_e2e_request_latency_seconds", "llm_bls")):
        row[key] = per_request(d, metric + "_sum", model,
                               d.get((metric + "_count", model), 0.0), 1e3)
    steps = sum(v for (k, _), v in d.items() if k == "uip_llm_engine_steps_total")
    row["tokens_per_step"] = d.get(("uip_llm_tokens_generated_total", "llm_engine"), 0) / max(
        steps, 1)
    # Little's law over the window, where `concurrency` streams are always in flight: the
    # streams inside a model on average = its summed end-to-end time / the window.
    for m, key in (("llm_bls", "uip_llm_bls_e2e_request_latency_seconds"),
                   ("llm_engine", "uip_llm_e2e_request_latency_seconds")):
        inside = d.get((key + "_sum", m), 0.0) / window_s
        done = d.get((key + "_count", m), 0.0)
        row[f"streams_outside_{m}"] = concurrency - inside
        row[f"outside_{m}_ms"] = ((concurrency - inside) * window_s / done * 1e3 if done
                                  else float("nan"))
    return row


COLUMNS = ("variant", "tok_per_s", "server_tok_per_s", "window_tok_per_s", "run_tok_per_s",
           "p50_ms",
           "llm_bls_e2e_ms", "llm_engine_e2e_ms",
           "streams_outside_llm_bls", "streams_outside_llm_engine", "streams_in_engine_sampled",
           "outside_llm_bls_ms", "outside_llm_engine_ms",
           "llm_bls_queue_ms", "llm_engine_queue_ms", "llm_bls_execute_ms", "llm_engine_execute_ms",
           "bls_ttfr_ms", "engine_ttft_ms", "tokens_per_step", "start_s", "window_ok")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("repo", type=Path)
    p.add_argument("--variants", default="base,switch1")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--measurement-ms", type=int, default=6000)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--json", type=Path, default=Path("llm-hops.json"))
    p.add_argument("--deadline", type=float, default=0, help="epoch s: start no variant after")
    p.add_argument("--min-s", type=float, default=70, help="time a variant needs")
    a = p.parse_args()
    a.json.parent.mkdir(parents=True, exist_ok=True)
    artifacts.ensure(needed(a.repo))
    texts = profile.prompts(a.prompt_tokens, 64, None, a.repo)
    rows = []
    for name in a.variants.split(","):
        if a.deadline and time.time() + a.min_s > a.deadline:
            print(f"deadline: {name} and later variants skipped")
            break
        rows.append(measure(a.repo, name, a.concurrency, a.measurement_ms, texts,
                            a.json.parent))
        a.json.write_text(json.dumps(rows, indent=1))
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c])
                                for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
