"""Unit tests run without a server: the Triton ring imports the stand-in pb_utils."""

import pytest
from support import fake_pb_utils

fake_pb_utils.install()


def _artifact(name: str):
    from uip import artifacts
    from uip.core.paths import artifacts_root

    artifacts.ensure([name])  # built once (offline, deterministic) on a fresh clone
    return artifacts_root() / name


@pytest.fixture(scope="session")
def llm_tiny_dir():
    """artifacts/llm-tiny (transformers model + tokenizer)."""
    return _artifact("llm-tiny")


@pytest.fixture(scope="session")
def sd_tiny_dir():
    """artifacts/sd-tiny (a diffusers StableDiffusionPipeline folder)."""
    return _artifact("sd-tiny")
