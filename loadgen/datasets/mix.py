"""Mixes of synthetic images and of images per request: what each request gets, drawn per
request from the scenario's seed, so any shard (on any host) draws the same for request i.

    [workload.images]
    mix = [
      { size = "448x336", format = "jpeg", weight = 60 },
      { size = "1280x720", format = "png", weight = 30 },
      { size = "20x20", weight = 10 },          # format and content: the table's own
    ]
    [workload]
    images_per_request = 2                      # always 2
    images_per_request = { min = 1, max = 4 }   # 1 to 4, each as likely
    images_per_request = { 1 = 70, 3 = 30 }     # 1 in 70 % of requests, 3 in 30 %

Weights need not sum to 100: each is a share of their sum (vLLM's random-mm normalizes its
bucket probabilities the same way). Pure: no I/O; parsing errors are ValueError with the key.

How a stream uses them (`loadgen.datasets.slotted`, `loadgen.datasets.synthetic`):
- request r carries `count.draw(uniform(stream seed, COUNT_STREAM, r))` images, in the image
  slots start(r) .. start(r) + count - 1 where start(r) is the sum of the counts of the requests
  before it (`RequestSlots`): slots stay contiguous, so a pool is still shown in turn and fresh
  images are still numbered 0, 1, 2, ..., and request r's slots depend only on the seed and r;
- image key k (one distinct image) is of variant `variant_of(mix, seed, k, pool)`: the key alone
  decides its size, format and content, so a worker process builds it without asking anyone.
  A pool's P images take the shares as exactly as P allows; fresh images draw theirs.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import re
import tomllib
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar, get_args

from loadgen.config import MAX_IMAGES_PER_REQUEST, ImageContent, ImageFormat, ImageMixEntry

MAX_SIDE: Final = 16_384
MAX_VARIANTS: Final = 256
MAX_WEIGHT: Final = 1e300  # so that a sum of weights stays finite
T = TypeVar("T")
# The names of the uniform draws (`uniform`'s `stream`): a request's image count, a key's variant.
COUNT_STREAM: Final = "images_per_request"
VARIANT_STREAM: Final = "image_variant"
_SIZE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")


@dataclass(frozen=True, slots=True)
class ImageVariant:
    width: int
    height: int
    format: ImageFormat
    content: ImageContent
    weight: float

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}-{self.format}-{self.content}"


@dataclass(frozen=True, slots=True)
class Weighted(Generic[T]):
    """Values with weights, drawn by one uniform number in [0, 1)."""

    values: tuple[T, ...]
    cumulative: tuple[float, ...]  # running shares, the last one 1.0

    @classmethod
    def of(cls, pairs: Sequence[tuple[T, float]]) -> Weighted[T]:
        total = sum(w for _, w in pairs)
        running = [x / total for x in itertools.accumulate(w for _, w in pairs)]
        running[-1] = 1.0
        return cls(tuple(v for v, _ in pairs), tuple(running))

    def pick(self, u: float) -> T:
        return self.values[min(bisect.bisect_right(self.cumulative, u), len(self.values) - 1)]

    def share(self, value: T) -> float:
        """The probability of `value` (for reports: the mix as asked)."""
        out, previous = 0.0, 0.0
        for v, c in zip(self.values, self.cumulative, strict=True):
            if v == value:
                out += c - previous
            previous = c
        return out


@dataclass(frozen=True, slots=True)
class ImageCount:
    """How many images a request carries: fixed, a range, or weighted counts."""

    choices: Weighted[int]
    spec: str  # as it would be written back in a scenario file

    @property
    def most(self) -> int:
        return max(self.choices.values)

    @property
    def mean(self) -> float:
        return sum(v * self.choices.share(v) for v in set(self.choices.values))

    def draw(self, u: float) -> int:
        return self.choices.pick(u)


def uniform(seed: int, stream: str, index: int) -> float:
    """A number in [0, 1) for request `index` of `stream`: the same in every process and host."""
    digest = hashlib.blake2b(f"{seed}\x1f{stream}\x1f{index}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)


def parse_count(value: object, most: int) -> ImageCount:
    """`images_per_request`: an integer, {min, max}, or {count = weight, ...}."""
    if type(value) is int:
        _count_in_range(value, most, "")
        return ImageCount(Weighted.of([(value, 1.0)]), str(value))
    if not isinstance(value, Mapping) or not value:
        raise ValueError("expected a whole number, { min = A, max = B } or { count = weight, ... }")
    if set(value) == {"min", "max"}:
        low, high = value["min"], value["max"]
        for key, n in (("min", low), ("max", high)):
            if type(n) is not int:
                raise ValueError(f"{key}: expected a whole number, got {n!r}")
            _count_in_range(n, most, f"{key}: ")
        if low > high:
            raise ValueError(f"min ({low}) is above max ({high})")
        pairs = [(n, 1.0) for n in range(low, high + 1)]
        return ImageCount(Weighted.of(pairs), f"{{ min = {low}, max = {high} }}")
    pairs = []
    for key, weight in value.items():
        if not isinstance(key, str) or not key.isdigit():
            raise ValueError(f"{key!r}: expected min/max, or image counts (0, 1, 2, ...) as keys")
        _count_in_range(int(key), most, f"{key}: ")
        pairs.append((int(key), _weight(weight, key)))
    pairs.sort()
    spec = "{ " + ", ".join(f"{n} = {_num(w)}" for n, w in pairs) + " }"
    return ImageCount(Weighted.of(pairs), spec)


def parse_mix(items: object, fmt: ImageFormat, content: ImageContent) -> Weighted[ImageVariant]:
    """`images.mix`: a list of { size, format?, content?, weight } tables."""
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        raise ValueError('expected a list of { size = "WxH", format?, content?, weight }')
    if len(items) > MAX_VARIANTS:
        raise ValueError(f"{len(items)} entries; at most {MAX_VARIANTS}")
    pairs = [_variant(k, item, fmt, content) for k, item in enumerate(items)]
    return Weighted.of([(v, v.weight) for v in pairs])


def _variant(k: int, item: object, fmt: ImageFormat, content: ImageContent) -> ImageVariant:
    where = f"[{k}]"
    if not isinstance(item, Mapping):
        raise ValueError(f'{where}: expected a table {{ size = "WxH", weight = N, ... }}')
    unknown = sorted(set(item) - {"size", "format", "content", "weight"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    size = item.get("size")
    match = _SIZE.fullmatch(size) if isinstance(size, str) else None
    if match is None:
        raise ValueError(f'{where}.size: expected "WIDTHxHEIGHT" such as "448x336", got {size!r}')
    width, height = int(match[1]), int(match[2])
    if max(width, height) > MAX_SIDE:
        raise ValueError(f"{where}.size: sides up to {MAX_SIDE} pixels")
    f = item.get("format", fmt)
    if f not in get_args(ImageFormat):
        raise ValueError(f"{where}.format: one of {', '.join(get_args(ImageFormat))}, got {f!r}")
    c = item.get("content", content)
    if c not in get_args(ImageContent):
        raise ValueError(f"{where}.content: one of {', '.join(get_args(ImageContent))}, got {c!r}")
    return ImageVariant(width, height, f, c, _weight(item.get("weight", 1), f"{where}.weight"))


def _weight(value: object, where: str) -> float:
    weight = math.nan
    if type(value) in (int, float):
        try:
            weight = float(value)  # type: ignore[arg-type]
        except OverflowError:  # an integer past any float
            weight = math.inf
    if not 0 < weight < MAX_WEIGHT:
        raise ValueError(f"{where}: a weight is a number above 0 (up to 1e300), got {value!r}")
    return weight


def _count_in_range(n: int, most: int, where: str) -> None:
    if not 0 <= n <= most:
        raise ValueError(f"{where}expected 0 to {most} images, got {n}")


def _num(x: float) -> str:
    return str(int(x)) if x.is_integer() else repr(x)


def mix_entries(mix: Weighted[ImageVariant]) -> tuple[ImageMixEntry, ...]:
    """A parsed mix as the configuration keeps it (format and content resolved)."""
    return tuple(
        ImageMixEntry(f"{v.width}x{v.height}", v.format, v.content, v.weight) for v in mix.values
    )


def mix_of(entries: Sequence[ImageMixEntry]) -> Weighted[ImageVariant]:
    """The configuration's mix as variants to draw from (checked again: it may come from JSON)."""
    items = [
        {"size": e.size, "format": e.format, "content": e.content, "weight": e.weight}
        for e in entries
    ]
    return parse_mix(items, "jpeg", "photo")


