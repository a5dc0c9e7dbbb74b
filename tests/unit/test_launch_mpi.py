"""`uip serve --world-size N`: the mpirun command (one tritonserver per rank) and its checks."""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from support.fake_trtllm import write_engine_dir

from uip.core.paths import PROJECT_ROOT
from uip.launch.command import LaunchError, Ports
from uip.launch.mpi import (
    EngineModel,
    format_command,
    mpirun_command,
    rank_command,
    rank_processes,
    read_engine_model,
    serve_multi_gpu,
    world_size_problems,
)
from uip.repo.render import render_model
from uip.spec.schema import load_spec

TS, REPO, BACKENDS = "/opt/tritonserver/bin/tritonserver", Path("/models"), "/opt/backends"
PORTS = Ports(8000, 8001, 8002)


def ranks_of(cmd: list[str]) -> list[list[str]]:
    """The per-rank blocks of an MPMD mpirun command (after `-n 1`)."""
    first = cmd.index("-n")
    blocks, cur = [], []
    for arg in cmd[first:] + [":"]:
        if arg == ":":
            assert cur[:2] == ["-n", "1"], cur[:3]
            blocks.append(cur[2:])
            cur = []
        else:
            cur.append(arg)
    return blocks


@pytest.mark.parametrize("world_size", [1, 2, 8])
def test_one_tritonserver_per_rank(world_size):
    cmd = mpirun_command(world_size, TS, REPO, BACKENDS, PORTS, extra=["--log-verbose=1"])
    assert cmd[:2] == ["mpirun", "--allow-run-as-root"]
    ranks = ranks_of(cmd)
    assert len(ranks) == world_size
    assert cmd.count(":") == world_size - 1
    assert all(r[0] == TS and f"--model-repository={REPO}" in r for r in ranks)
    assert all(f"--backend-directory={BACKENDS}" in r for r in ranks)
    prefixes = [next(a for a in r if a.startswith("--backend-config=python,shm-region"))
                for r in ranks]
    assert prefixes == [f"--backend-config=python,shm-region-prefix-name=prefix{i}_"
                        for i in range(world_size)]
    # rank 0 serves the whole repository on the ports, with the user's extra flags
    r0 = ranks[0]
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002",
            "--log-verbose=1"} <= set(r0)
    assert not any(a.startswith(("--load-model", "--model-control-mode", "--allow-")) for a in r0)
    # the other ranks load only llm_engine and listen nowhere
    for r in ranks[1:]:
        assert {"--model-control-mode=explicit", "--load-model=llm_engine", "--allow-http=false",
                "--allow-grpc=false", "--allow-metrics=false"} <= set(r)
        assert not any(a.startswith(("--http-port", "--grpc-port", "--metrics-port"))
                       for a in r)
        assert "--log-verbose=1" not in r


def test_world_size_must_be_positive():
    with pytest.raises(LaunchError, match=">= 1"):
        mpirun_command(0, TS, REPO, BACKENDS, PORTS)


def test_rank_command_engine_model_name():
    assert "--load-model=my_engine" in rank_command(3, TS, REPO, BACKENDS, PORTS, "my_engine")


def test_printed_command_is_one_rank_per_line_and_exact():
    cmd = mpirun_command(2, TS, Path("/models with space"), BACKENDS, PORTS)
    text = format_command(cmd)
    lines = text.splitlines()
    assert lines[0] == "mpirun --allow-run-as-root \\"
    assert len(lines) == 3
    assert lines[1].strip().startswith("-n 1 " + TS) and lines[1].endswith(" : \\")
    assert shlex.split(text.replace("\\\n", " ")) == cmd


# --------------------------------------------------------------------------- checks


def test_checks_pass_for_a_matching_engine(tmp_path):
    engine = write_engine_dir(tmp_path / "e", tp_size=2, pp_size=2)
    model = EngineModel("llm_engine", "tensorrt_llm", engine)
    assert world_size_problems(4, model, gpus=4) == []
    wrong = world_size_problems(2, model, gpus=8)
    assert len(wrong) == 1 and "tp 2 x pp 2 = 4 rank(s), so --world-size must be 4" in wrong[0]
    few = world_size_problems(4, model, gpus=2)
    assert len(few) == 1 and "needs 4 GPUs" in few[0] and "2 visible" in few[0]


