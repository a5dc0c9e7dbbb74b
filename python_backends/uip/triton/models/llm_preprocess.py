"""`llm_preprocess` (the `llm` ensemble's first step): client request -> llm_engine inputs.

Validates the `llm` contract (see `uip.llm.preprocess`), tokenizes the prompt exactly as
`tokenizer(text_input)["input_ids"]`, turns stop/bad words into TensorRT-LLM's flattened
[2, L] lists. The sampling inputs are validated here and mapped by the ensemble straight to
the engine, so absent stays absent (greedy). `exclude_input_in_output` false and
`return_num_input_tokens` are refused here (see `check_ensemble_support`): use llm_bls.
"""

from __future__ import annotations

from uip.core.settings import ModelSettings
from uip.llm.preprocess import (
    Limits,
    Preprocessor,
    check_ensemble_support,
    model_max_positions,
    new_stream_key,
)
from uip.llm.tokenizer import tokenizer_for
from uip.triton import pb


class LlmPreprocessModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings = ModelSettings.from_args(args)
        folder = self.settings.artifact_dir()
        limits = Limits.from_settings(self.settings, model_max_positions(folder))
        self.pre = Preprocessor(tokenizer_for(self.settings), limits)

    def _one(self, request) -> dict:
        req = self.pre.parse(pb.inputs_of(request))
        check_ensemble_support(req)
        inputs = self.pre.engine_inputs(req, req.stream, sampling=False)
        inputs["stream_key"] = new_stream_key()
        return inputs

    def execute(self, requests):
        return pb.respond_each(requests, self._one)

    def finalize(self) -> None:
        self.pre = None
