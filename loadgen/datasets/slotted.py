"""What the synthetic and folder datasets share: prompts asked round-robin, and images given by
the slot rules of `loadgen.datasets.slots` (pool, repeat ratio, fresh images).

Request r of a stream asks prompts[r % len(prompts)] (every prompt is asked equally often and a
replay asks the same prompts in the same order) and shows the images of slots r*k .. r*k+k-1;
with a range or weighted counts (`images_per_request_spec`) it shows its drawn count of images,
in the slots that follow the previous request's (`loadgen.datasets.mix.RequestSlots`).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable

from loadgen.config import ImagesConfig, WorkloadConfig
from loadgen.datasets.base import ImageBuilder, RequestInputs
from loadgen.datasets.images import ImageItem
from loadgen.datasets.mix import RequestSlots, count_of_spec
from loadgen.datasets.slots import SlotSequence
from loadgen.schedule import derive_seed

_new = tuple.__new__


class SlottedStream:
    def __init__(
        self,
        cfg: WorkloadConfig,
        seed: int,
        builder: ImageBuilder,
        built: dict[int, ImageItem],
        files: int | None,
    ) -> None:
        images = cfg.images
        self.builder = builder
        self.built = built
        self._prompts = cfg.prompts
        self._k = cfg.images_per_request
        self._slots = SlotSequence(
            seed=seed,
            pool_size=images.pool_size,
            repeat_ratio=images.repeat_ratio,
            universe=files,
        )
        self.universe = images.pool_size or files
        spec = cfg.images_per_request_spec
        self._spans = RequestSlots(count_of_spec(spec), seed) if spec else None
        if self._spans is None:
            period = body_period(images, self.universe, self._k, len(cfg.prompts))
            least = self._k
        else:  # drawn counts: no period, and a request may have no image
            period, least = None, self._spans.least
        fresh = self.universe is None and not images.repeat_ratio
        self._bodies = BodyNumbers(self._keys, cfg.prompts, period, fresh, least)

    def inputs(self, r: int) -> RequestInputs:
        if self._spans is None:  # inline: the hot path of a fixed count
            first = r * self._k
            keys = tuple(map(self._slots.key, range(first, first + self._k)))
        else:
            keys = tuple(map(self._slots.key, self._spans.span(r)))
        # tuple.__new__ skips the named tuple's Python-level __new__: a fifth of a body's cost
        return _new(RequestInputs, (self._prompts[r % len(self._prompts)], keys, None))

    def _keys(self, r: int) -> tuple[int, ...]:
        if self._spans is None:
            first = r * self._k
            return tuple(map(self._slots.key, range(first, first + self._k)))
        return tuple(map(self._slots.key, self._spans.span(r)))

    def body_number(self, r: int) -> int:
        return self._bodies.number(r)


class SlottedDataset:
    """A dataset of `SlottedStream`s; a subclass says how images are built and how many
    distinct ones there are."""

    def __init__(self, cfg: WorkloadConfig, seed: int) -> None:
        if not cfg.prompts:
            raise ValueError("a workload needs at least one prompt")
        self.config = cfg
        self.seed = seed
        self.skipped: list[str] = []

    def stream(self, kind: str, phase: str) -> SlottedStream:
        seed = derive_seed(self.seed, kind, phase)
        builder = self._builder(kind, phase, seed)
        return SlottedStream(self.config, seed, builder, self._built(), self._files())

    def _builder(self, kind: str, phase: str, seed: int) -> ImageBuilder:
        raise NotImplementedError

    def _built(self) -> dict[int, ImageItem]:
        """Where a stream keeps its built images (each its own, unless they are shared)."""
        return {}

    def _files(self) -> int | None:
        """A finite universe of images (fresh keys wrap around after it), or None."""
        return None


class BodyNumbers:
    """Request r's body number: the first request of the stream with byte-identical body.
    Equal numbers mean equal bodies, so distinct numbers count distinct bodies; the numbers are
    small and dense, which keeps the phase summary's record of them to about a bit each."""

    def __init__(
        self,
        keys: Callable[[int], tuple[int, ...]],
        prompts: tuple[str, ...],
        period: int | None,
        fresh: bool,
        least: int,
    ) -> None:
        self._keys = keys  # request r's image keys
        first: dict[str, int] = {}
        self._prompt = [first.setdefault(p, n) for n, p in enumerate(prompts)]
        # A fresh image in every slot: no two requests with an image share a body, and with at
        # least one image in every request no two requests do, whatever the prompts.
        self._fresh = fresh
        self._unique = fresh and least > 0
        self._period = period
        self._numbers = array("q")  # of requests 0 .. scanned-1
        self._first: dict[tuple[int, ...], int] = {}

    def number(self, r: int) -> int:
        if self._unique:
            return r
        if self._period is not None:
            r %= self._period
        while len(self._numbers) <= r:
            n = len(self._numbers)
            keys = self._keys(n)
            if self._fresh and keys:
                self._numbers.append(n)
                continue
            body = (self._prompt[n % len(self._prompt)], *keys)
            self._numbers.append(self._first.setdefault(body, n))
        return self._numbers[r]


def body_period(images: ImagesConfig, universe: int | None, k: int, prompts: int) -> int | None:
    """A period of the bodies' sequence (bodies r and r + period are identical), or None when
    there is none (fresh images forever, or random reuse)."""
    if images.repeat_ratio:
        return None
    if k == 0:
        return prompts
    if universe is None:
        return None
    # Slot j shows fresh key j mod U (through the pool's fixed order): request r's keys repeat
    # every U / gcd(U, k) requests, its prompt every len(prompts).
    return math.lcm(prompts, universe // math.gcd(universe, k))
