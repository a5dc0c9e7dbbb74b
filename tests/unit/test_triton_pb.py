"""uip.triton.pb against the stand-in pb_utils: error codes, per-request failures, FINAL flags,
dynamic batching (groups by shape, splits back, fails only the failing group), BLS infer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import fake_pb_utils as pbu

from uip.core.faults import Unavailable
from uip.core.inputs import InvalidInput
from uip.triton import pb

FINAL = pbu.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def test_error_invalid_input_is_invalid_arg_with_the_message():
    err = pb.error(InvalidInput("'x' must be >= 1, got 0"))
    assert err.code() == pbu.TritonError.INVALID_ARG
    assert err.message() == "'x' must be >= 1, got 0"


def test_error_unavailable_is_unavailable_with_the_message():
    from uip.llm.paged_runtime import EngineOverloaded

    for exc in (Unavailable("queue full"), EngineOverloaded("queue full")):
        err = pb.error(exc)
        assert err.code() == pbu.TritonError.UNAVAILABLE
        assert err.message() == "unavailable, retry later: queue full"


@pytest.mark.parametrize("exc, message", [
    (RuntimeError("engine died"), "RuntimeError: engine died"),
    (KeyError("k"), "KeyError: 'k'"),
    (ValueError("plain"), "ValueError: plain"),  # only InvalidInput is the client's fault
])
def test_error_other_exceptions_are_internal_without_traceback(exc, message):
    try:
        raise exc
    except Exception as raised:  # noqa: BLE001 - as an adapter catches it
        err = pb.error(raised)
    assert err.code() == pbu.TritonError.INTERNAL
    assert err.message() == message
    assert "Traceback" not in err.message()


def test_error_response_and_cancelled_response():
    resp = pb.error_response(InvalidInput("bad"))
    assert resp.has_error() and resp.output_tensors() == []
    assert resp.error().code() == pbu.TritonError.INVALID_ARG
    cancelled = pb.cancelled_response()
    assert cancelled.error().code() == pbu.TritonError.CANCELLED
    assert cancelled.error().message() == "request cancelled"


def test_respond_each_one_failure_does_not_fail_the_others():
    ready = pbu.InferenceResponse(output_tensors=[pbu.Tensor("y", np.array([7]))])

    def handle(request):
        x = pbu.get_input_tensor_by_name(request, "x").as_numpy()
        if x[0] == 1:
            raise InvalidInput("x must not be 1")
        if x[0] == 2:
            raise RuntimeError("boom")
        if x[0] == 3:
            return ready
        return {"y": x * 10}

    requests = [pbu.Request({"x": np.array([v])}) for v in (0, 1, 2, 3, 4)]
    out = pb.respond_each(requests, handle)
    assert len(out) == 5
    assert out[0].outputs()["y"].tolist() == [0]
    assert out[1].error().code() == pbu.TritonError.INVALID_ARG
    assert out[1].error().message() == "x must not be 1"
    assert out[2].error().code() == pbu.TritonError.INTERNAL
    assert out[2].error().message() == "RuntimeError: boom"
    assert out[3] is ready  # a ready response object passes as is
    assert out[4].outputs()["y"].tolist() == [40] and not out[4].has_error()


def test_send_keeps_the_final_flag():
    sender = pbu.Sender()
    pb.send(sender, {"a": np.array([1, 2], dtype=np.int32)})
    pb.send(sender, {"a": np.array([3], dtype=np.int32)}, final=True)
    (r1, f1), (r2, f2) = sender.sent
    assert f1 == 0 and f2 == FINAL
    assert r1.outputs()["a"].tolist() == [1, 2] and r2.outputs()["a"].tolist() == [3]
    assert not r1.has_error() and not r2.has_error()


def test_output_of_a_response():
    resp = pbu.InferenceResponse(output_tensors=[pbu.Tensor("a", np.array([1]))])
    assert pb.output(resp, "a").tolist() == [1]
    assert pb.output(resp, "missing") is None


# --- execute_batched ------------------------------------------------------------------------


def _req(**inputs):
    return pbu.Request({k: np.asarray(v) for k, v in inputs.items()})


class Doubler:
    def __init__(self, fail_width: int | None = None):
        self.calls: list[tuple[tuple, ...]] = []
        self.fail_width = fail_width

    def __call__(self, x, y):
        self.calls.append((tuple(x.shape), tuple(y.shape)))
        if x.shape[1] == self.fail_width:
            raise RuntimeError("group failed")
        return {"z": x * 2 + y, "w": x.sum(dim=1, keepdim=True)}


def test_execute_batched_groups_equal_shapes_and_splits_back():
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    b = np.arange(8, dtype=np.float32).reshape(2, 4) + 10  # batch 2, same row shape: same group
    c = np.ones((1, 3), dtype=np.float32)  # other row shape: its own call
    d = np.ones((1, 4), dtype=np.float64)  # other dtype: its own call
    requests = [_req(x=a, y=np.ones_like(a)), _req(x=b, y=np.ones_like(b)),
                _req(x=c, y=np.zeros_like(c)), _req(x=d, y=np.zeros_like(d))]
    fn = Doubler()
    out = pb.execute_batched(requests, ["x", "y"], fn)
    assert sorted(fn.calls) == sorted([((3, 4), (3, 4)), ((1, 3), (1, 3)), ((1, 4), (1, 4))])
    for resp, (x, y) in zip(out, [(a, 1), (b, 1), (c, 0), (d, 0)], strict=True):
        assert not resp.has_error()
        np.testing.assert_array_equal(resp.outputs()["z"], x * 2 + y)
        np.testing.assert_array_equal(resp.outputs()["w"], x.sum(axis=1, keepdims=True))
    assert out[1].outputs()["z"].shape == (2, 4)


def test_execute_batched_missing_input_fails_only_that_request():
    x = np.ones((1, 2), dtype=np.float32)
    requests = [_req(x=x, y=x), _req(x=x), _req(x=x, y=x)]
    fn = Doubler()
    out = pb.execute_batched(requests, ["x", "y"], fn)
    assert fn.calls == [((2, 2), (2, 2))]  # the two good requests, one call
    assert out[1].error().code() == pbu.TritonError.INVALID_ARG
    assert out[1].error().message() == "input 'y' is required"
    assert not out[0].has_error() and not out[2].has_error()
    np.testing.assert_array_equal(out[2].outputs()["z"], x * 3)


def test_execute_batched_a_failing_group_fails_only_its_requests():
    good = np.ones((1, 2), dtype=np.float32)
    bad = np.ones((1, 5), dtype=np.float32)
    requests = [_req(x=bad, y=bad), _req(x=good, y=good), _req(x=bad, y=bad)]
    out = pb.execute_batched(requests, ["x", "y"], Doubler(fail_width=5))
    for i in (0, 2):
        assert out[i].error().code() == pbu.TritonError.INTERNAL
        assert out[i].error().message() == "RuntimeError: group failed"
    assert not out[1].has_error()
    np.testing.assert_array_equal(out[1].outputs()["z"], good * 3)


# --- BLS ------------------------------------------------------------------------------------


@pytest.fixture
def bls(monkeypatch):
    calls = []

    def use(handler):
        def record(request):
            calls.append(request)
            return handler(request)

        monkeypatch.setattr(pbu, "bls_handler", record)
        return calls

    return use


def test_infer_sends_inputs_and_returns_torch_outputs(bls):
    calls = bls(lambda r: pbu.InferenceResponse(output_tensors=[
        pbu.Tensor("out", pbu.get_input_tensor_by_name(r, "a").as_numpy() + 1)]))
    out = pb.infer("m", {"a": torch.tensor([1, 2])}, ["out"])
    assert isinstance(out["out"], torch.Tensor) and out["out"].tolist() == [2, 3]
    (req,) = calls
    assert req.model_name == "m" and req.requested_output_names == ["out"]


def test_infer_error_raises_model_call_error(bls):
    bls(lambda r: pbu.InferenceResponse(error=pbu.TritonError("no such model", 2)))
    with pytest.raises(pb.ModelCallError, match="model 'm' failed: no such model"):
        pb.infer("m", {"a": np.zeros(1)}, ["out"])
