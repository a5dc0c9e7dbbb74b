"""`uip bench gateway` runs both paths on the same tokens and writes its table."""

from __future__ import annotations

import csv
import subprocess
import sys


def test_uip_bench_gateway(server, tmp_path):
    r = subprocess.run([sys.executable, "-c", "from uip.cli import main; main()", "bench",
                        "gateway", "--url", server.grpc_url, "--concurrency", "1,2",
                        "--out", str(tmp_path), "--label", "test", "--gateway-workers", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = list(csv.DictReader(open(tmp_path / "gateway-test.csv")))
    assert [int(row["streams"]) for row in rows] == [1, 2]
    for row in rows:
        assert float(row["tokens_per_request"]) > 8
        assert float(row["direct_tok_per_s"]) > 0 and float(row["gateway_tok_per_s"]) > 0
        assert float(row["gateway_ttft_p50_ms"]) > 0
        assert int(row["gateway_workers"]) == 2
    assert (tmp_path / "gateway-test.md").read_text().startswith("| streams")
