"""`llm_preprocess` (the `llm` ensemble's first step): client request -> llm_engine inputs.

Validates the `llm` contract (see `uip.llm.preprocess`), tokenizes the prompt exactly as
`tokenizer(text_input)["input_ids"]`, turns stop/bad words into TensorRT-LLM's flattened
[2, L] lists. The sampling inputs are validated here and mapped by the ensemble straight to
the engine, so absent stays absent (greedy). `exclude_input_in_output` false and
`return_num_input_tokens` are refused here (see `check_ensemble_support`): use llm_bls.
"""

from __future__ import annotations

from uip.llm.preprocess import (
    Limits,
    Preprocessor,
    check_ensemble_support,
    engine_streaming,
    model_max_positions,
)
from uip.llm.tokenizer import tokenizer_for
from uip.serving import pb
from uip.serving.settings import ModelSettings


class LlmPreprocessModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings = ModelSettings.from_args(args)
        folder = self.settings.artifact_dir()
        limits = Limits.from_settings(self.settings, model_max_positions(folder))
        self.pre = Preprocessor(tokenizer_for(self.settings), limits)
        self._warned_anonymous = False

    def execute(self, requests):
        out = []
        for request in requests:
            try:
                req = self.pre.parse(pb.inputs_of(request))
                check_ensemble_support(req)
                streaming = engine_streaming(req.stream, request.request_id())
                if req.stream and not streaming and not self._warned_anonymous:
                    self._warned_anonymous = True
                    pb.log.warning(
                        "llm: a streamed request without a request id is served as one "
                        "response (the ensemble's detokenizer keys streams by request id); "
                        "set a unique request id, or use llm_bls, to get deltas")
                out.append(pb.response(self.pre.engine_inputs(req, streaming, sampling=False)))
            except Exception as exc:  # noqa: BLE001 - becomes this request's error
                out.append(pb.error_response(exc))
        return out

    def finalize(self) -> None:
        self.pre = None
