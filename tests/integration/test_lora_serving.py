"""LoRA through the real tritonserver (this module's own server on the LLM specs, with
llm_engine's lora_dir a temporary folder): llm_engine's greedy tokens with an adapter equal
the PEFT-merged model's `generate`; one batch mixing two adapters and the base model; an
adapter copied into the directory while the server runs is served on its next request; llm_bls
and the `llm` ensemble take `lora_name`; unknown adapters are INVALID_ARG naming them; `uip
lora` control requests need the admin key; the gateway offers `llm_bls:<adapter>`."""

from __future__ import annotations

import copy
import queue
import shutil
import uuid

import pytest
import torch
import tritonclient.grpc as grpcclient
from conftest import start_test_server

from uip.artifacts import llm_tiny_lora
from uip.clients.llm import GenerateError, generate_grpc
from uip.clients.lora import LoraControlError, lora_control
from uip.clients.tensors import grpc_inputs
from uip.core.paths import DEFAULT_SPECS, artifacts_root
from uip.llm import engine_tensors
from uip.llm.engine import GenerationRequest
from uip.repo.render import build_repository
from uip.spec.schema import DeploymentSpec, load_spec

N = 10
TEXTS = ["Hello world", "def main():\n    return 0"]
TAG = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def server(tmp_path_factory, lora_dir):
    """llm, llm_bls and their parts only, llm_engine's lora_dir = `lora_dir`."""
    folder = tmp_path_factory.mktemp("lora-server")
    specs = []
    for name in ("llm.yaml", "llm_bls.yaml"):
        data = copy.deepcopy(load_spec(DEFAULT_SPECS / name).model_dump())
        for m in data["models"]:
            if m["name"] == "llm_engine":
                m["parameters"]["lora_dir"] = str(lora_dir)
        specs.append(DeploymentSpec.model_validate(data))
    build_repository(specs, folder / "repo")
    srv = start_test_server(folder / "repo", folder)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def adapters(server, lora_dir, tmp_path_factory):
    """Adapter names ('alpha' installed before the first request, 'beta' copied in by a
    test), the built folders, the deployment's adapter directory."""
    dest = tmp_path_factory.mktemp("lora-built")
    folders = {f.name: f for f in llm_tiny_lora.build(dest, artifacts_root() / "llm-tiny")}
    names = {k: f"{k}-{TAG}" for k in folders}
    shutil.copytree(folders["alpha"], lora_dir / names["alpha"])
    return names, folders, lora_dir


@pytest.fixture(scope="module")
def prompts():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(artifacts_root() / "llm-tiny")
    return [tok(t)["input_ids"] for t in TEXTS]


def reference(folder, prompt: list[int]) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(artifacts_root() / "llm-tiny")
    if folder is not None:
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    with torch.no_grad():
        out = model.eval().generate(torch.tensor([prompt]), max_new_tokens=N, do_sample=False)
    return out[0, len(prompt):].tolist()


def engine_tokens(url: str, requests: list[tuple[list[int], str | None]]) -> list[list[int]]:
    """All requests in flight at once on one gRPC stream; each one's generated tokens."""
    client = grpcclient.InferenceServerClient(url)
    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    try:
        for i, (prompt, lora) in enumerate(requests):
            req = GenerationRequest(input_ids=prompt, max_new_tokens=N, streaming=False,
                                    lora_name=lora)
            client.async_stream_infer("llm_engine", grpc_inputs(engine_tensors.encode_request(req)),
                                      request_id=str(i))
        out: dict[int, list[int]] = {}
        while len(out) < len(requests):
            result, error = events.get(timeout=120)
            if error is not None:
                raise GenerateError(str(error))
            out[int(result.get_response().id)] = [
                int(t) for t in result.as_numpy("output_ids").reshape(-1)]
        return [out[i] for i in range(len(requests))]
    finally:
        client.stop_stream()
        client.close()


