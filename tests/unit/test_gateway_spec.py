"""specs/gateway.yaml: the checked-in spec loads; a wrong one fails naming file and field."""

from __future__ import annotations

import pytest
import yaml

from uip.gateway.routing import Router
from uip.gateway.spec import DEFAULT_GATEWAY_SPEC, GatewaySpecError, load_gateway_spec


def _load(tmp_path, data):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_gateway_spec(path)


BASE = {"triton": {"llm_bls": {"kind": "llm", "tokenizer": "llm-tiny"},
                   "embedding": {"kind": "embedding"}}}


def test_default_spec_loads():
    spec = load_gateway_spec(DEFAULT_GATEWAY_SPEC)
    assert spec.kind_of("tiny-chat") == "llm" and spec.kind_of("stable_diffusion") == "image"


@pytest.mark.parametrize(("models", "where"), [
    ({"a": {"triton": "nope"}}, "models.a.triton"),
    ({"a": {"triton": "llm_bls", "external": {"base_url": "http://x"}}}, "exactly one"),
    ({"a": {"external": {"base_url": "ftp://x"}}}, "models.a.external.base_url"),
    ({"a": {"triton": "llm_bls", "fallbacks": ["zzz"]}}, "models.a.fallbacks"),
    ({"a": {"triton": "llm_bls", "fallbacks": ["b"]},
      "b": {"triton": "llm_bls", "fallbacks": ["a"]}}, "cycle"),
    ({"a": {"triton": "llm_bls", "extra": 1}}, "models.a.extra"),
])
def test_bad_spec_names_the_field(tmp_path, models, where):
    with pytest.raises(GatewaySpecError) as e:
        _load(tmp_path, {**BASE, "models": models})
    assert "gateway.yaml" in str(e.value) and where in str(e.value)


def test_bad_limit_names_the_field(tmp_path):
    with pytest.raises(GatewaySpecError, match="limits.max_stop"):
        _load(tmp_path, {**BASE, "limits": {"max_stop": -1}})


def test_fallbacks_in_order_and_kinds(tmp_path):
    spec = _load(tmp_path, {**BASE, "models": {
        "ext": {"external": {"base_url": "https://api.example/v1"},
                "fallbacks": ["alias", "llm_bls"]},
        "alias": {"triton": "llm_bls"}}})
    targets = Router(spec).targets("ext", "llm")
    assert [t.model_id for t in targets] == ["ext", "alias", "llm_bls"]
    assert targets[0].external is not None and targets[1].triton == "llm_bls"
    from uip.gateway.errors import ApiError

    with pytest.raises(ApiError) as e:
        Router(spec).targets("embedding", "llm")
    assert e.value.status == 400
    with pytest.raises(ApiError) as e:
        Router(spec).targets("missing", "llm")
    assert e.value.status == 404


def test_llm_needs_a_tokenizer(tmp_path):
    with pytest.raises(GatewaySpecError, match="triton.x: .*tokenizer"):
        _load(tmp_path, {"triton": {"x": {"kind": "llm"}}})


def test_lora_model_ids_route_to_their_base_with_the_adapter(tmp_path):
    from uip.gateway.errors import ApiError

    lora = {"triton": {"llm_bls": {"kind": "llm", "tokenizer": "llm-tiny", "lora_dir": "x"},
                       "llm": {"kind": "llm", "tokenizer": "llm-tiny"}}}
    router = Router(_load(tmp_path, lora))
    (target,) = router.targets("llm_bls:alpha", "llm")
    assert (target.triton, target.lora) == ("llm_bls", "alpha")
    assert router.targets("llm_bls", "llm")[0].lora is None
    with pytest.raises(ApiError) as e:  # no lora_dir: not an adapter id
        router.targets("llm:alpha", "llm")
    assert e.value.status == 404
