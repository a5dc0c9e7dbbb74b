"""KV cache block manager of the paged engine (pure Python, no tensors).

The cache holds `num_blocks` blocks of `block_size` token slots (sized from the spec, never
from host RAM). Each sequence owns a `BlockTable`: the ids of its blocks, in order. With prefix
caching, a *full* block whose K/V has been written is registered under a chain hash of
(parent block's hash, its token ids), so a later sequence with the same token prefix reuses it
(ref counted) instead of recomputing. A block whose ref count drops to zero keeps its hash and
goes to an LRU pool: it is reused as is on a hit, or evicted (oldest first) when a fresh block
is needed and no never-hashed free block is left.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass, field


def chain_hash(parent: bytes | None, tokens: list[int]) -> bytes:
    """The hash of one full block: its tokens and, through `parent`, every token before it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"\0")
    h.update(array("q", tokens).tobytes())
    return h.digest()


@dataclass
class BlockTable:
    """One sequence's blocks; `hashes[i]` is the chain hash of block i once it is registered."""

    blocks: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    salt: bytes | None = None  # the chain's root: K/V computed under another LoRA adapter differ


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt blocks looked up
    hits: int = 0  # prompt blocks found in the cache


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._ref = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        self._plain: deque[int] = deque(range(num_blocks))  # free, no hash
        self._lru: OrderedDict[int, None] = OrderedDict()  # free, hashed; oldest first
        self._cached: dict[bytes, int] = {}  # hash -> block
        self.prefix_stats = PrefixCacheStats()

    # ------------------------------------------------------------------ accounting

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (hashed free blocks are evictable)."""
        return len(self._plain) + len(self._lru)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    # ------------------------------------------------------------------ prefix cache

    def match_prefix(self, table: BlockTable, tokens: list[int]) -> int:
        """Attach the cached full blocks that start `tokens` to an empty table; returns the
        number of tokens covered. The last token is never covered (its logits are needed):
        when the whole prompt is found, it is recomputed alone, its K/V already in the
        cache (the runtime writes it to its scratch slot: a hashed block is never written)."""
        assert not table.blocks, "match_prefix needs an empty block table"
        if not self.prefix_caching:
            return 0
        bs = self.block_size
        parent: bytes | None = table.salt
        for i in range(len(tokens) // bs):
            h = chain_hash(parent, tokens[i * bs:(i + 1) * bs])
            self.prefix_stats.queries += 1
            block = self._cached.get(h)
            if block is None:
                break
            self.prefix_stats.hits += 1
            self._take(block)
            table.blocks.append(block)
            table.hashes.append(h)
            parent = h
        return min(len(table.blocks) * bs, len(tokens) - 1)

    def register_full_blocks(self, table: BlockTable, tokens: list[int], num_computed: int
                             ) -> None:
        """Hash the blocks that became full once `num_computed` tokens' K/V are written."""
        if not self.prefix_caching:
            return
        bs = self.block_size
        for i in range(len(table.hashes), min(num_computed // bs, len(table.blocks))):
            parent = table.hashes[-1] if table.hashes else table.salt
            h = chain_hash(parent, tokens[i * bs:(i + 1) * bs])
            table.hashes.append(h)
            block = table.blocks[i]
            if h not in self._cached and self._hash[block] is None:
                self._cached[h] = block
                self._hash[block] = h

    # ------------------------------------------------------------------ allocation

    def ensure(self, table: BlockTable, num_tokens: int) -> bool:
        """Grow `table` to hold `num_tokens` tokens; all or nothing (False: not enough free)."""
        need = self.blocks_for(num_tokens) - len(table.blocks)
        if need <= 0:
            return True
        if need > self.num_free:
            return False
        for _ in range(need):
            table.blocks.append(self._fresh())
        return True

    def free(self, table: BlockTable) -> None:
        """Release a table's blocks (tail first, so a chain's tail is evicted before its head)."""
        for block in reversed(table.blocks):
            self._ref[block] -= 1
            assert self._ref[block] >= 0, f"block {block} freed twice"
            if self._ref[block] == 0:
                if self._hash[block] is not None:
                    self._lru[block] = None
                else:
                    self._plain.append(block)
        table.blocks.clear()
        table.hashes.clear()

    def _take(self, block: int) -> None:
        if self._ref[block] == 0:
            del self._lru[block]
        self._ref[block] += 1

    def _fresh(self) -> int:
        if self._plain:
            block = self._plain.popleft()
        else:
            block, _ = self._lru.popitem(last=False)
            h = self._hash[block]
            if h is not None and self._cached.get(h) == block:
                del self._cached[h]
            self._hash[block] = None
        self._ref[block] = 1
        return block
