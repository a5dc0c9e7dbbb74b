"""How to launch tritonserver from the nvidia-pytriton wheel: binary, backends, env, command line.

Pure functions (testable without a server); `uip.launch.server` runs the process.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from uip.core.paths import PROJECT_ROOT


class LaunchError(RuntimeError):
    """Something that stops the server from starting, said in one paragraph a user can act on."""


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError:
        raise LaunchError(
            "tritonserver not found: set TRITONSERVER to its binary, or install the pinned "
            "server wheel (`pip install nvidia-pytriton==0.7.0`, done by the README's set-up)."
        ) from None
    return Path(pytriton.__file__).parent / "tritonserver"


def find_tritonserver(env: dict[str, str] | None = None) -> Path:
    """`$TRITONSERVER` if set, else the binary inside the nvidia-pytriton wheel."""
    env = os.environ if env is None else env
    if env.get("TRITONSERVER"):
        path = Path(env["TRITONSERVER"])
        if not path.is_file():
            raise LaunchError(f"TRITONSERVER={path} does not exist; point it at the binary.")
        return path
    path = _pytriton_root() / "bin" / "tritonserver"
    if not path.is_file():
        raise LaunchError(f"tritonserver is missing from the nvidia-pytriton wheel ({path}).")
    return path


def python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def prepare_backend_dir(env: dict[str, str] | None = None, dest: Path | None = None) -> Path:
    """A backend folder whose Python backend carries the stub for the running Python.

    `$TRITON_BACKEND_DIR` wins (a container or the GPU pack set it). Otherwise the wheel's
    backends are copied once into the virtual environment and the stub is put beside
    libtriton_python.so, as the stub must match the interpreter that runs the models.
    """
    env = os.environ if env is None else env
    if env.get("TRITON_BACKEND_DIR"):
        return Path(env["TRITON_BACKEND_DIR"])
    src = _pytriton_root()
    stub = src / "python_backend_stubs" / python_tag() / "triton_python_backend_stub"
    if not stub.is_file():
        raise LaunchError(f"no Python backend stub for Python {python_tag()} in {stub.parent}.")
    dest = dest or Path(sys.prefix) / "var" / "uip" / f"backends-py{python_tag()}"
    target = dest / "python" / "triton_python_backend_stub"
    if not target.is_file() or target.stat().st_size != stub.stat().st_size:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src / "backends", dest, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, target)
    return dest


def _wheel_libs() -> list[str]:
    """The wheel's bundled libraries (libcudart, ...): the copied stub loses its RPATH to them."""
    try:
        libs = _pytriton_root().parents[1] / "nvidia_pytriton.libs"
    except LaunchError:
        return []
    return [str(libs)] if libs.is_dir() else []


def server_env(base: dict[str, str] | None = None, ports: Ports | None = None) -> dict[str, str]:
    """Environment for tritonserver: the stub finds this venv through `python3` on PATH,
    libpython through LD_LIBRARY_PATH, and the backends package through PYTHONPATH; models
    that call the server back (llm_bls) find its gRPC port in UIP_GRPC_URL."""
    env = dict(os.environ if base is None else base)
    if ports is not None:
        env["UIP_GRPC_URL"] = f"localhost:{ports.grpc}"
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "/usr/bin:/bin")])
    libdirs = [sysconfig.get_config_var("LIBDIR") or "", *_wheel_libs()]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in [*libdirs, env.get("LD_LIBRARY_PATH")] if p)
    backends = str(PROJECT_ROOT / "python_backends")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [backends, env.get("PYTHONPATH")] if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def server_command(
    tritonserver: Path,
    repository: Path,
    backend_dir: Path,
    ports: Ports,
    extra: list[str] | None = None,
) -> list[str]:
    return [
        str(tritonserver),
        f"--model-repository={repository}",
        f"--backend-directory={backend_dir}",
        f"--http-port={ports.http}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-port={ports.metrics}",
        *(extra or []),
    ]


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_ports(ports: Ports) -> None:
    for label, port in (("HTTP", ports.http), ("gRPC", ports.grpc), ("metrics", ports.metrics)):
        if port_in_use(port):
            flag = "--metrics-port" if label == "metrics" else f"--{label.lower()}-port"
            raise LaunchError(
                f"Port {port} ({label}) is already in use, so tritonserver cannot listen on it. "
                f"Another server may be running (`ss -ltnp | grep {port}` shows which process); "
                f"stop it or choose another port with {flag} N."
            )


def check_repository(repository: Path) -> list[str]:
    """The model names of a repository; a clear error when it cannot be a repository."""
    if not repository.is_dir():
        raise LaunchError(
            f"Model repository {repository} does not exist. Pass --model-repository DIR, or run "
            "`uip repo build` to render it from specs/."
        )
    models = sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())
    if not models:
        raise LaunchError(
            f"{repository} holds no model folders with a config.pbtxt, so it is not a Triton "
            "model repository. Run `uip repo build --out DIR` to render one from specs/."
        )
    return models
