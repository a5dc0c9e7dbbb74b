"""`embedding` through the real tritonserver vs sentence-transformers in-process."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import poll
from tritonclient.utils import InferenceServerException

from uip.core.paths import artifacts_root

LONG = " ".join(f"word{i} ünïcödé" for i in range(400))  # far past 256 tokens
TEXTS = [
    "",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé façade — naïve café 東京 😀",
    "Triton serves models; sentence embeddings are L2-normalized.",
    LONG,
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(artifacts_root() / "embedding"), device="cpu")
    assert model.max_seq_length == 256
    return model.encode(TEXTS, normalize_embeddings=True)


def _request(mod, texts: list[str]):
    arr = np.array([[t.encode()] for t in texts], dtype=object)
    inp = mod.InferInput("text_input", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    return [inp]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_embedding_matches_sentence_transformers(server, reference, protocol):
    mod = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    client = mod.InferenceServerClient(url)
    for i, text in enumerate(TEXTS):
        got = client.infer("embedding", _request(mod, [text])).as_numpy("embedding")
        assert got.shape == (1, 384) and got.dtype == np.float32
        assert np.linalg.norm(got[0]) == pytest.approx(1.0, abs=1e-5)
        assert float(got[0] @ reference[i]) >= 0.9999, f"text {i} differs"


def test_embedding_batch_of_many(server, reference):
    client = httpclient.InferenceServerClient(server.http_url)
    got = client.infer("embedding", _request(httpclient, TEXTS)).as_numpy("embedding")
    assert got.shape == (len(TEXTS), 384)
    cos = np.sum(got * reference, axis=1)
    assert np.all(cos >= 0.9999), cos


def test_truncation_matters(server):
    """The long text's vector equals that of its first 256 tokens, not of all of it."""
    client = httpclient.InferenceServerClient(server.http_url)
    a = client.infer("embedding", _request(httpclient, [LONG])).as_numpy("embedding")[0]
    b = client.infer("embedding", _request(httpclient, [LONG + " zebra" * 50])).as_numpy(
        "embedding")[0]
    assert float(a @ b) > 0.99999


def test_concurrent_requests_are_batched(server):
    client = httpclient.InferenceServerClient(server.http_url)

    def stats() -> dict:  # statistics is a restricted API: the admin key's header
        return client.get_inference_statistics("embedding", headers=server.admin_headers())[
            "model_stats"][0]

    before = stats()
    barrier = threading.Barrier(16)  # 16 requests arrive together, three times

    def one(i: int):
        c = grpcclient.InferenceServerClient(server.grpc_url)
        barrier.wait()
        return c.infer("embedding", _request(grpcclient, [f"text {i}"])).as_numpy("embedding")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    assert all(r.shape == (1, 384) for r in results)
    after = poll(stats, lambda a: a["inference_count"] - before["inference_count"] >= 48)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 48, (before, after)
    assert executions < inferences, f"dynamic batching merged no requests: {after}"


def _status(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_wrong_dtype_is_invalid_arg(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("text_input", [1, 1], "INT32")
    inp.set_data_from_numpy(np.array([[3]], dtype=np.int32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("embedding", [inp])
    assert "INVALID_ARG" in _status(e.value)
    assert "expects 'BYTES'" in e.value.message()


def test_missing_and_unknown_inputs_are_invalid_arg(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    other = grpcclient.InferInput("text", [1, 1], "BYTES")
    other.set_data_from_numpy(np.array([[b"x"]], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        client.infer("embedding", [other])
    assert "INVALID_ARG" in _status(e.value)
    extra = _request(grpcclient, ["x"]) + [other]
    with pytest.raises(InferenceServerException) as e:
        client.infer("embedding", extra)
    assert "INVALID_ARG" in _status(e.value)
    assert "text" in e.value.message()


def test_invalid_utf8_is_invalid_arg_and_server_stays_healthy(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"\xff\xfe bad"]], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        client.infer("embedding", [inp])
    assert "INVALID_ARG" in _status(e.value)
    assert "UTF-8" in e.value.message()
    ok = client.infer("embedding", _request(grpcclient, ["still fine"])).as_numpy("embedding")
    assert ok.shape == (1, 384)
    assert client.is_model_ready("embedding")
