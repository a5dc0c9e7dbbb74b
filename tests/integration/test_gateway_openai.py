"""The OpenAI-compatible gateway over the real tritonserver, driven by the `openai` SDK.

Chat and completions equal transformers' greedy `generate` on the chat-templated prompt,
streamed and not; embeddings equal the `embedding` model's vectors; an image equals
`stable_diffusion`'s for the same seed; errors are OpenAI-shaped 4xx; a client that drops a
stream frees its engine slot; external models and fallbacks route as the spec says.
"""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from support.gateway_fixtures import (  # noqa: F401
    engine_idle,
    llm_reference,
    metric,
    start_gateway,
)

from uip.clients.sd import infer_inputs

N = 12
MESSAGES = [{"role": "system", "content": "You are brief."},
            {"role": "user", "content": "Hello world, café 東京"}]


@pytest.fixture(scope="module")
def gw(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway")
    proc = start_gateway(server, folder, f"sqlite:///{folder / 'gateway.db'}")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(gw):
    return openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0, timeout=120)


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert {"llm_bls", "llm", "embedding", "stable_diffusion", "tiny-chat"} <= ids
    assert client.models.retrieve("tiny-chat").id == "tiny-chat"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.parametrize("model", ["llm_bls", "llm", "tiny-chat"])
def test_chat_greedy_equals_transformers(client, llm_reference, model):  # noqa: F811
    want, n_prompt, ids, eos = llm_reference(MESSAGES, N)
    out = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=N)
    assert out.object == "chat.completion" and out.model == model
    assert out.choices[0].message.content == want
    assert out.choices[0].finish_reason == ("stop" if ids[-1] == eos else "length")
    assert out.usage.prompt_tokens == n_prompt
    assert out.usage.completion_tokens == len(ids)
    assert out.usage.total_tokens == n_prompt + len(ids)


