"""Which images and bodies a phase's requests carried: exact sets, merged by union across shards.

Image ids of synthetic images end in their key (`syn-<seed>-<phase>-<key>`), and body numbers are
small integers (`RequestRecord.body`), both dense from 0; they are kept as bitmaps, about a bit a
request, so a long run's summary state stays small. Any other id (a file name) is kept as it is:
a folder has few files.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping
from typing import Any

from loadgen.records import RequestRecord


def _set_bit(bits: bytearray, n: int) -> None:
    byte = n >> 3
    if byte >= len(bits):
        bits.extend(bytes(max(byte + 1 - len(bits), len(bits))))  # doubling: amortized O(1)
    bits[byte] |= 1 << (n & 7)


def _count(bits: bytearray) -> int:
    return int.from_bytes(bits, "little").bit_count()


def _union(a: bytearray, b: bytearray) -> bytearray:
    size = max(len(a), len(b))
    return bytearray(
        (int.from_bytes(a, "little") | int.from_bytes(b, "little")).to_bytes(size, "little")
    )


def _pack(bits: bytearray) -> str:
    return base64.b64encode(zlib.compress(bytes(bits).rstrip(b"\0"))).decode("ascii")


def _unpack(text: str) -> bytearray:
    return bytearray(zlib.decompress(base64.b64decode(text)))


def _numbered(image_id: str) -> tuple[str, int] | None:
    """(prefix, key) of an id that ends in a canonical decimal number after a dash."""
    prefix, dash, tail = image_id.rpartition("-")
    if dash and tail.isascii() and tail.isdigit() and (tail == "0" or tail[0] != "0"):
        return prefix, int(tail)
    return None


class DistinctSent:
    """Distinct image ids and body numbers over a phase's requests, and the images shown."""

    __slots__ = ("_bodies", "_images", "_names", "numbered_bodies", "shown", "wait_us", "waits")

    def __init__(self) -> None:
        self.shown = 0  # image slots over all requests (an image shown twice counts twice)
        self.numbered_bodies = 0  # requests that carried a body number
        self._images: dict[str, bytearray] = {}  # prefix -> keys shown
        self._names: set[str] = set()  # other ids
        self._bodies = bytearray()
        self.waits = 0  # requests that waited for their body to be built
        self.wait_us = 0  # how long they waited, in all

    def waited(self, requests: int, microseconds: int) -> None:
        """Requests of this shard that waited for their body, told by the shard at the end."""
        self.waits += requests
        self.wait_us += microseconds

    def add(self, rec: RequestRecord) -> None:
        self.shown += len(rec.images)
        for image_id in rec.images:
            numbered = _numbered(image_id)
            if numbered is None:
                self._names.add(image_id)
            else:
                prefix, key = numbered
                bits = self._images.get(prefix)
                if bits is None:
                    bits = self._images[prefix] = bytearray()
                _set_bit(bits, key)
        if rec.body is not None:
            self.numbered_bodies += 1
            _set_bit(self._bodies, rec.body)

    def merge(self, other: DistinctSent) -> None:
        self.shown += other.shown
        self.numbered_bodies += other.numbered_bodies
        self.waits += other.waits
        self.wait_us += other.wait_us
        for prefix, bits in other._images.items():
            mine = self._images.get(prefix)
            self._images[prefix] = bytearray(bits) if mine is None else _union(mine, bits)
        self._names |= other._names
        self._bodies = _union(self._bodies, other._bodies)

    @property
    def images(self) -> int:
        return sum(_count(bits) for bits in self._images.values()) + len(self._names)

    @property
    def bodies(self) -> int | None:
        """Distinct bodies; None when no request carried a body number."""
        return _count(self._bodies) if self.numbered_bodies else None

    def to_state(self) -> dict[str, Any]:
        return {
            "shown": self.shown,
            "numbered_bodies": self.numbered_bodies,
            "images": {prefix: _pack(bits) for prefix, bits in sorted(self._images.items())},
            "names": sorted(self._names),
            "bodies": _pack(self._bodies),
            "waits": self.waits,
            "wait_us": self.wait_us,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> DistinctSent:
        out = cls()
        out.shown = int(state["shown"])
        out.numbered_bodies = int(state["numbered_bodies"])
        out._images = {str(p): _unpack(t) for p, t in state["images"].items()}
        out._names = {str(n) for n in state["names"]}
        out._bodies = _unpack(state["bodies"])
        out.waits = int(state["waits"])
        out.wait_us = int(state["wait_us"])
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "images_shown": self.shown,
            "distinct_images": self.images,
            "distinct_bodies": self.bodies,
            "waited_for_body": self.waits,
            "body_wait_s": self.wait_us / 1e6,
        }
