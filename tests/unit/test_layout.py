"""The rings of docs/CONVENTIONS.md hold, and the import contracts really catch a back-edge.

`lint-imports` runs on a copy of the package with one bad import added: each contract must
report it. Deleting a contract from pyproject.toml fails `test_contracts_are_declared`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from uip.core.paths import PROJECT_ROOT

LINT = Path(sys.executable).with_name("lint-imports")
CONTRACTS = {"rings", "pure-domain", "stub-only"}


def lint(package_root: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    return subprocess.run([str(LINT), "--no-cache", str(config)], capture_output=True, text=True,
                          cwd=package_root, env=env)


def test_contracts_are_declared():
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    got = {c["id"]: c for c in config["contracts"]}
    assert set(got) == CONTRACTS
    assert got["rings"]["layers"][-1] == "core"
    assert "triton_python_backend_utils" in got["pure-domain"]["forbidden_modules"]
    assert "tritonclient" in got["pure-domain"]["forbidden_modules"]
    assert "uip.triton" in got["stub-only"]["forbidden_modules"]


def test_the_tree_keeps_every_contract():
    out = lint(PROJECT_ROOT / "python_backends", PROJECT_ROOT / "pyproject.toml")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("module, line, broken", [
    ("llm/engine.py", "import triton_python_backend_utils", "pure-domain"),
    ("sd/loop.py", "import tritonclient.grpc", "pure-domain"),
    ("core/settings.py", "from uip.llm import engine", "rings"),
    ("llm/preprocess.py", "from uip.triton import runtimes", "rings"),
    ("bench/report.py", "from uip.triton import runtimes", "stub-only"),
])
def test_a_back_edge_fails(tmp_path, module, line, broken):
    shutil.copytree(PROJECT_ROOT / "python_backends" / "uip", tmp_path / "uip",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "uip" / module, "a") as f:
        f.write(f"\n{line}  # noqa\n")
    out = lint(tmp_path, tmp_path / "pyproject.toml")
    assert out.returncode != 0
    names = {"rings": "Rings:", "pure-domain": "Core and domain", "stub-only": "Only the Triton"}
    broken_lines = [ln for ln in out.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(names[broken]) for ln in broken_lines), out.stdout