def test_chat_stream_equals_transformers(client, llm_reference):  # noqa: F811
    want, n_prompt, ids, _ = llm_reference(MESSAGES, N)
    chunks = list(client.chat.completions.create(
        model="llm_bls", messages=MESSAGES, max_completion_tokens=N, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] in ("stop", "length") and not any(finals[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ids)
    assert chunks[-1].usage.prompt_tokens == n_prompt
    # without include_usage: no usage chunk
    plain = list(client.chat.completions.create(model="llm_bls", messages=MESSAGES,
                                                max_tokens=N, stream=True))
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)


def test_sse_ends_with_done(gw):
    body = {"model": "llm_bls", "messages": MESSAGES, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


@pytest.mark.parametrize("stream", [False, True])
def test_completions_equal_transformers(client, llm_reference, stream):  # noqa: F811
    prompt = "the cache is"
    want, n_prompt, ids, _ = llm_reference(prompt, N)
    out = client.completions.create(model="llm_bls", prompt=prompt, max_tokens=N,
                                    stream=stream)
    if stream:
        chunks = list(out)
        assert "".join(c.choices[0].text for c in chunks) == want
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    else:
        assert out.choices[0].text == want
        assert out.usage.prompt_tokens == n_prompt
        assert out.usage.completion_tokens == len(ids)


def test_stop_seed_and_sampling(client, llm_reference):  # noqa: F811
    want, *_ = llm_reference(MESSAGES, N)
    stop = want[4:8]
    out = client.chat.completions.create(model="llm_bls", messages=MESSAGES, max_tokens=N,
                                         stop=[stop])
    assert out.choices[0].message.content == want[:want.find(stop)]
    assert out.choices[0].finish_reason == "stop"
    kw = dict(model="llm_bls", messages=MESSAGES, max_tokens=16, temperature=1.0, top_p=0.9)
    a, b, c = (client.chat.completions.create(seed=s, **kw).choices[0].message.content
               for s in (7, 7, 8))
    assert a == b and a != c


def test_n_choices(client, llm_reference):  # noqa: F811
    want, n_prompt, ids, _ = llm_reference(MESSAGES, N)
    out = client.chat.completions.create(model="llm_bls", messages=MESSAGES, max_tokens=N, n=3)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert all(c.message.content == want for c in out.choices)  # greedy: the same each time
    assert out.usage.prompt_tokens == n_prompt  # the prompt once, every choice's tokens
    assert out.usage.completion_tokens == 3 * len(ids)
    # sampled: choice i uses seed + i, streamed or not
    kw = dict(model="llm_bls", messages=MESSAGES, max_tokens=12, temperature=1.0)
    two = client.chat.completions.create(seed=40, n=2, **kw)
    single = client.chat.completions.create(seed=41, **kw).choices[0].message.content
    texts = [c.message.content for c in two.choices]
    assert texts[1] == single and texts[0] != texts[1]
    chunks = list(client.chat.completions.create(
        seed=40, n=2, stream=True, stream_options={"include_usage": True}, **kw))
    streamed = ["".join(c.choices[0].delta.content or "" for c in chunks
                        if c.choices and c.choices[0].index == i) for i in (0, 1)]
    assert streamed == texts
    for i in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
        assert mine[0].delta.role == "assistant" and mine[-1].finish_reason is not None
    assert chunks[-1].usage.completion_tokens == two.usage.completion_tokens
    # completions: n choices of the prompt, echoed if asked
    comp = client.completions.create(model="llm_bls", prompt="the cache is", max_tokens=N,
                                     n=2, echo=True)
    plain, *_ = llm_reference("the cache is", N)
    assert [c.text for c in comp.choices] == ["the cache is" + plain] * 2


def _error(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def test_errors_are_openai_shaped_4xx(gw):
    url = gw.base_url
    chat = {"model": "llm_bls", "messages": MESSAGES}
    post = httpx.post
    _error(post(f"{url}/chat/completions", json={**chat, "n": 9}), 400, "n")  # max_choices
    _error(post(f"{url}/completions", json={"model": "llm_bls", "prompt": "x", "n": 9}), 400,
           "n")
    _error(post(f"{url}/chat/completions", json={**chat, "max_tokens": "many"}), 400,
           "max_tokens")
    _error(post(f"{url}/chat/completions", json={**chat, "temperature": -1}), 400,
           "temperature")
    _error(post(f"{url}/chat/completions", json={"model": "llm_bls"}), 400, "messages")
    _error(post(f"{url}/chat/completions", content=b"{not json",
                headers={"content-type": "application/json"}), 400)
    err = _error(post(f"{url}/chat/completions", json={**chat, "model": "nope"}), 404, "model")
    assert err["code"] == "model_not_found"
    _error(post(f"{url}/chat/completions", json={**chat, "model": "embedding"}), 400, "model")
    _error(post(f"{url}/chat/completions", json={**chat, "max_tokens": 5000}), 400,
           "max_tokens")  # limits.max_tokens of the gateway spec
    # refused by llm_bls itself (INVALID_ARG: over the context) -> 400, streamed or not
    long = [{"role": "user", "content": "word " * 2100}]
    for stream in (False, True):
        err = _error(post(f"{url}/chat/completions", json={
            **chat, "messages": long, "max_tokens": 8, "stream": stream}), 400)
        assert "context" in err["message"], err
    _error(post(f"{url}/embeddings", json={"model": "embedding", "input": []}), 400, "input")
    _error(post(f"{url}/images/generations", json={"prompt": "x", "size": "9999x64"}), 400,
           "size")
    _error(httpx.get(f"{url}/no/such/route"), 404)


def test_embeddings_equal_the_embedding_model(server, client):
    texts = ["The quick brown fox.", "Ünïcödé façade — naïve café 東京 😀"]
    triton = grpcclient.InferenceServerClient(server.grpc_url)
    want = []
    for t in texts:
        inp = grpcclient.InferInput("text_input", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[t.encode()]], dtype=object))
        want.append(triton.infer("embedding", [inp]).as_numpy("embedding")[0])
    for fmt in ("float", "base64"):
        out = client.embeddings.create(model="embedding", input=texts, encoding_format=fmt)
        got = []
        for d in out.data:
            v = d.embedding
            got.append(np.frombuffer(base64.b64decode(v), "<f4") if isinstance(v, str)
                       else np.array(v, np.float32))
        # batched with each other by Triton: equal up to float rounding
        np.testing.assert_allclose(np.stack(got), np.stack(want), atol=2e-6, err_msg=fmt)
        assert out.usage.prompt_tokens > len(texts)
    sdk_default = client.embeddings.create(model="embedding", input=texts[0])  # SDK: base64
    np.testing.assert_allclose(np.array(sdk_default.data[0].embedding), want[0], atol=2e-6)


def test_image_equals_stable_diffusion(server, client):
    prompt, opts = "a red castle", dict(steps=4, seed=1234, height=64, width=64)
    out = client.images.generate(model="stable_diffusion", prompt=prompt, size="64x64",
                                 response_format="b64_json",
                                 extra_body={"steps": 4, "seed": 1234})
    got = np.array(Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json))))
    triton = grpcclient.InferenceServerClient(server.grpc_url)
    want = triton.infer("stable_diffusion", infer_inputs(grpcclient, prompt, **opts)
                        ).as_numpy("image")[0]
    assert got.shape == (64, 64, 3) and np.array_equal(got, want)


def test_external_model_and_fallback(client, llm_reference):  # noqa: F811
    want, *_ = llm_reference(MESSAGES, N)
    for model in ("self-external", "unreachable"):
        out = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=N)
        assert out.choices[0].message.content == want and out.model == model, model
        chunks = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=N,
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want


@pytest.mark.parametrize("n", [1, 2])
def test_disconnect_frees_the_engine_slot(server, gw, n):
    assert engine_idle(server, 10), "requests of earlier tests still run"
    tokens_before = metric(server, "uip_llm_tokens_generated_total")
    body = {"model": "llm_bls", "messages": MESSAGES, "max_tokens": 1000, "stream": True,
            "n": n}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
        t0 = time.monotonic()
        while metric(server, "uip_llm_active_sequences") < n:
            assert time.monotonic() - t0 < 3, "the stream is not in the active gauge"
            time.sleep(0.02)
    # the client hung up: the gateway cancels its gRPC stream, llm_bls frees the slot
    assert engine_idle(server, 5), "the engine still runs the abandoned request"
    generated = metric(server, "uip_llm_tokens_generated_total") - tokens_before
    assert generated < 500 * n, f"{generated} tokens: the cancel did not stop the engine early"
