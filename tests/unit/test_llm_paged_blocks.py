"""The paged engine's block manager and scheduler, without a model."""

from __future__ import annotations

import pytest

from uip.llm.kv_blocks import BlockManager, BlockTable
from uip.llm.scheduler import Scheduler, Sequence


class Filled(BlockTable):
    cached: int = 0  # tokens found in the prefix cache


def filled(bm: BlockManager, tokens: list[int]) -> Filled:
    """A table holding `tokens` with their K/V written (as after a prefill)."""
    t = Filled()
    t.cached = bm.match_prefix(t, tokens)
    assert bm.ensure(t, len(tokens))
    bm.register_full_blocks(t, tokens, len(tokens))
    return t


def test_full_prompt_blocks_are_shared_by_hash():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = filled(bm, list(range(10)))  # 2 full blocks + 2 tokens
    assert bm.num_used == 3 and a.cached == 0
    b = filled(bm, list(range(8)) + [50, 51, 52])  # same first 2 blocks
    assert b.cached == 8
    assert b.blocks[:2] == a.blocks[:2] and b.blocks[2] != a.blocks[2]
    assert [bm.ref_count(x) for x in a.blocks[:2]] == [2, 2]
    assert bm.num_used == 4
    c = filled(bm, [0, 1, 2, 3, 9, 9, 9, 9, 1])  # only the first block matches
    assert c.cached == 4 and c.blocks[0] == a.blocks[0] and c.blocks[1] != a.blocks[1]
    assert bm.prefix_stats.hits == 3


def test_last_token_is_never_taken_from_the_cache():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = filled(bm, list(range(8)))
    b = filled(bm, list(range(8)))  # both blocks found: only the 8th token is recomputed
    assert b.cached == 7 and b.blocks == a.blocks and len(b.hashes) == 2
    assert filled(bm, list(range(9))).cached == 8  # its 9th token is in a block of its own


def test_freed_blocks_stay_cached_until_reused_lru():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = filled(bm, [1, 2, 3, 4, 5])
    kept = list(a.blocks)
    bm.free(a)
    assert bm.num_used == 0 and bm.num_free == 4
    b = filled(bm, [1, 2, 3, 4, 6])  # revives both cached blocks
    assert b.blocks[:2] == kept[:2] and b.cached == 4
    bm.free(b)
    # fresh blocks come from never-hashed ones first, then the oldest cached (a chain's tail)
    t = BlockTable()
    assert bm.ensure(t, 6)
    assert kept[0] not in t.blocks and kept[1] in t.blocks
    assert not bm.ensure(t, 10)  # all or nothing
    assert len(t.blocks) == 3
    bm.free(t)
    assert filled(bm, [1, 2, 3, 4, 7]).cached == 2  # the evicted 2nd block is gone


def test_prefix_caching_off_shares_nothing():
    bm = BlockManager(num_blocks=8, block_size=2, prefix_caching=False)
    a, b = filled(bm, [1, 2, 3, 4, 5]), filled(bm, [1, 2, 3, 4, 5])
    assert b.cached == 0 and not set(a.blocks) & set(b.blocks)
    bm.free(a)
    bm.free(b)
    assert bm.num_used == 0


def test_double_free_is_caught():
    bm = BlockManager(num_blocks=2, block_size=2)
    t = filled(bm, [1, 2, 3])
    blocks = list(t.blocks)
    bm.free(t)
    with pytest.raises(AssertionError):
        bm.free(BlockTable(blocks=blocks))


def drive(sched: Scheduler, seqs: list[Sequence], new_tokens: int, max_steps: int = 10_000
          ) -> int:
    """Run the scheduler with a fake model (token = position) until every sequence has
    `new_tokens` tokens; returns the steps taken."""
    for s in seqs:
        sched.add(s)
    for step in range(max_steps):
        if not sched.has_work():
            return step
        plan = sched.schedule()
        assert plan.chunks, "a step with work scheduled nothing"
        assert sum(c.length for c in plan.chunks) <= sched.max_batch_tokens
        assert len(sched.running) <= sched.max_running
        sched.complete(plan)
        for c in plan.chunks:
            if c.samples:
                c.seq.tokens.append(len(c.seq.tokens))
                if len(c.seq.generated) == new_tokens:
                    sched.remove(c.seq)
    raise AssertionError("the scheduler did not finish")


def test_scheduler_preempts_instead_of_deadlocking():
    bm = BlockManager(num_blocks=6, block_size=4)  # 24 slots; each sequence needs 16
    sched = Scheduler(bm, max_batch_tokens=8, max_running=4)
    seqs = [Sequence(i, [7] * 6, 6) for i in range(4)]
    drive(sched, seqs, new_tokens=10)
    assert sched.preemptions > 0
    assert all(s.generated == list(range(6, 16)) for s in seqs)
    assert bm.num_used == 0


def test_scheduler_chunks_prompts_to_the_token_budget():
    bm = BlockManager(num_blocks=16, block_size=4)
    sched = Scheduler(bm, max_batch_tokens=5, max_running=8)
    seq = Sequence(0, list(range(12)), 12)
    sched.add(seq)
    lengths = []
    while not seq.generated:
        plan = sched.schedule()
        lengths.append([c.length for c in plan.chunks])
        sched.complete(plan)
        if plan.chunks[0].samples:
            seq.tokens.append(0)
    assert lengths == [[5], [5], [2]]
