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

from uip.llm.detokenize import StreamDetokenizers
from uip.llm.tokenizer import tokenizer_for
from uip.serving import pb
from uip.serving.contract import InvalidInput, as_text
from uip.serving.settings import ModelSettings


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
        ids = inputs.get("output_ids")
        if ids is None:
            raise InvalidInput("input 'output_ids' is required")
        reason = inputs.get("engine_finish_reason")
        finish = as_text(reason.reshape(-1)[0], "engine_finish_reason") if reason is not None and \
            reason.size else ""
        tokens = [int(t) for t in ids.reshape(-1)]
        key = inputs.get("stream_key")
        key = as_text(key.reshape(-1)[0], "stream_key") if key is not None and key.size else \
            request.request_id()
        text = self.streams.step(key, tokens, final=bool(finish))
        return {
            "text_output": np.array([[text.encode()]], dtype=object),
            "finish_reason": np.array([[finish.encode()]], dtype=object),
            "num_output_tokens": np.array([[len(tokens)]], dtype=np.int32),
        }

    def execute(self, requests):
        # In order: the responses of one stream arrive (and must be decoded) in sequence.
        out = []
        for request in requests:
            try:
                out.append(pb.response(self._one(request)))
            except Exception as exc:  # noqa: BLE001 - becomes this request's error
                out.append(pb.error_response(exc))
        return out

    def finalize(self) -> None:
        self.streams = None
