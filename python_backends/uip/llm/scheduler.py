"""Step scheduler of the paged engine (pure Python; one engine thread calls it).

Each step: every running sequence gets its next tokens first (one for a decoding sequence, the
next chunk for one still in prefill), oldest first; then waiting sequences are admitted FIFO
while the token budget (`max_batch_tokens`), the running limit and the free KV blocks allow,
their prompts chunked to the budget. When a running sequence needs a block and none is free,
the newest running sequence is preempted: its blocks are freed and it waits at the head of the
queue to be recomputed (prompt + tokens generated so far; with prefix caching most of it is
found again). Requests are validated to fit the whole cache alone, so the oldest sequence can
always proceed: no deadlock, no crash.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from uip.llm.kv_blocks import BlockManager, BlockTable


@dataclass(eq=False)
class Sequence:
    seq_id: int
    tokens: list[int]  # prompt + generated so far
    prompt_len: int
    owner: Any = None  # the runtime's request state
    table: BlockTable = field(default_factory=BlockTable)
    num_computed: int = 0  # tokens whose K/V is in the cache

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:]


@dataclass
class Chunk:
    seq: Sequence
    start: int  # first token position of this chunk
    length: int

    @property
    def samples(self) -> bool:
        """The chunk ends at the sequence's last token: its logits give the next token."""
        return self.start + self.length == len(self.seq.tokens)

    @property
    def is_decode(self) -> bool:
        return self.length == 1 and self.start > 0


@dataclass
class StepPlan:
    chunks: list[Chunk]  # decode chunks first, then prefill chunks
    preempted: list[Sequence]


class Scheduler:
    def __init__(self, blocks: BlockManager, max_batch_tokens: int, max_running: int) -> None:
        if max_batch_tokens < 1 or max_running < 1:
            raise ValueError("max_batch_tokens and max_running must be >= 1")
        self.blocks = blocks
        self.max_batch_tokens = max_batch_tokens
        self.max_running = max_running
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # oldest admission first
        self.preemptions = 0

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or cancelled sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq.table)

    def schedule(self) -> StepPlan:
        budget = self.max_batch_tokens
        chunks: list[Chunk] = []
        preempted: list[Sequence] = []
        for seq in list(self.running):
            if budget == 0:
                break
            if seq not in self.running:  # preempted earlier in this step
                continue
            n = min(len(seq.tokens) - seq.num_computed, budget)
            if n <= 0:  # nothing new (a cancelled sequence about to be removed)
                continue
            while not self.blocks.ensure(seq.table, seq.num_computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq in self.running:
                chunks.append(Chunk(seq, seq.num_computed, n))
                budget -= n
        if not preempted:
            budget = self._admit(chunks, budget)
        # decodes first; prefill chunks of one start and length side by side (batched attention)
        chunks.sort(key=lambda c: (False, 0, 0) if c.is_decode else (True, c.start, c.length))
        return StepPlan(chunks, preempted)

    def _admit(self, chunks: list[Chunk], budget: int) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            seq = self.waiting[0]
            if not seq.table.blocks:
                seq.num_computed = self.blocks.match_prefix(seq.table, seq.tokens)
            n = min(len(seq.tokens) - seq.num_computed, budget)
            if not self.blocks.ensure(seq.table, seq.num_computed + n):
                self.blocks.free(seq.table)  # do not hold cached blocks while waiting
                seq.num_computed = 0
                break
            self.waiting.popleft()
            self.running.append(seq)
            chunks.append(Chunk(seq, seq.num_computed, n))
            budget -= n
        return budget

    def complete(self, plan: StepPlan) -> None:
        """The step ran: its tokens' K/V is in the cache."""
        for c in plan.chunks:
            c.seq.num_computed = c.start + c.length
            self.blocks.register_full_blocks(c.seq.table, c.seq.tokens, c.seq.num_computed)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.table)
        seq.num_computed = 0
        self.waiting.appendleft(seq)
        self.preemptions += 1
