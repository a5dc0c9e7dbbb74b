"""uip.clients.metrics: Prometheus text format as Triton's /metrics serves it."""

from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from uip.clients.metrics import Sample, fetch, samples, select, total, totals_by

TEXT = r"""# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="llm_bls",version="1"} 12
nv_inference_request_success{model="llm_engine",version="1"} 30
nv_inference_request_success{model="llm_engine",version="2"} 5
# TYPE uip_llm_active_sequences gauge
uip_llm_active_sequences{model="llm_engine",runtime="torch"} 3
uip_llm_active_sequences{model="llm_engine_b",runtime="torch"} 1
uip_llm_engine_steps_total{model="llm_engine",path="graph_decode"} 1e+03
uip_llm_engine_steps_total{model="llm_engine",path="eager"} 2.5E1
# TYPE uip_llm_e2e_request_latency_seconds histogram
uip_llm_e2e_request_latency_seconds_bucket{model="llm_engine",le="0.1"} 4
uip_llm_e2e_request_latency_seconds_bucket{model="llm_engine",le="1"} 9
uip_llm_e2e_request_latency_seconds_bucket{model="llm_engine",le="+Inf"} 10
uip_llm_e2e_request_latency_seconds_sum{model="llm_engine"} 4.25
uip_llm_e2e_request_latency_seconds_count{model="llm_engine"} 10
nv_gpu_utilization{gpu_uuid="GPU-1"} NaN
nv_cpu_memory_total_bytes 6.4e10
odd{note="a, b} \"c\" \\ d\ne",model="llm_bls",} -Inf
stamped{model="llm_bls"} +Inf 1700000000000
  indented{model="x"} -0.5
not a sample line
broken{model="llm_bls" 1
noval{model="llm_bls"}
"""


@pytest.fixture(scope="module")
def parsed() -> list[Sample]:
    return samples(TEXT)


def test_samples_skip_comments_and_broken_lines(parsed):
    names = [s.name for s in parsed]
    assert len(parsed) == 17
    assert names[0] == "nv_inference_request_success"
    assert not {"not", "broken", "noval", "#"} & set(names)
    assert parsed[0] == Sample("nv_inference_request_success",
                               {"model": "llm_bls", "version": "1"}, 12.0)


def test_values_numbers_nan_inf_and_timestamp(parsed):
    by = {(s.name, s.labels.get("model")): s.value for s in parsed}
    assert by[("uip_llm_engine_steps_total", "llm_engine")] == 25.0  # the last of the two
    assert total(parsed, "uip_llm_engine_steps_total") == 1025.0
    assert math.isnan(by[("nv_gpu_utilization", None)])
    assert by[("odd", "llm_bls")] == -math.inf
    assert by[("stamped", "llm_bls")] == math.inf  # timestamp ignored
    assert by[("indented", "x")] == -0.5


def test_line_without_labels(parsed):
    [s] = select(parsed, "nv_cpu_memory_total_bytes")
    assert s.labels == {} and s.value == 6.4e10


def test_label_values_with_commas_braces_quotes_and_escapes(parsed):
    [s] = select(parsed, "odd")
    assert s.labels == {"note": 'a, b} "c" \\ d\ne', "model": "llm_bls"}


def test_histogram_samples(parsed):
    name = "uip_llm_e2e_request_latency_seconds"
    buckets = {s.labels["le"]: s.value for s in select(parsed, name + "_bucket")}
    assert buckets == {"0.1": 4.0, "1": 9.0, "+Inf": 10.0}
    assert total(parsed, name + "_sum", model="llm_engine") == 4.25
    assert total(parsed, name + "_count", model="llm_engine") == 10.0
    assert select(parsed, name) == []  # the family name is no sample


def test_total_filters_and_sums(parsed):
    name = "nv_inference_request_success"
    assert total(parsed, name) == 47.0
    assert total(TEXT, name, model="llm_engine") == 35.0  # text or samples
    assert total(parsed, name, model="llm_engine", version="2") == 5.0
    assert total(parsed, name, model="nope") == 0.0
    assert total(parsed, "absent") == 0.0
    # exact label match: llm_engine_b is not llm_engine
    assert total(parsed, "uip_llm_active_sequences", model="llm_engine") == 3.0
    assert [s.labels["version"] for s in select(parsed, name, model="llm_engine")] == ["1", "2"]


def test_totals_by_label(parsed):
    d = totals_by(parsed, "model")
    assert set(totals_by(TEXT, "model")) == set(d)  # text or samples
    assert len(d) == 13  # versions, paths and histogram buckets summed per model
    assert d[("nv_inference_request_success", "llm_engine")] == 35.0
    assert d[("nv_inference_request_success", "llm_bls")] == 12.0
    assert d[("uip_llm_engine_steps_total", "llm_engine")] == 1025.0
    assert d[("nv_cpu_memory_total_bytes", "")] == 6.4e10  # no model label
    assert d[("uip_llm_waiting_sequences", "llm_engine")] == 0.0  # missing: 0


def test_fetch_reads_the_endpoint():
    body = TEXT.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        text = fetch(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert text == TEXT
    assert total(text, "uip_llm_active_sequences") == 4.0
