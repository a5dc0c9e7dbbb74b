"""CUDA graphs for the decode-only steps of `PagedEngine` (GPU only).

At start-up one graph per batch-size bucket (1, 2, 4, ... 64, then multiples of 64, up to the
most rows a step can have) captures the model runner's whole forward over the paged cache,
logits included (token choice stays outside: bad words, logits masks and sampling vary per
step). Every graph reads one static int64 buffer, a row per sequence:

    [token id, position, slot, context length, LoRA slot, block 0, ..., block max_blocks - 1]

filled on the host in pinned memory (two buffers, used in turn: the engine fills step N+1's
while step N's copy may still be queued) and sent with one asynchronous copy per step. The
token ids of a step that follows the previous one without waiting for it come from that
step's chosen tokens on the device (`run(..., prev=...)`), copied into the buffer's token
column on the GPU. RoPE and the K/V cache write run as one kernel (`rope_write_kv`). A step of
n decode rows replays the smallest bucket >= n; rows n.. are padding: token 0 at position 0,
written to a scratch block that no sequence owns (the cache has one block more than the
block manager hands out) and attending to that one token only. Attention under the graph is
the Triton paged-decode kernel, whose work follows the lengths read on the device. With LoRA
adapters (`runner.lora`) each bucket has a second graph taking adapter rows: it builds the
rows' dense LoRA step from the LoRA-slot column on the device (lora.py: by default the folded
shrink GEMM and one Triton expand kernel per linear, `lora_form` picks another of
`DENSE_FORMS`; the adapters' weights are the cache's fixed per-slot buffers, so an adapter
loaded later is used by the graph as captured); steps without adapter rows replay the plain
graph. Without `capture` (CPU tests, with `reference_paged_decode` as the kernel) `run` runs
the same static-shape step eagerly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from uip.llm.llama import LlamaRunner
from uip.llm.paged_attention import StepMeta, to_device
from uip.llm.triton_paged_attention import (
    paged_decode,
    reference_rope_write_kv,
    rope_write_kv,
)

log = logging.getLogger("uip.llm.cuda_graphs")

_META_COLS = 5  # token id, position, slot, context length, LoRA slot; then the blocks


def default_buckets(max_batch: int, step: int = 64) -> list[int]:
    """Powers of two up to `step`, then multiples of `step` (a step with a new prompt beside
    the decodes pads less), below `max_batch`; and `max_batch` itself."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b = b * 2 if b < step else b + step
    return [*out, max_batch]


def capture_all(forward: Callable[[Any], torch.Tensor], keys: Sequence[Any],
                device: torch.device
                ) -> tuple[dict[Any, torch.cuda.CUDAGraph], dict[Any, torch.Tensor], float, int]:
    """One graph per key of `forward(key)` (keys sort by size: largest first), in one memory
    pool, each run twice on a side stream first (Triton compiles, cuBLAS workspaces: not
    captured); returns the graphs, their outputs, the seconds and the GPU bytes it took."""
    torch.cuda.synchronize(device)
    free_before = torch.cuda.mem_get_info(device)[0]
    start = time.perf_counter()
    pool = torch.cuda.graph_pool_handle()
    side = torch.cuda.Stream(device)
    graphs: dict[Any, torch.cuda.CUDAGraph] = {}
    outputs: dict[Any, torch.Tensor] = {}
    for key in sorted(keys, reverse=True):
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            forward(key)
            forward(key)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs[key] = forward(key)
        graphs[key] = graph
    torch.cuda.synchronize(device)
    return (graphs, outputs, time.perf_counter() - start,
            free_before - torch.cuda.mem_get_info(device)[0])


