"""`llm_postprocess` (the `llm` ensemble's last step): engine ids -> text deltas.

Runs once per llm_engine response. Detokenization is incremental and exact (whole UTF-8
characters, correct spaces; the deltas of a stream add up to `tokenizer.decode(all ids,
skip_special_tokens=True)`), with per-stream state keyed by the `stream_key` that
llm_preprocess makes and llm_engine echoes (the only per-request context that reaches a step
after a decoupled one in Triton 2.51; see `uip.llm.preprocess.new_stream_key`), else by the
request id. Hence exactly one instance.
"""

from __future__ import annotations

import json

import numpy as np

from uip.core.inputs import InvalidInput, as_text
from uip.core.settings import ModelSettings
from uip.llm.detokenize import StreamDetokenizers
from uip.llm.engine_tensors import decode_response
from uip.llm.tokenizer import tokenizer_for
from uip.triton import pb


def _instances(config: dict) -> int:
    return sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1


class LlmPostprocessModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings = ModelSettings.from_args(args)
        if _instances(json.loads(args["model_config"])) != 1:
            raise ValueError("llm_postprocess keeps each stream's detokenizer state in its "
                             "process: it must run as exactly one instance (instances.count 1)")
        tokenizer = tokenizer_for(self.settings)
        self.streams = StreamDetokenizers(tokenizer, self.settings.param("stream_ttl_s", 600.0,
                                                                          float))

    def _one(self, request) -> dict[str, np.ndarray]:
        inputs = pb.inputs_of(request)
        if inputs.get("output_ids") is None:
            raise InvalidInput("input 'output_ids' is required")
        chunk = decode_response(inputs["output_ids"], inputs.get("engine_finish_reason"))
        key = inputs.get("stream_key")
        key = as_text(key.reshape(-1)[0], "stream_key") if key is not None and key.size else \
            request.request_id()
        text = self.streams.step(key, chunk.tokens, final=chunk.final)
        return {
            "text_output": np.array([[text.encode()]], dtype=object),
            "finish_reason": np.array([[(chunk.finish_reason or "").encode()]], dtype=object),
            "num_output_tokens": np.array([[len(chunk.tokens)]], dtype=np.int32),
        }

    def execute(self, requests):
        # In order: the responses of one stream arrive (and must be decoded) in sequence.
        return pb.respond_each(requests, self._one)

    def finalize(self) -> None:
        self.streams = None