def variant_of(mix: Weighted[ImageVariant], seed: int, key: int, pool: int) -> ImageVariant:
    """The variant of image `key` of a stream: keys 0 .. pool-1 of a pool take the shares in
    blocks, as exactly as `pool` allows (the pool is shown in a shuffled order); other keys
    draw theirs."""
    if 0 <= key < pool:
        return mix.pick((key + 0.5) / pool)
    return mix.pick(uniform(seed, VARIANT_STREAM, key))


def count_of_spec(spec: str) -> ImageCount:
    """`ImageCount.spec` (TOML inline-table text) read back."""
    return parse_count(spec_value(spec), MAX_IMAGES_PER_REQUEST)


def spec_value(spec: str) -> object:
    """`ImageCount.spec` as the TOML value it is written as (an int or a table)."""
    try:
        return tomllib.loads(f"v = {spec}")["v"]
    except tomllib.TOMLDecodeError:
        raise ValueError(f"not an images_per_request value: {spec!r}") from None


class RequestSlots:
    """The image slots of each request of a stream whose counts are drawn: request r fills
    slots start(r) .. start(r) + count(r) - 1, start(r) the sum of the counts before it. The
    starts are computed in order and kept (8 bytes a request); only the seed and r decide them,
    so every shard agrees on every request."""

    def __init__(self, counts: ImageCount, seed: int) -> None:
        self._counts = counts
        self._seed = seed
        self._starts = array("q", [0])  # start(0), start(1), ...: one more than counted

    @property
    def least(self) -> int:
        return min(self._counts.choices.values)

    def count(self, r: int) -> int:
        return self._counts.draw(uniform(self._seed, COUNT_STREAM, r))

    def span(self, r: int) -> range:
        if r < 0:
            raise IndexError(f"negative request number {r}")
        starts = self._starts
        while len(starts) <= r + 1:
            n = len(starts) - 1
            starts.append(starts[n] + self.count(n))
        return range(starts[r], starts[r + 1])


def describe_mix(mix: Weighted[ImageVariant], quality: int) -> str:
    """The mix for the console: `mix of 3: 60% 448x336 jpeg photo, ...`, shares as asked."""
    parts = ", ".join(
        f"{mix.share(v):.0%} {v.width}x{v.height} {v.format} {v.content}" for v in mix.values
    )
    lossy = any(v.format != "png" for v in mix.values)
    return f"mix of {len(mix.values)}: {parts}{f', q{quality}' if lossy else ''}"


def describe_counts(spec: str) -> str:
    """Drawn images per request for the console: `{ 1 = 70, 3 = 30 } images a request, 1.6 on
    average`."""
    return f"{spec} images a request, {count_of_spec(spec).mean:.3g} on average"
