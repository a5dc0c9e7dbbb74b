"""`embedding` (Mono): text_input BYTES [1] -> embedding FP32 [D], L2-normalized."""

from __future__ import annotations

import numpy as np
import torch

from uip.core.inputs import InvalidInput, texts
from uip.core.settings import ModelSettings
from uip.embedding.encoder import SentenceEncoder
from uip.triton import pb


class EmbeddingModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings = ModelSettings.from_args(args)
        threads = self.settings.param("torch_threads", 0, int)
        if threads > 0:
            torch.set_num_threads(threads)
        self.max_text_bytes = self.settings.limit("max_text_bytes", 65536)
        self.encoder = SentenceEncoder(
            self.settings.artifact_dir(),
            max_seq_length=self.settings.limit("max_seq_length", 256),
            device=self.settings.device,
        )

    def _texts(self, request) -> list[str]:
        values = texts(pb.inputs_of(request), "text_input")
        for v in values:
            if len(v.encode()) > self.max_text_bytes:
                raise InvalidInput(f"'text_input' is longer than the limit of "
                                   f"{self.max_text_bytes} bytes (limits.max_text_bytes)")
        return values

    def execute(self, requests):
        # Validate each request on its own, then encode all good ones in one batch.
        parsed: list[list[str] | Exception] = []
        for request in requests:
            try:
                parsed.append(self._texts(request))
            except Exception as exc:  # noqa: BLE001 - becomes this request's error
                parsed.append(exc)
        good = [t for p in parsed if not isinstance(p, Exception) for t in p]
        failure: Exception | None = None  # the batch's encode failed: INTERNAL for its requests
        try:
            vectors = self.encoder.encode(good) if good else np.zeros((0, self.encoder.dim))
        except Exception as exc:  # noqa: BLE001 - the message, not the stub's traceback
            vectors, failure = None, exc
        out, at = [], 0
        for p in parsed:
            if isinstance(p, Exception) or failure is not None:
                out.append(pb.error_response(p if isinstance(p, Exception) else failure))
                continue
            out.append(pb.response({"embedding": vectors[at:at + len(p)]}))
            at += len(p)
        return out

    def finalize(self) -> None:
        self.encoder = None
