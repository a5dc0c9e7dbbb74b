"""`uip serve --world-size N`: one tritonserver per GPU rank under mpirun (TensorRT-LLM tp x pp).

Modelled on TensorRT-LLM's `triton_backend/scripts/launch_triton_server.py`: one MPMD mpirun
with a `-n 1 tritonserver ...` block per rank, separated by `:`.
- rank 0 serves the whole repository on the usual ports;
- ranks 1..N-1 load only `llm_engine` (`--model-control-mode=explicit --load-model=llm_engine`)
  and open no endpoint (`--allow-http/grpc/metrics=false`): their executor joins rank 0's in
  LEADER mode and waits inside the model's initialize until rank 0 shuts down;
- every rank has its own Python backend shared-memory prefix (`prefix<rank>_`), or the stubs of
  the ranks on one host would share regions.
Before launching: N must equal the engine's tp x pp (read from its config.json via the
repository's llm_engine artifact) and N GPUs must be visible. `--dry-run` prints the command and
what the checks found, without running anything.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from uip.launch.command import (
    LaunchError,
    Ports,
    check_ports,
    check_repository,
    find_tritonserver,
    prepare_backend_dir,
    server_env,
)

ENGINE_MODEL = "llm_engine"
SHM_PREFIX = "prefix{rank}_"
STOP_GRACE_S = 60.0  # how long rank 0 gets to shut down before the other ranks are stopped


def rank_command(rank: int, tritonserver: Path | str, repository: Path, backend_dir: Path | str,
                 ports: Ports, engine_model: str = ENGINE_MODEL,
                 extra: list[str] | None = None) -> list[str]:
    """The tritonserver command line of one rank."""
    cmd = [str(tritonserver), f"--model-repository={repository}",
           f"--backend-directory={backend_dir}"]
    if rank == 0:
        cmd += [f"--http-port={ports.http}", f"--grpc-port={ports.grpc}",
                f"--metrics-port={ports.metrics}"]
    else:
        cmd += ["--model-control-mode=explicit", f"--load-model={engine_model}",
                "--allow-http=false", "--allow-grpc=false", "--allow-metrics=false"]
    cmd += ["--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name={SHM_PREFIX.format(rank=rank)}"]
    if rank == 0:
        cmd += list(extra or [])
    return cmd


def mpirun_command(world_size: int, tritonserver: Path | str, repository: Path,
                   backend_dir: Path | str, ports: Ports, engine_model: str = ENGINE_MODEL,
                   extra: list[str] | None = None, mpirun: str = "mpirun",
                   oversubscribe: bool = False) -> list[str]:
    """One MPMD mpirun: `-n 1 <rank 0 tritonserver> : -n 1 <rank 1 tritonserver> : ...`."""
    if world_size < 1:
        raise LaunchError(f"--world-size must be >= 1, got {world_size}")
    cmd = [mpirun, "--allow-run-as-root"]
    if oversubscribe:
        cmd.append("--oversubscribe")
    for rank in range(world_size):
        if rank:
            cmd.append(":")
        cmd += ["-n", "1", *rank_command(rank, tritonserver, repository, backend_dir, ports,
                                         engine_model, extra)]
    return cmd


def format_command(cmd: list[str]) -> str:
    """Shell text with mpirun's own flags on the first line and one rank per line after it."""
    if "-n" not in cmd:
        return shlex.join(cmd)
    first = cmd.index("-n")
    ranks: list[list[str]] = [[]]
    for arg in cmd[first:]:
        if arg == ":":
            ranks.append([])
        else:
            ranks[-1].append(arg)
    lines = [shlex.join(cmd[:first])]
    lines += [shlex.join(r) + (" :" if i < len(ranks) - 1 else "") for i, r in enumerate(ranks)]
    return " \\\n  ".join(lines)


def single_command_text(repository: Path, ports: Ports, extra: list[str] | None = None) -> str:
    """`uip serve --dry-run` without --world-size: the one tritonserver command."""
    from uip.launch.command import server_command

    cmd = server_command(find_tritonserver(), repository.resolve(), prepare_backend_dir(), ports,
                         extra)
    return shlex.join(cmd)


# ---------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class EngineModel:
    """What the repository says about its engine model."""

    name: str
    runtime: str | None
    artifact: Path | None


def read_engine_model(repository: Path, engine_model: str = ENGINE_MODEL) -> EngineModel | None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from uip.core.paths import resolve_artifact

    config = repository / engine_model / "config.pbtxt"
    if not config.is_file():
        return None
    cfg = text_format.Parse(config.read_text(), mc.ModelConfig())
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    art = params.get("artifact")
    return EngineModel(engine_model, params.get("runtime"),
                       resolve_artifact(art) if art else None)


