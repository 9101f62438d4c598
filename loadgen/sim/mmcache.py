"""The multimodal processor cache: processed images kept by content hash, LRU within a byte budget.

vLLM sizes it in GiB (`--mm-processor-cache-gb`); an entry's size here is what Qwen2-VL's
processed pixel values would take: per image token, 4 patches of 2x3x14x14 float32 values.
"""

from __future__ import annotations

from collections import OrderedDict

BYTES_PER_IMAGE_TOKEN = 4 * 2 * 3 * 14 * 14 * 4  # 18816


class MultiModalCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[int, int] = OrderedDict()  # hash -> size in bytes
        self._used = 0

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    def query(self, content_hash: int, tokens: int) -> bool:
        """True on a hit. A miss inserts the item (if it fits), evicting least recently used."""
        if not self.enabled:
            return False
        if content_hash in self._entries:
            self._entries.move_to_end(content_hash)
            return True
        size = tokens * BYTES_PER_IMAGE_TOKEN
        if size > self.capacity_bytes:
            return False
        while self._used + size > self.capacity_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._used -= evicted
        self._entries[content_hash] = size
        self._used += size
        return False
