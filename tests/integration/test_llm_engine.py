"""`llm_engine` through the real tritonserver (gRPC streaming) vs transformers `generate`."""

from __future__ import annotations

import queue
import time
from collections import defaultdict

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from uip.clients import metrics
from uip.core.paths import artifacts_root
from uip.llm.engine_tensors import to_word_list

MODEL = "llm_engine"
TEXTS = ["Hello world", "café 東京 😀 naïve", "def main():\n    return 0", "server latency"]
N = 12


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(artifacts_root() / "llm-tiny")


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(artifacts_root() / "llm-tiny",
                                                 attn_implementation="sdpa")
    return model.eval()


def generate(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def _input(name: str, arr: np.ndarray, dtype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


def inputs(ids: list[int], n: int, streaming: bool = True, **extra) -> list:
    out = [
        _input("input_ids", np.array([ids], dtype=np.int32), "INT32"),
        _input("input_lengths", np.array([[len(ids)]], dtype=np.int32), "INT32"),
        _input("request_output_len", np.array([[n]], dtype=np.int32), "INT32"),
        _input("streaming", np.array([[streaming]], dtype=bool), "BOOL"),
    ]
    types = {"stop": ("BOOL", bool), "temperature": ("FP32", np.float32),
             "random_seed": ("UINT64", np.uint64), "end_id": ("INT32", np.int32)}
    for name, value in extra.items():
        if name in ("stop_words_list", "bad_words_list"):
            out.append(_input(name, value, "INT32"))
        else:
            dtype, np_type = types[name]
            out.append(_input(name, np.array([[value]], dtype=np_type), dtype))
    return out


class Stream:
    """One gRPC stream; responses routed by request id."""

    def __init__(self, url: str):
        self.client = grpcclient.InferenceServerClient(url)
        self.q: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.q.put((result, error)))
        self.by_id: dict[str, list] = defaultdict(list)
        self.done: set[str] = set()
        self._n = 0

    def send(self, ids: list[int], n: int, request_id: str | None = None, **kw) -> str:
        self._n += 1
        rid = request_id or f"r{self._n}"
        self.client.async_stream_infer(MODEL, inputs(ids, n, **kw), request_id=rid)
        return rid

    def pump(self, timeout: float = 30.0) -> None:
        result, error = self.q.get(timeout=timeout)
        if error is not None:
            raise error
        resp = result.get_response()
        self.by_id[resp.id].append(result)
        if resp.parameters["triton_final_response"].bool_param:
            self.done.add(resp.id)

    def wait(self, rid: str, timeout: float = 60.0) -> list:
        deadline = time.monotonic() + timeout
        while rid not in self.done:
            self.pump(max(0.1, deadline - time.monotonic()))
        return self.by_id[rid]

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def tokens(responses: list) -> list[int]:
    return [int(t) for r in responses for t in r.as_numpy("output_ids").reshape(-1)]


def finish(responses: list) -> str:
    return responses[-1].as_numpy("finish_reason").reshape(-1)[0].decode()


def metric(server, name: str) -> float:
    """`name` of llm_engine (one series); the test fails when it is not exported."""
    found = metrics.select(metrics.fetch(server.metrics_url, timeout=5), name, model=MODEL)
    assert found, f"metric {name} not exported for {MODEL}"
    return found[0].value


def test_streaming_equals_generate(server, tokenizer, reference):
    stream = Stream(server.grpc_url)
    try:
        prompts = [tokenizer(t)["input_ids"] for t in TEXTS]
        rids = [stream.send(p, N, streaming=i % 2 == 0) for i, p in enumerate(prompts)]
        for i, (p, rid) in enumerate(zip(prompts, rids, strict=True)):
            got = stream.wait(rid)
            want = generate(reference, p, N)
            assert tokens(got) == want, f"prompt {i}"
            if i % 2 == 0:  # streaming: a response per step (steps ready together merge)
                assert 1 < len(got) <= N
                assert [int(r.as_numpy("sequence_length")[0, 0]) for r in got] == [
                    r.as_numpy("output_ids").shape[-1] for r in got]
            else:  # non-streaming: exactly one response
                assert len(got) == 1 and int(got[0].as_numpy("sequence_length")[0, 0]) == N
            assert finish(got) == "length"
            assert got[-1].as_numpy("output_ids").shape[:2] == (1, 1)  # batch 1, beam 1
    finally:
        stream.close()


def test_cancel_frees_the_sequence(server, tokenizer, reference):
    ids = tokenizer(TEXTS[0])["input_ids"]
    stream = Stream(server.grpc_url)
    rid = stream.send(ids, 1000)
    while len(stream.by_id[rid]) < 3:
        stream.pump()
    deadline = time.monotonic() + 5  # the gauges are refreshed every 0.1 s
    while metric(server, "uip_llm_active_sequences") < 1:
        assert time.monotonic() < deadline, "the running sequence is not counted"
        time.sleep(0.02)
    assert metric(server, "uip_llm_kv_blocks_used") >= 1
    generated = metric(server, "uip_llm_tokens_generated_total")
    stream.close(cancel=True)
    deadline = time.monotonic() + 10
    while metric(server, "uip_llm_active_sequences") != 0:
        assert time.monotonic() < deadline, "the cancelled sequence stayed active"
        time.sleep(0.1)
    assert metric(server, "uip_llm_kv_blocks_used") == 0
    # stopped early: far fewer than the 1000 tokens asked for
    assert metric(server, "uip_llm_tokens_generated_total") - generated < 500
    # the next request is served normally
    stream = Stream(server.grpc_url)
    try:
        got = stream.wait(stream.send(ids, 4))
        assert tokens(got) == generate(reference, ids, 4) and finish(got) == "length"
    finally:
        stream.close()


def test_stop_request_cancels_the_request_with_that_id(server, tokenizer):
    ids = tokenizer(TEXTS[1])["input_ids"]
    stream = Stream(server.grpc_url)
    try:
        stream.send(ids, 1000, request_id="to-stop")
        while len(stream.by_id["to-stop"]) < 2:
            stream.pump()
        stream.send([0], 1, request_id="to-stop", stop=True)
        # both requests share the id: the stop request's empty response and the cancelled
        # request's final one
        deadline = time.monotonic() + 10
        while sum(finish([r]) == "cancelled" for r in stream.by_id["to-stop"]) < 2:
            assert time.monotonic() < deadline, "no cancelled response"
            stream.pump()
        assert len(tokens(stream.by_id["to-stop"])) < 200
    finally:
        stream.close()


def test_sampling_with_a_seed_is_reproducible(server, tokenizer):
    ids = tokenizer(TEXTS[2])["input_ids"]
    stream = Stream(server.grpc_url)
    try:
        runs = [tokens(stream.wait(stream.send(ids, N, temperature=0.9, random_seed=seed)))
                for seed in (7, 7, 8)]
        assert runs[0] == runs[1] and runs[0] != runs[2]
    finally:
        stream.close()


def test_stop_words_and_end_id(server, tokenizer, reference):
    ids = tokenizer(TEXTS[3])["input_ids"]
    ref = generate(reference, ids, N)
    stream = Stream(server.grpc_url)
    try:
        got = stream.wait(stream.send(ids, N, stop_words_list=to_word_list([ref[3:5]])))
        end = next(e for e in range(2, N + 1) if ref[e - 2:e] == ref[3:5])
        assert tokens(got) == ref[:end] and finish(got) == "stop"
        got = stream.wait(stream.send(ids, N, end_id=ref[2]))
        assert tokens(got) == ref[:ref.index(ref[2]) + 1] and finish(got) == "stop"
        got = stream.wait(stream.send(ids, N, bad_words_list=to_word_list([[ref[0]]])))
        assert tokens(got)[0] != ref[0] and len(tokens(got)) == N
    finally:
        stream.close()


@pytest.mark.parametrize("ids, n, message", [
    ([], 4, "empty"),
    ([1, 2], 0, ">= 1"),
    ([1, 2], 1025, "limits.max_tokens"),
    ([5] * 1500, 1000, "limits.max_context"),
    ([10**6], 4, "vocabulary"),
])
def test_invalid_requests_get_invalid_arg(server, ids, n, message):
    stream = Stream(server.grpc_url)
    try:
        stream.client.async_stream_infer(MODEL, inputs(ids, n))
        result, error = stream.q.get(timeout=30)
        assert result is None and error is not None
        assert message in error.message()
    finally:
        stream.close()
    assert server.ready()


def test_tokens_generated_counter_grows(server, tokenizer):
    before = metric(server, "uip_llm_tokens_generated_total")
    stream = Stream(server.grpc_url)
    try:
        stream.wait(stream.send(tokenizer(TEXTS[0])["input_ids"], 5))
    finally:
        stream.close()
    deadline = time.monotonic() + 5
    while metric(server, "uip_llm_tokens_generated_total") < before + 5:
        assert time.monotonic() < deadline
        time.sleep(0.1)
