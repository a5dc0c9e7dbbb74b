"""Spec validation: good specs load, bad ones name the file, the field and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from uip.core.paths import DEFAULT_SPECS
from uip.spec.schema import SpecError, load_spec, load_specs

GOLDEN = Path(__file__).parents[1] / "golden"


def _write(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _mono(**model) -> dict:
    m = {"name": "m", "handler": "pkg.mod:Cls",
         "inputs": [{"name": "x", "dtype": "FP32", "dims": [4]}],
         "outputs": [{"name": "y", "dtype": "FP32", "dims": [4]}]}
    m.update(model)
    return {"name": "d", "assembly": "mono", "models": [m]}


def test_default_specs_load():
    specs = load_specs(DEFAULT_SPECS)
    names = {m.name for s in specs for m in s.models}
    assert "embedding" in names


def test_golden_ensemble_spec_loads():
    (spec,) = load_specs(GOLDEN / "specs")
    assert spec.assembly == "ensemble"
    assert [m.name for m in spec.models] == ["demo_pre", "demo_gen", "demo"]


def test_good_mono(tmp_path):
    spec = load_spec(_write(tmp_path, _mono()))
    assert spec.models[0].max_batch_size == 1
    assert spec.models[0].instances[0].kind == "cpu"


@pytest.mark.parametrize(
    ("change", "field", "allowed"),
    [
        ({"runtime": "onnx"}, "models[m].runtime", "'python', 'torch' or 'tensorrt_llm'"),
        ({"max_batch_size": -1}, "models[m].max_batch_size", "greater than or equal to 0"),
        ({"instances": [{"kind": "tpu"}]}, "models[m].instances[0].kind", "'cpu', 'gpu'"),
        ({"handler": "no_colon"}, "models[m].handler", "package.module:ClassName"),
        ({"inputs": [{"name": "x", "dtype": "FLOAT", "dims": [1]}]},
         "models[m].inputs[x].dtype", "'BOOL'"),
        ({"inputs": [{"name": "x", "dtype": "FP32", "dims": [0]}]},
         "models[m].inputs[x].dims", "-1 (variable)"),
        ({"unknown_field": 1}, "models[m].unknown_field", "Extra inputs are not permitted"),
        ({"instances": [{"kind": "cpu", "gpus": [0]}]}, "models[m].instances[0]",
         "only be set when kind is 'gpu'"),
    ],
)
def test_bad_field_is_named(tmp_path, change, field, allowed):
    path = _write(tmp_path, _mono(**change))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    msg = str(e.value)
    assert str(path) in msg
    assert field in msg
    assert allowed in msg


def test_bad_assembly(tmp_path):
    data = _mono()
    data["assembly"] = "pipeline"
    with pytest.raises(SpecError, match="'mono', 'ensemble' or 'orchestrator'"):
        load_spec(_write(tmp_path, data))


def test_mono_with_two_models_is_refused(tmp_path):
    data = _mono()
    data["models"].append(dict(data["models"][0], name="m2"))
    with pytest.raises(SpecError, match="exactly one python model"):
        load_spec(_write(tmp_path, data))


def test_not_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(p)


def test_ensemble_step_must_match_target_tensors(tmp_path):
    data = yaml.safe_load((GOLDEN / "specs" / "demo.yaml").read_text())
    data["models"][2]["steps"][0]["outputs"] = {"nope": "_ids"}
    _write(tmp_path, data, "demo.yaml")
    with pytest.raises(SpecError) as e:
        load_specs(tmp_path)
    assert "steps[demo_pre].outputs" in str(e.value) and "['ids']" in str(e.value)


def test_ensemble_step_unknown_model(tmp_path):
    data = yaml.safe_load((GOLDEN / "specs" / "demo.yaml").read_text())
    data["models"][2]["steps"][1]["model"] = "ghost"
    _write(tmp_path, data, "demo.yaml")
    with pytest.raises(SpecError, match="no spec defines model 'ghost'"):
        load_specs(tmp_path)


def test_duplicate_model_across_specs(tmp_path):
    _write(tmp_path, _mono(), "a.yaml")
    _write(tmp_path, _mono(), "b.yaml")
    with pytest.raises(SpecError, match="also defined in"):
        load_specs(tmp_path)