def test_checks_name_what_is_wrong(tmp_path):
    torch = world_size_problems(2, EngineModel("llm_engine", "torch", None), gpus=2)
    assert "runtime 'torch'" in torch[0]
    assert world_size_problems(1, EngineModel("llm_engine", "torch", None), gpus=1) == []
    missing = world_size_problems(2, None, gpus=2)
    assert "no llm_engine model" in missing[0]
    not_built = world_size_problems(
        2, EngineModel("llm_engine", "tensorrt_llm", tmp_path / "nothing"), gpus=2)
    assert "not a TensorRT-LLM engine folder" in not_built[0]


def _repository(tmp_path: Path, engine: Path) -> Path:
    """A repository with llm_engine on `engine` (the fragment applied to specs/llm.yaml)."""
    import yaml

    from uip.trtllm.engine_dir import EngineDir
    from uip.trtllm.fragment import apply_fragment, llm_engine_fragment

    data = yaml.safe_load((PROJECT_ROOT / "specs" / "llm.yaml").read_text())
    data = apply_fragment(data, llm_engine_fragment(EngineDir.read(engine)))
    spec_file = tmp_path / "llm.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    spec = load_spec(spec_file)
    repo = tmp_path / "repo"
    for m in spec.models:
        if m.name == "llm_engine":
            render_model(spec, m, repo)
    return repo


def test_read_engine_model_from_a_rendered_repository(tmp_path):
    engine = write_engine_dir(tmp_path / "e", tp_size=2)
    repo = _repository(tmp_path, engine)
    model = read_engine_model(repo)
    assert model == EngineModel("llm_engine", "tensorrt_llm", engine.resolve())
    assert read_engine_model(repo, "nope") is None


def test_serve_dry_run_prints_and_does_not_run(tmp_path):
    repo = _repository(tmp_path, write_engine_dir(tmp_path / "e", tp_size=2))
    out, err = io.StringIO(), io.StringIO()
    assert serve_multi_gpu(2, repo, PORTS, dry_run=True, gpus=2, out=out, err=err) == 0
    text = out.getvalue()
    assert "mpirun --allow-run-as-root" in text
    assert text.count("tritonserver --model-repository=") == 2
    assert "PYTHONPATH=" in text
    notes = [ln for ln in err.getvalue().splitlines() if "would stop here" in ln]
    assert all("mpirun is not on PATH" in n for n in notes), notes  # this machine may lack it


def test_serve_refuses_a_mismatch_before_starting(tmp_path):
    repo = _repository(tmp_path, write_engine_dir(tmp_path / "e", tp_size=2))
    with pytest.raises(LaunchError, match="--world-size must be 2, not 4"):
        serve_multi_gpu(4, repo, PORTS, gpus=4, before_start=lambda: pytest.fail("started"))
    err = io.StringIO()
    assert serve_multi_gpu(4, repo, PORTS, dry_run=True, gpus=0, out=io.StringIO(),
                           err=err) == 0
    assert "must be 2, not 4" in err.getvalue() and "needs 4 GPUs" in err.getvalue()


def test_uip_serve_world_size_2_dry_run_prints_one_tritonserver_per_rank():
    """The issue's acceptance check, on the default repository of this machine."""
    r = subprocess.run([sys.executable, "-c", "from uip.cli import main; main()", "serve",
                        "--world-size", "2", "--dry-run"], capture_output=True, text=True,
                       cwd=PROJECT_ROOT)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if not ln.startswith("#")]
    assert lines[0].startswith("mpirun --allow-run-as-root")
    ranks = [ln for ln in lines if "tritonserver --model-repository=" in ln]
    assert len(ranks) == 2
    assert "prefix0_" in ranks[0] and "--http-port=8000" in ranks[0]
    assert "prefix1_" in ranks[1] and "--load-model=llm_engine" in ranks[1]
    assert "Traceback" not in r.stderr


def test_rank_processes_finds_the_tritonservers_below_mpirun():
    table = {10: (1, "mpirun"), 11: (10, "tritonserver"), 12: (10, "prted"),
             13: (12, "tritonserver"), 14: (11, "triton_python_b"), 20: (1, "tritonserver")}
    ranks = rank_processes(10, table, rank_of={11: 0, 13: 1}.get)
    assert ranks == {0: 11, 1: 13}  # 20 is another server, not below this mpirun
    assert rank_processes(99, table) == {}


def test_uip_serve_dry_run_without_world_size_prints_the_single_command():
    r = subprocess.run([sys.executable, "-c", "from uip.cli import main; main()", "serve",
                        "--dry-run", "--http-port", "9000", "--log-verbose=1"],
                       capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert r.returncode == 0, r.stderr
    cmd = shlex.split(r.stdout)
    assert Path(cmd[0]).name == "tritonserver" and "mpirun" not in cmd
    assert "--http-port=9000" in cmd and "--log-verbose=1" in cmd