def test_adapter_equals_peft_merged_and_mixes_with_base(server, adapters, prompts):
    names, folders, _ = adapters
    plan = [(p, a) for p in prompts for a in (None, "alpha")]
    got = engine_tokens(server.grpc_url, [(p, a and names[a]) for p, a in plan])
    want = [reference(folders[a] if a else None, p) for p, a in plan]
    assert got == want
    assert got[0] != got[1]


def test_adapter_copied_in_is_served_next_request(server, adapters, prompts):
    names, folders, lora_dir = adapters
    with pytest.raises(GenerateError, match=f"unknown LoRA adapter '{names['beta']}'"):
        engine_tokens(server.grpc_url, [(prompts[0], names["beta"])])
    shutil.copytree(folders["beta"], lora_dir / names["beta"])
    mixed = engine_tokens(server.grpc_url, [(prompts[0], names["beta"]), (prompts[0], None),
                                            (prompts[0], names["alpha"])])
    assert mixed[0] == reference(folders["beta"], prompts[0])
    assert len({tuple(t) for t in mixed}) == 3


@pytest.mark.parametrize("model", ["llm_bls", "llm"])
def test_text_models_take_lora_name(server, adapters, model):
    names, _, _ = adapters
    kw = dict(max_tokens=N, request_id=uuid.uuid4().hex)
    base = generate_grpc(server.grpc_url, model, TEXTS[0], **kw).text
    alpha = generate_grpc(server.grpc_url, model, TEXTS[0], lora_name=names["alpha"], **kw).text
    assert alpha != base
    assert alpha == generate_grpc(server.grpc_url, "llm_bls", TEXTS[0],
                                  lora_name=names["alpha"], max_tokens=N).text
    with pytest.raises(GenerateError, match="nope-"):
        generate_grpc(server.grpc_url, model, TEXTS[0], lora_name=f"nope-{TAG}", **kw)


def test_lora_control_needs_the_admin_key(server, adapters):
    names, _, _ = adapters
    with pytest.raises(LoraControlError, match="admin key"):
        lora_control(server.grpc_url, "list", key="wrong")
    status = lora_control(server.grpc_url, "list", key=server.admin_key)
    assert names["alpha"] in status["available"]
    status = lora_control(server.grpc_url, "load", names["alpha"], key=server.admin_key)
    assert names["alpha"] in {a["name"] for a in status["loaded"]}
    status = lora_control(server.grpc_url, "unload", names["alpha"], key=server.admin_key)
    assert names["alpha"] not in {a["name"] for a in status["loaded"]}


def test_gateway_offers_adapters_as_model_ids(server, adapters, tmp_path_factory):
    import openai
    import yaml
    from support.gateway import GatewayProcess

    from uip.gateway.spec import DEFAULT_GATEWAY_SPEC

    names, _, lora_dir = adapters
    folder = tmp_path_factory.mktemp("lora-gateway")
    spec = yaml.safe_load(DEFAULT_GATEWAY_SPEC.read_text())
    spec["triton"]["llm_bls"]["lora_dir"] = str(lora_dir)
    (folder / "gateway.yaml").write_text(yaml.safe_dump(spec))
    gw = GatewayProcess(server.grpc_url, f"sqlite:///{folder / 'gateway.db'}",
                        folder / "gateway.log", folder / "gateway.yaml").start()
    try:
        client = openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0,
                               timeout=120)
        model = f"llm_bls:{names['alpha']}"
        assert model in {m.id for m in client.models.list()}
        out = client.completions.create(model=model, prompt=TEXTS[0], max_tokens=N)
        assert out.choices[0].text == generate_grpc(
            server.grpc_url, "llm_bls", TEXTS[0], lora_name=names["alpha"], max_tokens=N).text
        with pytest.raises(openai.BadRequestError, match=f"nope-{TAG}"):
            client.completions.create(model=f"llm_bls:nope-{TAG}", prompt="x", max_tokens=2)
    finally:
        gw.stop()
