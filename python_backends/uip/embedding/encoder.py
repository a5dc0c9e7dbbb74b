"""Sentence embeddings as sentence-transformers computes them: mean pooling + L2 norm (pure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer


class SentenceEncoder:
    """all-MiniLM-L6-v2 (or any BERT-style encoder) with truncation at `max_seq_length`."""

    def __init__(self, folder: Path, max_seq_length: int = 256, device: str = "cpu",
                 max_batch: int = 64):
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.max_seq_length = max_seq_length
        self.device = device
        self.max_batch = max_batch

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.max_batch):
            chunk = texts[start:start + self.max_batch]
            batch = self.tokenizer(chunk, padding=True, truncation=True,
                                   max_length=self.max_seq_length, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            normed = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[start:start + len(chunk)] = normed.float().cpu().numpy()
        return out