def world_size_problems(world_size: int, model: EngineModel | None, gpus: int,
                        read_engine: Callable | None = None,
                        engine_model: str = ENGINE_MODEL) -> list[str]:
    """Why N ranks cannot serve this repository here (empty when they can)."""
    from uip.trtllm.engine_dir import EngineDir, EngineDirError

    problems = []
    if model is None:
        problems.append(
            f"the repository has no {engine_model} model, whose TensorRT-LLM engine the ranks "
            f"run: render one from an LLM spec whose {engine_model} has runtime tensorrt_llm "
            "(build_scripts/build_trtllm_engine.py writes that spec)")
    elif model.runtime != "tensorrt_llm":
        if world_size != 1:
            problems.append(
                f"{model.name} uses runtime {model.runtime!r}: only runtime 'tensorrt_llm' runs "
                "one process per GPU rank; serve it without --world-size (one tritonserver)")
    elif model.artifact is None:
        problems.append(f"{model.name} has no artifact (the engine folder) in its config")
    else:
        try:
            info = (read_engine or EngineDir.read)(model.artifact)
        except EngineDirError as e:
            problems.append(str(e))
        else:
            if info.world_size != world_size:
                problems.append(
                    f"the engine {model.artifact} is built for tp {info.tp_size} x pp "
                    f"{info.pp_size} = {info.world_size} rank(s), so --world-size must be "
                    f"{info.world_size}, not {world_size}")
    if gpus < world_size:
        problems.append(f"--world-size {world_size} needs {world_size} GPUs (one rank each); "
                        f"{gpus} visible (nvidia-smi, CUDA_VISIBLE_DEVICES)")
    return problems


# ----------------------------------------------------------------------------------- serve


def serve_multi_gpu(world_size: int, repository: Path, ports: Ports, dry_run: bool = False,
                    extra: list[str] | None = None, engine_model: str = ENGINE_MODEL,
                    gpus: int | None = None, out=None, err=None,
                    before_start: Callable[[], object] | None = None) -> int:
    """Check, then run (or with dry_run print) the mpirun command for `world_size` ranks.
    `before_start` (e.g. building missing artifacts) runs once the checks pass."""
    from uip.trtllm.gpus import visible_gpus

    out = out or sys.stdout
    err = err or sys.stderr
    if world_size < 1:
        raise LaunchError(f"--world-size must be >= 1, got {world_size}")
    repository = repository.resolve()
    check_repository(repository)
    gpus = visible_gpus() if gpus is None else gpus
    problems = world_size_problems(world_size, read_engine_model(repository, engine_model), gpus,
                                   engine_model=engine_model)
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        problems.append("mpirun is not on PATH: multi-GPU serving runs in "
                        "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3 (docker/"
                        "Dockerfile.gpu), which has OpenMPI")
    if problems and not dry_run:
        raise LaunchError("cannot start " + str(world_size) + " ranks: " + "; ".join(problems))
    cmd = mpirun_command(world_size, find_tritonserver(), repository, prepare_backend_dir(),
                         ports, engine_model, extra, mpirun="mpirun")
    env = server_env(ports=ports)
    if dry_run:
        for p in problems:
            print(f"# note: a real start would stop here: {p}", file=err)
        err.flush()
        print("# environment added by uip: " + " ".join(
            f"{k}={shlex.quote(env[k])}" for k in ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH")),
            file=out)
        print(format_command(cmd), file=out)
        return 0
    check_ports(ports)
    if before_start is not None:
        before_start()
    cmd[0] = mpirun
    return _run(cmd, env)


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        table[int(entry.name)] = (ppid, comm)
    return table


def rank_processes(root: int, table: dict[int, tuple[int, str]] | None = None,
                   rank_of: Callable[[int], int | None] | None = None) -> dict[int, int]:
    """MPI rank -> pid of the tritonserver processes below `root` (mpirun)."""
    table = _proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if table[pid][1] == "tritonserver":
            rank = (rank_of or _rank_of)(pid)
            found[rank if rank is not None else 1000 + len(found)] = pid
        else:
            todo.extend(children.get(pid, []))
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        for key in (b"OMPI_COMM_WORLD_RANK=", b"PMIX_RANK=", b"PMI_RANK="):
            if item.startswith(key):
                return int(item[len(key):])
    return None


def stop_ranks(root: int, signum: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> bool:
    """Stop the ranks gracefully: rank 0 first (its executor, the leader, releases the workers
    as it shuts down), then the others. mpirun itself, when signalled, SIGTERMs every rank at
    once and SIGKILLs them a second later. False when no rank process was found."""
    ranks = rank_processes(root)
    if not ranks:
        return False
    order = sorted(ranks)
    first = ranks[order[0]]
    try:
        os.kill(first, signum)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and Path(f"/proc/{first}").exists():
        time.sleep(0.2)
    for rank in order[1:]:
        try:
            os.kill(ranks[rank], signum)
        except ProcessLookupError:
            pass
    return True


def _run(cmd: list[str], env: dict[str, str]) -> int:
    """mpirun in the foreground. Ctrl-C / SIGTERM stop the ranks themselves (rank 0 first):
    they exit cleanly and mpirun with them."""
    from uip.launch.server import diagnose, echo_output

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    stopped = []

    def stop(signum: int) -> None:
        if not stop_ranks(proc.pid, signal.SIGTERM):
            proc.send_signal(signum)

    def forward(signum, _frame):
        if stopped:  # a second Ctrl-C: let mpirun end the job now
            proc.send_signal(signum)
            return
        stopped.append(signum)
        threading.Thread(target=stop, args=(signum,), daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    tail = echo_output(proc)
    rc = proc.wait()
    if rc != 0 and not stopped:
        raise LaunchError(diagnose(tail, rc))
    return 0
