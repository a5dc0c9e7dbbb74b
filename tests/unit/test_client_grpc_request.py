"""`uip.clients.llm.grpc_request` builds the same `ModelInferRequest` that tritonclient makes
from `grpc_inputs` (InferInputs through its stream request iterator), byte for byte."""

from __future__ import annotations

import pytest
from tritonclient.grpc._utils import _get_inference_request

from uip.clients.llm import grpc_inputs, grpc_request, parameters


def _tritonclient(model: str, prompt: str, params: dict, request_id: str):
    return _get_inference_request(
        model_name=model, inputs=grpc_inputs(prompt, params), model_version="",
        request_id=request_id, outputs=None, sequence_id=0, sequence_start=False,
        sequence_end=False, priority=0, timeout=None, parameters=None)


@pytest.mark.parametrize("params", [
    {},
    {"max_tokens": 64, "stream": True, "return_num_output_tokens": True},
    {"max_tokens": 7, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 2**64 - 1,
     "stop_words": ["\n\n", "The end", "東京"], "bad_words": "x", "lora_name": "a1",
     "guided_decoding": '{"type": "json"}', "exclude_input_in_output": False,
     "return_num_input_tokens": True},
    {"stop_words": []},
])
def test_grpc_request_equals_tritonclients(params):
    prompt = "<|user|>\ncafé 東京 \x00 ok</s>\n"
    want = _tritonclient("llm_bls", prompt, parameters(**params), "gw-1")
    got = grpc_request("llm_bls", prompt, parameters(**params), "gw-1")
    assert got == want
    assert got.SerializeToString() == want.SerializeToString()
