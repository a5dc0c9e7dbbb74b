"""Unit tests run without a server: the Triton ring imports the stand-in pb_utils."""

import support.interpreter  # noqa: F401 - first: Triton's interpreter mode on a CPU

# isort: split
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


@pytest.fixture(scope="session")
def sdxl_tiny_dir():
    """artifacts/sdxl-tiny (a diffusers StableDiffusionXLPipeline folder)."""
    return _artifact("sdxl-tiny")


@pytest.fixture(scope="session")
def llm_tiny_lora_dir(llm_tiny_dir, tmp_path_factory):
    """An adapter directory with PEFT LoRA adapters `alpha` (rank 4) and `beta` (rank 8) of
    llm-tiny (build_scripts/build_llm_tiny_lora.py)."""
    from uip.artifacts import llm_tiny_lora

    dest = tmp_path_factory.mktemp("lora")
    llm_tiny_lora.build(dest, llm_tiny_dir)
    return dest
