"""Rendering specs into config.pbtxt (golden files) and `repo check`'s diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uip.core.paths import DEFAULT_REPOSITORY, DEFAULT_SPECS
from uip.repo.render import build_repository, diff_repository
from uip.spec.schema import load_specs

GOLDEN = Path(__file__).parents[1] / "golden"


@pytest.fixture
def rendered(tmp_path) -> Path:
    build_repository(load_specs(GOLDEN / "specs"), tmp_path)
    return tmp_path


@pytest.mark.parametrize("model", ["demo_pre", "demo_gen", "demo"])
def test_golden_config(rendered, model):
    got = (rendered / model / "config.pbtxt").read_text()
    golden = GOLDEN / "repository" / model / "config.pbtxt"
    if os.environ.get("UIP_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(got)
    assert got == golden.read_text()


def test_shim_is_two_lines(rendered):
    shim = (rendered / "demo_pre" / "1" / "model.py").read_text().splitlines()
    assert len(shim) == 2
    assert shim[1].startswith("from demo.pre import Pre as TritonPythonModel")
    assert (rendered / "demo" / "1").is_dir()
    assert not (rendered / "demo" / "1" / "model.py").exists()


def test_rendered_config_is_valid_protobuf_text(rendered):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = text_format.Parse((rendered / "demo_gen" / "config.pbtxt").read_text(),
                            mc.ModelConfig())
    assert cfg.model_transaction_policy.decoupled
    assert cfg.input[1].optional
    assert cfg.parameters["artifact"].string_value == "/abs/demo"


def test_checked_in_repository_matches_specs():
    assert diff_repository(load_specs(DEFAULT_SPECS), DEFAULT_REPOSITORY) == ""


def test_check_reports_a_difference(tmp_path):
    specs = load_specs(GOLDEN / "specs")
    build_repository(specs, tmp_path)
    cfg = tmp_path / "demo_pre" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_batch_size: 8", "max_batch_size: 9"))
    (tmp_path / "stray" ).mkdir()
    (tmp_path / "stray" / "config.pbtxt").write_text("name: 'stray'\n")
    diff = diff_repository(specs, tmp_path)
    assert "-max_batch_size: 9" in diff and "+max_batch_size: 8" in diff
    assert "stray/config.pbtxt" in diff


def test_llm_bls_holding_the_engine_takes_its_control_request():
    """engine_transport local: llm_engine's lora_control input (optional) and lora_status
    output are rendered on llm_bls (once, even when its spec declares them); not by default."""
    from uip.repo.render import ENGINE_CONTROL_INPUT, ENGINE_CONTROL_OUTPUT, model_config
    from uip.spec.schema import load_spec

    (bls,) = load_spec(DEFAULT_SPECS / "llm_bls.yaml").models

    def tensors(m):
        cfg = model_config(m)
        return [t.name for t in cfg.input], [t.name for t in cfg.output], cfg

    ins, outs, _ = tensors(bls)
    assert "lora_control" not in ins and "lora_status" not in outs
    local = bls.model_copy(update={"parameters": {**bls.parameters,
                                                  "engine_transport": "local"}})
    ins, outs, cfg = tensors(local)
    assert ins == [t.name for t in bls.inputs] + ["lora_control"]
    assert outs == [t.name for t in bls.outputs] + ["lora_status"]
    assert cfg.input[-1].optional and cfg.output[-1].data_type == cfg.input[-1].data_type
    declared = local.model_copy(update={"inputs": [*bls.inputs, ENGINE_CONTROL_INPUT],
                                        "outputs": [*bls.outputs, ENGINE_CONTROL_OUTPUT]})
    assert tensors(declared)[:2] == (ins, outs)
