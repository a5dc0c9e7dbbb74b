"""CUDA graphs for a lone prompt's first chunk (GPU only): the time to first token at low load.

Eager, one 128-token prefill of an 8B Llama launches ~880 kernels from Python: 22 ms on an
H200 for 6 ms of GPU work (benchmarks/gpu/prefill_profile.py). A step whose only work is the
first chunk of one prompt (no cached prefix, no decode rows, no adapter) replays instead the
graph of the smallest token bucket >= its length (16, 32, ... up to the spec's
`prefill_graph_tokens`), captured at start-up: the runner's forward of T tokens, K/V written
to the cache, causal SDPA over the chunk, the logits of its last real token. Tokens n..T are
padding placed after the real ones (causal attention keeps them out of the real rows) at
position 0, written to the scratch block no sequence owns. One static int64 buffer holds a
row per token, [token id, position, slot], and a last row whose first column is the logits
row n - 1. Without `capture` (CPU tests) `run` runs the same static-shape step eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from uip.llm.cuda_graphs import capture_all
from uip.llm.llama import LlamaRunner
from uip.llm.paged_attention import Prefill, StepMeta, to_device

log = logging.getLogger("uip.llm.prefill_graphs")


def prefill_buckets(max_tokens: int, smallest: int = 16) -> list[int]:
    """Powers of two from `smallest` up to `max_tokens` (and `max_tokens` itself); none when
    `max_tokens` < `smallest`."""
    out, t = [], smallest
    while t < max_tokens:
        out.append(t)
        t *= 2
    return [*out, max_tokens] if max_tokens >= smallest else []


class PrefillGraphs:
    """Captured single-prompt prefill steps; `run` replays one: logits [1, vocab] (float32)."""

    def __init__(self, runner: LlamaRunner, cache: list[tuple[torch.Tensor, torch.Tensor]],
                 scratch_slot: int, buckets: Sequence[int]) -> None:
        self.runner, self.cache = runner, cache
        self.buckets = sorted(set(buckets))
        self.max_tokens = self.buckets[-1]
        self._scratch = scratch_slot
        self._dev = torch.zeros(self.max_tokens + 1, 3, dtype=torch.long, device=runner.device)
        self._dev[:, 2] = scratch_slot
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._logits: dict[int, torch.Tensor] = {}
        self.capture_s = 0.0
        self.capture_bytes = 0

    def _forward(self, t: int) -> torch.Tensor:
        buf = self._dev[:t]
        meta = StepMeta(slot_mapping=buf[:, 2], num_decode=0, decode_tables=None,
                        decode_mask=None, prefills=[Prefill(0, t, t, None)])
        return self.runner.forward(buf[:, 0], buf[:, 1], meta, self.cache,
                                   self._dev[self.max_tokens, :1])

    def capture(self) -> None:
        self._graphs, self._logits, self.capture_s, self.capture_bytes = capture_all(
            self._forward, self.buckets, self.runner.device)
        log.info("captured %d prefill CUDA graphs (tokens %s) in %.1f s, %.0f MiB of GPU "
                 "memory", len(self._graphs), ",".join(map(str, self.buckets)),
                 self.capture_s, self.capture_bytes / 2**20)

    def fits(self, n: int) -> bool:
        return 0 < n <= self.max_tokens

    def run(self, ids: list[int], slots: list[int]) -> torch.Tensor:
        """The first chunk of one prompt (n <= max_tokens tokens at positions 0..n-1) ->
        logits [1, vocab] of its last token (a view of the graph's output, valid until the
        next `run`)."""
        n = len(ids)
        t = next(b for b in self.buckets if b >= n)
        pad = t - n
        rows = [[i, p, s] for i, p, s in zip(ids, range(n), slots, strict=True)]
        rows += [[0, 0, self._scratch]] * pad + [[n - 1, 0, 0]]
        host = to_device(rows, self.runner.device)
        self._dev[:t].copy_(host[:t])
        self._dev[self.max_tokens:].copy_(host[t:])
        graph = self._graphs.get(t)
        if graph is None:  # not captured (CPU tests): the same static-shape step, eagerly
            return self._forward(t)
        graph.replay()
        return self._logits[t]