class DecodeGraphs:
    """Captured decode steps; `run` replays one and returns its float32 logits [n, vocab]."""

    def __init__(self, runner: LlamaRunner, cache: list[tuple[torch.Tensor, torch.Tensor]],
                 block_size: int, scratch_block: int, max_blocks: int,
                 buckets: Sequence[int],
                 kernel: Callable[..., torch.Tensor] = paged_decode,
                 rope_kv: Callable[..., torch.Tensor] | None = None,
                 lora_form: str | None = None) -> None:
        self.runner, self.cache = runner, cache
        self.lora_form = lora_form  # None: the LoRA cache's default form
        self.kernel = kernel
        # the fused RoPE + K/V write beside the Triton kernel; its torch reference otherwise
        self.rope_kv = rope_kv or (rope_write_kv if kernel is paged_decode
                                   else reference_rope_write_kv)
        self.block_size, self.scratch_block = block_size, scratch_block
        self.max_blocks = max_blocks
        self.buckets = sorted(set(buckets))
        self.max_batch = self.buckets[-1]
        self._pad = torch.tensor([0, 0, scratch_block * block_size, 1, 0]
                                 + [scratch_block] * max_blocks, dtype=torch.long)
        host = self._pad.repeat(self.max_batch, 1)
        self._hosts = [host.pin_memory() if runner.device.type == "cuda" else host,
                       host.clone().pin_memory() if runner.device.type == "cuda"
                       else host.clone()]
        self._turn = 0
        self._dev = host.to(runner.device)
        # (bucket, with adapter rows) -> graph, its logits
        self._graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self._logits: dict[tuple[int, bool], torch.Tensor] = {}
        self.variants = (False, True) if runner.lora is not None else (False,)
        self.capture_s = 0.0
        self.capture_bytes = 0

    def _meta(self, b: int) -> StepMeta:
        buf = self._dev[:b]
        return StepMeta(slot_mapping=buf[:, 2], num_decode=b,
                        decode_tables=buf[:, _META_COLS:], decode_mask=None, prefills=[],
                        decode_kernel=self.kernel, decode_lens=buf[:, 3],
                        rope_kv_kernel=self.rope_kv)

    def _forward(self, b: int, lora: bool = False) -> torch.Tensor:
        buf = self._dev[:b]
        rows = torch.arange(b, device=self.runner.device)
        step = self.runner.lora.dense(buf[:, 4], self.lora_form) if lora else None
        return self.runner.forward(buf[:, 0], buf[:, 1], self._meta(b), self.cache, rows, step)

    def capture(self) -> None:
        """Warm up and capture every bucket, largest first (they share one memory pool)."""
        keys = [(b, lora) for b in self.buckets for lora in self.variants]
        self._graphs, self._logits, self.capture_s, self.capture_bytes = capture_all(
            lambda key: self._forward(*key), keys, self.runner.device)
        log.info("captured %d decode CUDA graphs (batch %s) in %.1f s, %.0f MiB of GPU memory",
                 len(self._graphs), ",".join(map(str, self.buckets)), self.capture_s,
                 self.capture_bytes / 2**20)

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def run(self, ids: list[int], positions: list[int], slots: list[int],
            tables: list[list[int]], lens: list[int],
            prev: tuple[torch.Tensor, list[int]] | None = None,
            lora_slots: list[int] | None = None) -> torch.Tensor:
        """n decode rows (n <= max_batch) -> logits [n, vocab] (a view of the graph's output,
        valid until the next `run`). `prev` = (tokens on the device, source row of each row):
        the rows' token ids are taken from there on the GPU (their `ids` are ignored then);
        a row whose source is -1 keeps its id from `ids`.
        `lora_slots`: each row's adapter slot (0: the base; needs `runner.lora`)."""
        n = len(ids)
        b = self.bucket(n)
        bs = self.block_size
        used = [-(-length // bs) for length in lens]
        width = max(used)
        scratch = int(self._pad[_META_COLS])
        # the copy out of this buffer two steps ago is done: that step's tokens were read back
        host = self._hosts[self._turn]
        self._turn ^= 1
        lora = bool(lora_slots) and any(lora_slots)
        host[:n, :_META_COLS] = torch.tensor(
            [ids, positions, slots, lens, lora_slots if lora else [0] * n]).T
        host[:n, _META_COLS:_META_COLS + width] = torch.tensor(
            [t[:u] + [scratch] * (width - u) for t, u in zip(tables, used, strict=True)])
        if b > n:
            host[n:b] = self._pad
        self._dev[:b].copy_(host[:b], non_blocking=True)
        if prev is not None:
            tokens, src = prev
            if src == list(range(n)):
                self._dev[:n, 0].copy_(tokens[:n])
            else:  # rows with source -1 keep their host ids (new prompts' tokens)
                rows = [i for i, s in enumerate(src) if s >= 0]
                dev = tokens.device
                self._dev[to_device(rows, dev), 0] = tokens[to_device([src[i] for i in rows],
                                                                      dev)]
        graph = self._graphs.get((b, lora))
        if graph is None:  # not captured (CPU tests): the same static-shape step, eagerly
            return self._forward(b, lora)[:n]
        graph.replay()
        return self._logits[b, lora][:n]
