"""The launcher's environment, command line and one-paragraph errors (no server started)."""

from __future__ import annotations

import socket
import sys
import sysconfig
from pathlib import Path

import pytest

from uip.core.paths import PROJECT_ROOT
from uip.launch.command import (
    LaunchError,
    Ports,
    check_ports,
    check_repository,
    find_tritonserver,
    prepare_backend_dir,
    server_command,
    server_env,
)
from uip.launch.server import diagnose


def test_env_puts_this_venv_first_on_path_and_libpython_on_ld_path():
    env = server_env({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/x"})
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["PATH"].endswith(":/usr/bin")
    ld = env["LD_LIBRARY_PATH"].split(":")
    assert ld[0] == sysconfig.get_config_var("LIBDIR")
    assert any(p.endswith("nvidia_pytriton.libs") for p in ld)
    assert ld[-1] == "/x"
    assert env["PYTHONPATH"].split(":")[0] == str(PROJECT_ROOT / "python_backends")


def test_command_line():
    cmd = server_command(Path("/bin/ts"), Path("/repo"), Path("/be"), Ports(1, 2, 3), ["--x=1"])
    assert cmd == ["/bin/ts", "--model-repository=/repo", "--backend-directory=/be",
                   "--http-port=1", "--grpc-port=2", "--metrics-port=3", "--x=1"]


def test_tritonserver_from_env_or_wheel(tmp_path):
    fake = tmp_path / "tritonserver"
    fake.write_text("")
    assert find_tritonserver({"TRITONSERVER": str(fake)}) == fake
    with pytest.raises(LaunchError, match="does not exist"):
        find_tritonserver({"TRITONSERVER": str(tmp_path / "nope")})
    assert find_tritonserver({}).name == "tritonserver"


def test_backend_dir_carries_stub_for_this_python(tmp_path):
    dest = prepare_backend_dir({}, tmp_path / "be")
    assert (dest / "python" / "libtriton_python.so").is_file()
    assert (dest / "python" / "triton_python_backend_stub").is_file()
    assert prepare_backend_dir({"TRITON_BACKEND_DIR": "/opt/be"}) == Path("/opt/be")


def test_port_taken_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LaunchError) as e:
            check_ports(Ports(port, port + 1, port + 2))
    assert f"Port {port} (HTTP) is already in use" in str(e.value)
    assert "--http-port" in str(e.value)


def test_repository_errors(tmp_path):
    with pytest.raises(LaunchError, match="does not exist"):
        check_repository(tmp_path / "missing")
    with pytest.raises(LaunchError, match="not a Triton model repository"):
        check_repository(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text("")
    assert check_repository(tmp_path) == ["m"]


def test_diagnose_names_the_failed_model():
    log = [
        "+-------+---------+--------------------------------------------------+",
        "| Model | Version | Status                                           |",
        "| emb   | 1       | UNAVAILABLE: Internal: ImportError: no module x  |",
        "| llm   | 1       | READY                                            |",
        "error: creating server: Internal - failed to load all models",
    ]
    msg = diagnose(log, 1)
    assert "model 'emb' failed to load: Internal: ImportError: no module x" in msg
    assert "llm" not in msg.split("because")[1].split(".")[0]


def test_diagnose_port_in_use():
    msg = diagnose(["E1126 grpc_server.cc] Address already in use"], 1)
    assert "port is taken" in msg


def _crashing_server(tmp_path, monkeypatch, script: str) -> Path:
    """run_foreground on a stand-in 'tritonserver' (a shell script); its runs are counted."""
    from uip.launch import server

    runs = tmp_path / "runs"
    cmd = ["/bin/sh", "-c", f"echo run >> {runs}; {script}"]
    monkeypatch.setattr(server, "prepare", lambda *a, **k: (cmd, {}))
    return runs


def test_a_crashed_server_is_started_again(tmp_path, monkeypatch, capsys):
    from uip.launch.server import SERVING, run_foreground

    runs = _crashing_server(tmp_path, monkeypatch, f'echo "{SERVING}"; '
                            f'[ $(wc -l < {tmp_path / "runs"}) -ge 3 ] && exit 0; kill -KILL $$')
    assert run_foreground(tmp_path, None) == 0
    assert runs.read_text().count("run") == 3
    assert "starting it again (2 of 3" in capsys.readouterr().out


def test_crash_loop_and_start_failure_are_not_restarted_for_ever(tmp_path, monkeypatch):
    from uip.launch.command import LaunchError
    from uip.launch.server import SERVING, run_foreground

    runs = _crashing_server(tmp_path, monkeypatch, f'echo "{SERVING}"; exit 3')
    with pytest.raises(LaunchError):
        run_foreground(tmp_path, None, max_restarts=2)
    assert runs.read_text().count("run") == 3
    runs.unlink()
    _crashing_server(tmp_path, monkeypatch, "echo 'error: model failed to load'; exit 1")
    with pytest.raises(LaunchError):
        run_foreground(tmp_path, None)
    assert runs.read_text().count("run") == 1  # it never served: no restart
