"""The KV cache as vLLM's V1 block pool sees it: fixed-size blocks, reference counts, and a prefix
cache of full blocks keyed by a hash chain over the prompt's tokens.

A freed block keeps its hash and stays findable until it is reused: free blocks form an LRU queue
(a request's blocks are freed tail first, so its prefix is evicted last), which is why a repeated
prompt hits even after the first request ended.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def block_hashes(keys: Sequence[int], block_size: int) -> list[int]:
    """Hash chain over the full blocks of `keys`: block i's hash covers blocks 0..i."""
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(keys) - block_size + 1, block_size):
        # Python's hash of a tuple of ints is stable across processes (no string hashing).
        parent = hash((parent, tuple(keys[start : start + block_size])))
        hashes.append(parent)
    return hashes


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[int, int] = {}  # block hash -> block id

    @property
    def num_free(self) -> int:
        return len(self._free)

    def usage(self) -> float:
        """Fraction of blocks in use by requests (cached but unreferenced blocks count as free)."""
        return 1.0 - len(self._free) / self.num_blocks

    def lookup(self, hashes: Sequence[int], max_blocks: int) -> list[int]:
        """Blocks holding the longest cached prefix of `hashes`, at most `max_blocks` of them."""
        if not self.enable_caching:
            return []
        found: list[int] = []
        for h in hashes[:max_blocks]:
            block = self._cached.get(h)
            if block is None:
                break
            found.append(block)
        return found

    def num_evictable(self, blocks: Sequence[int]) -> int:
        """How many of `blocks` sit in the free queue (taking them shrinks it)."""
        return sum(1 for b in blocks if self._ref[b] == 0)

    def touch(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            if self._ref[b] == 0:
                del self._free[b]
            self._ref[b] += 1

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"allocate({n}) with only {len(self._free)} free blocks")
        out: list[int] = []
        for _ in range(n):
            b, _ = self._free.popitem(last=False)
            h = self._hash[b]
            if h is not None:
                if self._cached.get(h) == b:
                    del self._cached[h]
                self._hash[b] = None
            self._ref[b] = 1
            out.append(b)
        return out

    def free(self, blocks: Sequence[int]) -> None:
        for b in reversed(blocks):
            self._ref[b] -= 1
            if self._ref[b] == 0:
                self._free[b] = None

    def cache_block(self, block: int, block_hash: int) -> None:
        if not self.enable_caching or block_hash in self._cached:
            return
        self._cached[block_hash] = block
        self._hash[block] = block_hash
