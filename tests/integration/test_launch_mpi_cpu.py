"""The multi-rank launch, run for real on CPU: mpirun starts one tritonserver per rank with the
command `uip serve --world-size 2` uses (without TensorRT-LLM: a plain Python model stands in
for llm_engine). Rank 0 serves the repository, rank 1 loads only its model under its own
shared-memory prefix and listens nowhere, and a stop ends both cleanly."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from uip.launch.command import Ports, find_tritonserver, free_port, prepare_backend_dir, server_env
from uip.launch.mpi import mpirun_command, rank_processes, stop_ranks

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None,
                                reason="mpirun not installed (Debian: openmpi-bin)")

MODEL_PY = """
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        rank = os.environ.get("OMPI_COMM_WORLD_RANK")
        print(f"stand-in {args['model_name']} on MPI rank {rank}", flush=True)
        # a marker beside the repository: mpirun forwards rank 1's output late
        marks = Path(args["model_repository"]).parents[1] / "loaded"
        marks.mkdir(exist_ok=True)
        (marks / f"{args['model_name']}-rank{rank}").touch()

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * 2)]) for r in requests]
"""
CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 4
input {{ name: "x" data_type: TYPE_FP32 dims: [1] }}
output {{ name: "y" data_type: TYPE_FP32 dims: [1] }}
instance_group {{ kind: KIND_CPU count: 1 }}
"""


def _repo(root: Path) -> Path:
    for name in ("llm_engine", "other"):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name))
        (root / name / "1" / "model.py").write_text(MODEL_PY)
    return root


def _get(url: str, data: bytes | None = None):
    with urllib.request.urlopen(url, data=data, timeout=2) as r:
        return json.loads(r.read() or b"null")


def test_two_ranks_under_mpirun(tmp_path):
    repo = _repo(tmp_path / "repo")
    ports = Ports(free_port(), free_port(), free_port())
    cmd = mpirun_command(2, find_tritonserver(), repo, prepare_backend_dir(), ports)
    log_path = tmp_path / "mpirun.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=server_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://localhost:{ports.http}/v2"
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                try:
                    if {m["name"] for m in _get(f"{base}/repository/index", b"{}")
                            if m.get("state") == "READY"} == {"llm_engine", "other"}:
                        break
                except OSError:
                    pass
                time.sleep(0.3)
            body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1],
                                           "data": [21.0]}]}).encode()
            out = _get(f"{base}/models/llm_engine/infer", body)
            assert out["outputs"][0]["data"] == [42.0]
            deadline = time.monotonic() + 60  # rank 1 loads its model too
            while not (tmp_path / "loaded" / "llm_engine-rank1").exists():
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(0.5)  # rank 1 finishes its start-up
            assert sorted(rank_processes(proc.pid)) == [0, 1]
            assert stop_ranks(proc.pid)  # what Ctrl-C on `uip serve --world-size` does
            assert proc.wait(60) == 0  # both ranks ended cleanly, and mpirun with them
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(90)
    loaded = sorted(p.name for p in (tmp_path / "loaded").iterdir())
    assert loaded == ["llm_engine-rank0", "llm_engine-rank1", "other-rank0"]
    text = log_path.read_text()
    # rank 0 loaded both models, rank 1 only llm_engine
    assert "stand-in llm_engine on MPI rank 0" in text
    assert "stand-in other on MPI rank 0" in text
    assert "stand-in other on MPI rank 1" not in text
    # each rank's Python backend has its own shared-memory prefix
    assert re.search(r'"shm-region-prefix-name":"prefix0_"', text)
    assert re.search(r'"shm-region-prefix-name":"prefix1_"', text)
    # one HTTP service only (rank 0), and both ranks unloaded their models on the stop
    assert text.count("Started HTTPService") == 1
    assert text.count("successfully unloaded 'llm_engine'") == 2
