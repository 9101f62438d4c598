"""Which distinct image each image slot shows: the repetition rules of a workload.

Request i with k images per request fills image slots i*k .. i*k+k-1. Each slot maps to an image
key (an int naming one distinct image of the stream). The map is prefix-stable: slot j's key
depends only on the seed and j, never on how many slots are asked for, so a phase can be extended
(or replayed) without changing what earlier requests showed.

- pool_size P > 0: P keys, visited in one seeded shuffled order, cyclically (each image is used
  once before any repeats);
- repeat_ratio r > 0: each slot reuses, with probability r, a key drawn uniformly from the
  distinct keys already shown, else takes the next fresh key;
- neither: a fresh key for every slot.
Fresh keys are 0, 1, 2, ... (or the pool's order when P > 0). With a finite universe of images (a
folder of F files) fresh keys wrap around after F.
"""

from __future__ import annotations

import random
from array import array

from loadgen.schedule import derive_seed


class SlotSequence:
    def __init__(
        self, *, seed: int, pool_size: int, repeat_ratio: float, universe: int | None
    ) -> None:
        if pool_size < 0:
            raise ValueError(f"pool_size must be 0 or more, got {pool_size}")
        if not 0.0 <= repeat_ratio < 1.0:
            raise ValueError(f"repeat_ratio must be in [0, 1), got {repeat_ratio}")
        if universe is not None and universe < 1:
            raise ValueError("an image universe needs at least one image")
        if universe is not None and pool_size > universe:
            raise ValueError(f"pool_size {pool_size} exceeds the {universe} images available")
        self._universe = universe
        self._ratio = repeat_ratio
        self._pool: list[int] = []
        if pool_size:
            # Folder pools take the first P files by name; the order they are shown is shuffled.
            self._pool = list(range(pool_size))
            random.Random(derive_seed(seed, "pool")).shuffle(self._pool)
        self._rng = random.Random(derive_seed(seed, "repeat"))
        self._keys = array("q")  # drawn so far (repeat_ratio > 0 only)
        self._shown: list[int] = []  # distinct keys in order of first use
        self._seen: set[int] = set()
        self._fresh = 0

    def key(self, slot: int) -> int:
        if slot < 0:
            raise IndexError(f"negative image slot {slot}")
        if not self._ratio:
            return self._fresh_key(slot)
        while len(self._keys) <= slot:
            self._keys.append(self._draw())
        return self._keys[slot]

    def _fresh_key(self, n: int) -> int:
        if self._pool:
            return self._pool[n % len(self._pool)]
        return n if self._universe is None else n % self._universe

    def _draw(self) -> int:
        if self._shown and self._rng.random() < self._ratio:
            return self._shown[self._rng.randrange(len(self._shown))]
        key = self._fresh_key(self._fresh)
        self._fresh += 1
        if key not in self._seen:
            self._seen.add(key)
            self._shown.append(key)
        return key
