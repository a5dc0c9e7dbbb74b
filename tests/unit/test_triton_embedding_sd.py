"""The embedding adapter (a fake encoder: per-request validation, one batched encode) and the
stable_diffusion adapter built without its pipeline (answers through the response sender:
CANCELLED, INVALID_ARG, INTERNAL, UNAVAILABLE; BLS)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import fake_pb_utils as pbu

from uip.sd.loop import Cancelled
from uip.sd.request import SDDefaults, SDLimits
from uip.triton.models import embedding
from uip.triton.models.embedding import EmbeddingModel
from uip.triton.models.stable_diffusion import StableDiffusion

# --- embedding -------------------------------------------------------------------------------


class FakeEncoder:
    """Deterministic vectors: [len(text), first byte, 1, 0] per text, L2-normalized."""

    made: list[FakeEncoder] = []

    def __init__(self, folder, max_seq_length=256, device="cpu"):
        self.folder, self.max_seq_length, self.device = folder, max_seq_length, device
        self.calls: list[list[str]] = []
        FakeEncoder.made.append(self)

    dim = 4

    @staticmethod
    def vector(text: str) -> np.ndarray:
        v = np.array([len(text), text.encode()[:1][0] if text else 0, 1, 0], dtype=np.float32)
        return v / np.linalg.norm(v)

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts]).astype(np.float32)


@pytest.fixture
def emb(monkeypatch, tmp_path):
    monkeypatch.setattr(embedding, "SentenceEncoder", FakeEncoder)
    config = {
        "name": "embedding", "backend": "python", "max_batch_size": 64,
        "parameters": {"artifact": {"string_value": str(tmp_path)},
                       "runtime": {"string_value": "torch"},
                       "limits.max_text_bytes": {"string_value": "16"},
                       "limits.max_seq_length": {"string_value": "32"}},
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }
    m = EmbeddingModel()
    m.initialize(pbu.model_args(config))
    yield m
    m.finalize()


def text_request(*values: str | bytes):
    arr = np.array([[v.encode() if isinstance(v, str) else v] for v in values], dtype=object)
    return pbu.Request({"text_input": arr})


def test_embedding_reads_its_limits(emb, tmp_path):
    enc = emb.encoder
    assert enc.folder == tmp_path and enc.max_seq_length == 32 and enc.device == "cpu"
    assert emb.max_text_bytes == 16


def test_embedding_a_bad_request_fails_only_itself(emb):
    requests = [text_request("hello"), text_request("x" * 17), pbu.Request({}),
                text_request("abc", "de"), text_request(b"\xff\xfe"), text_request("y" * 16)]
    out = emb.execute(requests)
    assert len(out) == 6
    assert emb.encoder.calls == [["hello", "abc", "de", "y" * 16]]  # the good ones, one batch
    for i, texts in ((0, ["hello"]), (3, ["abc", "de"]), (5, ["y" * 16])):
        assert not out[i].has_error()
        got = out[i].outputs()["embedding"]
        np.testing.assert_allclose(got, np.stack([FakeEncoder.vector(t) for t in texts]))
    too_long, missing, not_utf8 = out[1].error(), out[2].error(), out[4].error()
    assert too_long.code() == missing.code() == not_utf8.code() == pbu.TritonError.INVALID_ARG
    assert "longer than the limit of 16 bytes" in too_long.message()
    assert missing.message() == "input 'text_input' is required"
    assert "UTF-8" in not_utf8.message()


def test_embedding_all_bad_does_not_call_the_encoder(emb):
    out = emb.execute([text_request("z" * 40)])
    assert out[0].error().code() == pbu.TritonError.INVALID_ARG
    assert emb.encoder.calls == []


def test_embedding_encoder_failure_is_internal(emb, monkeypatch):
    def broken(texts):
        raise RuntimeError("model gone")

    monkeypatch.setattr(emb.encoder, "encode", broken)
    out = emb.execute([text_request("a"), text_request("b" * 17), text_request("c")])
    for i in (0, 2):  # the encoded requests: the message, not the stub's traceback
        assert out[i].error().code() == pbu.TritonError.INTERNAL
        assert out[i].error().message() == "RuntimeError: model gone"
    assert out[1].error().code() == pbu.TritonError.INVALID_ARG


# --- stable_diffusion ------------------------------------------------------------------------


class FakeSchedulers:
    default_name = "pndm"

    def check(self, name):
        if name not in (None, "", "pndm", "ddim"):
            from uip.core.inputs import InvalidInput

            raise InvalidInput(f"'scheduler' must be one of pndm, ddim; got {name!r}")
        return name or self.default_name

    def check_steps(self, name, steps):
        pass


class FakeBatcher:
    """Records the submitted requests; answers at once: an image, or `error`."""

    def __init__(self, error: BaseException | None = None, refuse: Exception | None = None):
        self.requests, self.error, self.refuse = [], error, refuse

    def submit(self, req, cancelled, done):
        if self.refuse is not None:
            raise self.refuse
        self.requests.append(req)
        if cancelled():
            done(None, Cancelled())
        elif self.error is not None:
            done(None, self.error)
        else:
            done(np.full((req.height, req.width, 3), 7, dtype=np.uint8), None)


def make_sd(batcher=None) -> StableDiffusion:
    """The adapter without initialize: only what its request methods use."""
    sd = StableDiffusion.__new__(StableDiffusion)
    sd.limits = SDLimits(max_steps=20, max_height=128, max_width=128)
    sd.defaults = SDDefaults(steps=4, guidance_scale=7.5, seed=1, height=64, width=64,
                             scheduler="pndm")
    sd.schedulers = FakeSchedulers()
    sd.size_multiple = 8
    sd.batcher = batcher or FakeBatcher()
    sd.models = {"text": "sd_text_encoder", "unet": "sd_unet", "vae": "sd_vae_decoder"}
    sd.device, sd.dtype = "cpu", torch.float16
    return sd


def sd_request(prompt: str | None = "a cat", cancelled=False, **extra):
    inputs = {} if prompt is None else {"prompt": np.array([[prompt.encode()]], dtype=object)}
    for k, v in extra.items():
        inputs[k] = np.array([[v]], dtype=object if isinstance(v, bytes) else None)
    return pbu.Request(inputs, cancelled=cancelled)


def test_sd_image_for_a_good_request_through_its_sender():
    sd = make_sd()
    request = sd_request(steps=np.int32(3), height=np.int32(32))
    assert sd.execute([request]) is None  # answered through the sender (non-decoupled too)
    ((resp, flags),) = pbu.finished(request)
    assert not resp.has_error() and flags == pbu.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    image = resp.outputs()["image"]
    assert image.shape == (1, 32, 64, 3) and image.dtype == np.uint8
    (req,) = sd.batcher.requests
    assert (req.prompt, req.steps, req.height, req.width, req.scheduler) == \
        ("a cat", 3, 32, 64, "pndm")


def test_sd_cancelled_request_answers_cancelled_and_the_others_go_on():
    sd = make_sd()
    a, b = sd_request(cancelled=True), sd_request()
    sd.execute([a, b])
    err = pbu.only_error(a)
    assert err.code() == pbu.TritonError.CANCELLED
    assert err.message() == "request cancelled by the client"
    ((resp, _),) = pbu.finished(b)
    assert not resp.has_error() and resp.outputs()["image"].shape == (1, 64, 64, 3)


@pytest.mark.parametrize("request_, message", [
    (sd_request(None), "prompt"),
    (sd_request(steps=np.int32(21)), "steps"),
    (sd_request(height=np.int32(30)), "height"),
    (sd_request(scheduler=b"euler_x"), "scheduler"),
])
def test_sd_bad_request_is_invalid_arg_without_reaching_the_batcher(request_, message):
    sd = make_sd()
    request_.sender.sent.clear()
    sd.execute([request_])
    err = pbu.only_error(request_)
    assert err.code() == pbu.TritonError.INVALID_ARG and message in err.message()
    assert sd.batcher.requests == []


def test_sd_batcher_failure_is_internal_and_a_full_queue_unavailable():
    sd = make_sd(FakeBatcher(error=RuntimeError("unet failed")))
    request = sd_request()
    sd.execute([request])
    err = pbu.only_error(request)
    assert err.code() == pbu.TritonError.INTERNAL and err.message() == "RuntimeError: unet failed"
    from uip.core.faults import Unavailable

    sd = make_sd(FakeBatcher(refuse=Unavailable("64 stable_diffusion requests are waiting")))
    request = sd_request()
    sd.execute([request])
    err = pbu.only_error(request)
    assert err.code() == pbu.TritonError.UNAVAILABLE and "64 stable_diffusion" in err.message()


def test_sd_unet_step_goes_through_bls(monkeypatch):
    calls = []

    def handler(request):
        calls.append(request)
        sample = pbu.get_input_tensor_by_name(request, "sample").as_numpy()
        return pbu.InferenceResponse(output_tensors=[pbu.Tensor("noise_pred", sample * 0 + 1)])

    monkeypatch.setattr(pbu, "bls_handler", handler)
    sd = make_sd()
    latents, hidden = torch.zeros(2, 4, 8, 8), torch.zeros(2, 77, 32)
    out = sd._unet(latents, torch.tensor([981, 981]), hidden)
    assert out.shape == (2, 4, 8, 8) and bool((out == 1).all())
    (req,) = calls
    assert req.model_name == "sd_unet" and req.requested_output_names == ["noise_pred"]
    got = {t.name(): t.as_numpy() for t in req.inputs()}
    assert got["sample"].dtype == np.float16 and got["encoder_hidden_states"].dtype == np.float16
    assert got["timestep"].dtype == np.float32 and got["timestep"].tolist() == [[981.0], [981.0]]
