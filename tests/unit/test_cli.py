"""The `uip` command: errors are one paragraph without a traceback; repo check's exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from uip.core.paths import PROJECT_ROOT

GOLDEN = Path(__file__).parents[1] / "golden"
UIP = [sys.executable, "-c", "from uip.cli import main; main()"]


def _uip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*UIP, *args], capture_output=True, text=True, cwd=PROJECT_ROOT)


def test_repo_build_then_check(tmp_path):
    out = tmp_path / "repo"
    r = _uip("repo", "build", "--specs", str(GOLDEN / "specs"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "demo" / "config.pbtxt").is_file()
    r = _uip("repo", "check", "--specs", str(GOLDEN / "specs"), "--repository", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    (out / "demo_pre" / "config.pbtxt").write_text("name: 'changed'\n")
    r = _uip("repo", "check", "--specs", str(GOLDEN / "specs"), "--repository", str(out))
    assert r.returncode == 1
    assert "+name: \"demo_pre\"" in r.stdout
    assert "differs" in r.stderr


def test_invalid_spec_is_one_message_without_traceback(tmp_path):
    data = yaml.safe_load((GOLDEN / "specs" / "demo.yaml").read_text())
    data["assembly"] = "chain"
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(data))
    r = _uip("repo", "build", "--specs", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "demo.yaml" in r.stderr and "assembly" in r.stderr and "'orchestrator'" in r.stderr


def test_serve_missing_repository_is_clear(tmp_path):
    r = _uip("serve", "--model-repository", str(tmp_path / "none"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "does not exist" in r.stderr


def test_serve_fails_clearly_when_a_model_fails_to_load(tmp_path):
    """A real tritonserver run on a repository whose model cannot import."""
    spec = {"name": "broken", "assembly": "mono", "models": [{
        "name": "broken", "handler": "uip.no_such_module:Nope",
        "inputs": [{"name": "x", "dtype": "FP32", "dims": [1]}],
        "outputs": [{"name": "y", "dtype": "FP32", "dims": [1]}]}]}
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "broken.yaml").write_text(yaml.safe_dump(spec))
    repo = tmp_path / "repo"
    assert _uip("repo", "build", "--specs", str(tmp_path / "specs"), "--out", str(repo)
                ).returncode == 0
    from uip.launch.command import free_port

    ports = [str(free_port()) for _ in range(4)]
    r = subprocess.run(
        [*UIP, "serve", "--model-repository", str(repo), "--http-port", ports[0],
         "--grpc-port", ports[1], "--metrics-port", ports[2], "--gateway-port", ports[3]],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=180)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "model 'broken' failed to load" in r.stderr
    assert "no_such_module" in r.stderr
