"""Token selection for one engine step, on the logits' device.

Per row, in this order (the torch runtime's semantics): bad words (a word's last token is
banned when the tokens before it end the sequence), the request's logits mask (guided decoding
hook), then greedy argmax or temperature / top-k / top-p sampling. A sampled row draws one
uniform number from its request's own `torch.Generator` (CPU, seeded from the request's seed)
and inverts the filtered distribution's CDF on the device, so a seed gives the same tokens
whatever else is in the batch and whatever the batch order. One host copy per step (the
chosen ids, `choose`; or queued without a sync, `choose_on_device`); what goes to the device
goes from pinned memory, without a sync.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from uip.llm.engine import SamplingParams
from uip.llm.paged_attention import to_device

# A per-request logits mask: called with the tokens generated so far, before each token is
# chosen; returns a bool tensor [vocab] (True = allowed) or None for no constraint this step.
LogitsMask = Callable[[Sequence[int]], "torch.Tensor | None"]


@dataclass
class Row:
    sampling: SamplingParams | None  # None = greedy
    generator: torch.Generator | None
    bad_words: list[list[int]]
    tokens: list[int]  # prompt + generated (bad words look back into the prompt)
    allowed: torch.Tensor | None = None  # this step's logits mask result (True = allowed)


def banned_tokens(bad_words: list[list[int]], tokens: list[int]) -> list[int]:
    return [w[-1] for w in bad_words
            if len(w) == 1 or (len(tokens) >= len(w) - 1
                               and tokens[len(tokens) - len(w) + 1:] == w[:-1])]


def new_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _filtered_sample(logits: torch.Tensor, params: list[SamplingParams],
                     uniforms: torch.Tensor) -> torch.Tensor:
    """Rows of `logits` -> one token id each (temperature, then top-k, then top-p)."""
    vocab = logits.shape[-1]
    dev = logits.device
    temps = to_device([sp.temperature or 1.0 for sp in params], dev, torch.float)
    ks = to_device([min(sp.top_k or vocab, vocab) for sp in params], dev)
    ps = to_device([sp.top_p if sp.top_p is not None else 1.0 for sp in params], dev,
                   torch.float)
    scaled, order = torch.sort(logits / temps[:, None], dim=-1, descending=True)
    kth = scaled.gather(1, (ks - 1)[:, None])
    scaled = scaled.masked_fill(scaled < kth, -math.inf)  # ties with the k-th are kept
    probs = torch.softmax(scaled, dim=-1)
    drop = (probs.cumsum(-1) - probs >= ps[:, None]) & (ps[:, None] < 1.0)  # keeps >= 1
    probs = torch.softmax(scaled.masked_fill(drop, -math.inf), dim=-1)
    cdf = probs.cumsum(-1)
    pick = torch.searchsorted(cdf, (to_device(uniforms.tolist(), dev, cdf.dtype)
                                    * cdf[:, -1])[:, None])
    return order.gather(1, pick.clamp_(max=vocab - 1)).squeeze(1)


def choose(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """logits [R, vocab] float32 (modified in place) -> R token ids (one host sync)."""
    return choose_on_device(logits, rows).tolist()


def choose_on_device(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """`choose` without the host copy: the R token ids [R] on the logits' device, queued
    behind the step that computes the logits (no sync)."""
    ban_rows: list[int] = []
    ban_cols: list[int] = []
    for i, row in enumerate(rows):
        if row.bad_words:
            banned = banned_tokens(row.bad_words, row.tokens)
            ban_rows += [i] * len(banned)
            ban_cols += banned
        if row.allowed is not None:
            logits[i].masked_fill_(~row.allowed.to(logits.device), -math.inf)
    if ban_rows:
        dev = logits.device
        logits[to_device(ban_rows, dev), to_device(ban_cols, dev)] = -math.inf
    out = logits.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if row.sampling is not None]
    if sampled:
        uniforms = torch.cat([torch.rand(1, generator=rows[i].generator, dtype=torch.float64)
                              for i in sampled])
        idx = to_device(sampled, logits.device)
        out[idx] = _filtered_sample(logits[idx], [rows[i].sampling for i in sampled], uniforms)
    return out
