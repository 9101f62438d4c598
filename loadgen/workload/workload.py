"""A run's workload: the images each phase needs, built before it is measured, and its bodies.

Streams. Images come from named streams: each phase has its own (seeded by the scenario seed and
the phase name), and so does each phase's warm-up, so warm-up never pre-warms measured images and
two phases never share images by accident. A phase with `repeat_of` reads the stream of the phase
it replays. With a folder source all streams draw from the same files.

Requests. Request i of a phase is request i of its stream, and nothing else: a request past the
count a phase was prepared for is an error, never a silent replay of an earlier one. A phase
whose count is unknown beforehand (a closed loop bounded only by time) is prepared with
`count=None`: when its images are finite (a pool, a folder) all of them are built before it;
otherwise its first `ahead` requests are, and `PhaseRequests.produce()` builds the next ones in a
worker process while it runs, keeping `ahead` requests ready and releasing each image once its
requests were sent. A replay (`repeat_of`) shows the source's requests in the source's order;
once the source ran, `replayed(n)` makes it cycle over the n requests this shard really sent.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_process
import anyio.to_thread
from anyio import BrokenWorkerProcess

from loadgen import schedule
from loadgen.config import WARMUP, ImagesConfig, WorkloadConfig
from loadgen.workload.images import ImageItem, encode, list_folder, load_file, make_item
from loadgen.workload.payloads import BodyTemplate, build_template
from loadgen.workload.prompts import prompt_index, text_parts
from loadgen.workload.slots import SlotSequence
from loadgen.workload.synthetic import synthesize

# What one process builds and holds before a run. Photo-like 640x480 JPEGs take about 15 ms each
# to build on one core and weigh about 50 KB, so the defaults mean minutes and hundreds of MB.
DEFAULT_MAX_IMAGES: Final = 10_000
DEFAULT_MAX_BYTES: Final = 1 << 30  # of image parts (base64 data URLs) held in memory
DEFAULT_AHEAD: Final = 64  # requests built ahead of the last one sent, in a phase of unknown count
_BATCH: Final = 8  # requests' images built per call to the worker process

_PHASE: Final = "phase"


class WorkloadTooLarge(ValueError):
    """The images a phase needs exceed the build budget."""


@dataclass(slots=True)
class _Stream:
    slots: SlotSequence
    images: dict[int, ImageItem]  # key -> built image (shared by all streams of a folder)
    make: Callable[[int], ImageItem]
    name: Callable[[int], str]  # key -> image id, without building the image
    universe: int | None  # how many distinct keys the stream can show; None: unbounded
    bodies: _BodyNumbers
    # (images config, stream seed, id prefix) to rebuild an image in another process; None for
    # a folder, whose images are all built before a phase
    recipe: tuple[ImagesConfig, int, str] | None = None


class _BodyNumbers:
    """Request r's body number: the first request of the stream with byte-identical body.
    Equal numbers mean equal bodies, so distinct numbers count distinct bodies; the numbers are
    small and dense, which keeps the phase summary's record of them to about a bit each."""

    def __init__(
        self,
        slots: SlotSequence,
        per_request: int,
        prompts: tuple[str, ...],
        period: int | None,
        fresh: bool,
    ) -> None:
        self._slots = slots
        self._k = per_request
        first: dict[str, int] = {}
        self._prompt = [first.setdefault(p, n) for n, p in enumerate(prompts)]
        # A fresh image in every slot: no two requests share a body, whatever the prompts.
        self._fresh = fresh and per_request > 0
        self._period = period
        self._numbers = array("q")  # of requests 0 .. scanned-1
        self._first: dict[tuple[int, ...], int] = {}

    def number(self, r: int) -> int:
        if self._fresh:
            return r
        if self._period is not None:
            r %= self._period
        while len(self._numbers) <= r:
            n = len(self._numbers)
            first = n * self._k
            body = (
                self._prompt[prompt_index(n, len(self._prompt))],
                *(self._slots.key(first + s) for s in range(self._k)),
            )
            self._numbers.append(self._first.setdefault(body, n))
        return self._numbers[r]


def _body_period(images: ImagesConfig, universe: int | None, k: int, prompts: int) -> int | None:
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


@dataclass(slots=True)
class _Budget:
    max_images: int
    max_bytes: int
    images: int = 0
    nbytes: int = 0
    seconds: float = field(default=0.0)


class PhaseRequests:
    """The requests of one phase (or warm-up) as this shard sends them.

    The shard's requests are those `schedule.shard_indices` deals it over `lanes`; its k-th one
    is its position k. Positions name the shard's own requests in the order it sends them, which
    is what a replay cycles over and what a phase of unknown count builds ahead."""

    def __init__(
        self,
        *,
        owner: Workload,
        name: str,
        warmup: bool,
        count: int | None,
        stream: _Stream,
        shard: int,
        shards: int,
        lanes: int,
        replaying: bool = False,
        source_lanes: int = 0,
        cycle: int | None = None,
        ahead: int = 0,
    ) -> None:
        self.name = name
        self.warmup = warmup
        self.shard = shard
        self.shards = shards
        self.lanes = lanes
        self._owner = owner
        self._count = count
        self._stream = stream
        self._replaying = replaying
        self._source_lanes = source_lanes or lanes  # how the replayed phase dealt its requests
        self._cycle = cycle  # a replay cycles over this many positions of its source (None: no)
        self._per_request = owner.config.images_per_request
        self._texts = owner.text_parts
        self._keys: list[int] = []  # distinct image keys in order of first use
        self.built = 0  # images this prepare() had to build (others were already built)
        self.build_seconds = 0.0
        # Built ahead of need (lazy: a phase of unknown count over an unbounded stream): the
        # images of positions [0, _ready) minus those already sent, with for each key the
        # number of positions not sent yet that show it.
        self.lazy = count is None and stream.universe is None
        self._ahead = max(1, ahead)
        self._images = {} if self.lazy else stream.images
        self._refs: dict[int, int] = {}
        self._ready = 0
        self._sent = 0  # 1 + the highest position sent
        # (Events are made in the event loop: PhaseRequests may be prepared outside of one.)
        self._progress: anyio.Event | None = None  # set when more requests are ready
        self._need: anyio.Event | None = None  # set when the producer should build more
        self.waits = 0  # requests that waited for their images to be built
        self.waited_us = 0  # and how long, in all (integer microseconds: sums exactly)

    def __len__(self) -> int:
        """The requests the phase was prepared for (all shards), 0 when unknown."""
        return self._count or 0

    @property
    def count(self) -> int | None:
        return self._count

    def body(self, i: int) -> bytes:
        """The serialized JSON body of request i (for a lazy phase: once `ready(i)`)."""
        keys = self._slot_keys(self._request(i))
        parts = [self._image(i, key).part for key in keys]
        template: BodyTemplate = self._owner.template
        body = template.render(self._texts[self._prompt(i)], parts)
        if self.lazy:
            self._release(i, keys)
        return body

    def image_ids(self, i: int) -> list[str]:
        name = self._stream.name
        return [name(key) for key in self._slot_keys(self._request(i))]

    def body_id(self, i: int) -> int:
        """Request i's body number in its stream: equal numbers, byte-identical bodies."""
        return self._stream.bodies.number(self._request(i))

    def prompt(self, i: int) -> str:
        return self._owner.config.prompts[self._prompt(i)]

    def images(self) -> list[ImageItem]:
        """The distinct images built for this shard's requests before the phase, in order of
        first use."""
        return [self._images[key] for key in self._keys if key in self._images]

    @property
    def held(self) -> int:
        """Images held for this phase (built ahead and not released, or all of a stream's)."""
        return len(self._images)

    def replayed(self, sent: int) -> None:
        """A replay: cycle over the first `sent` requests that this shard sent of its source
        (at most those it was prepared for)."""
        if not self._replaying:
            raise ValueError(f"phase {self.name!r} replays no phase")
        self._cycle = sent if self._cycle is None else min(self._cycle, sent)
        if self.lazy:
            self._recount()

    def ready(self, i: int) -> bool:
        """Whether request i's images are built (always, unless the phase builds ahead)."""
        return not self.lazy or self._position(i) < self._ready

    async def wait(self, i: int) -> None:
        """Until request i's images are built (by `produce`, which must be running)."""
        position = self._position(i)
        if position >= self._ready:
            started = time.perf_counter()
            await self._wait(position)
            self.waits += 1
            self.waited_us += round((time.perf_counter() - started) * 1e6)

    async def _wait(self, position: int) -> None:
        while position >= self._ready:
            # Move the producer's window up to this request (streams may wait out of order).
            self._sent = max(self._sent, position + 1 - self._ahead)
            if self._need is not None:
                self._need.set()
            if self._progress is None:
                self._progress = anyio.Event()
            await self._progress.wait()

    async def produce(self) -> None:
        """Build the images of the next `ahead` requests, as requests are sent, in a worker
        process: the event loop that measures the requests never draws or encodes an image. Runs
        until cancelled; returns at once for a phase whose images were all built."""
        recipe = self._stream.recipe
        if not self.lazy or recipe is None:
            return
        images, seed, prefix = recipe
        while True:
            while self._ready < self._sent + self._ahead:
                positions = range(self._ready, min(self._ready + _BATCH, self._sent + self._ahead))
                missing: dict[int, None] = {}
                for position in positions:
                    for key in self._slot_keys(self._request(self._index(position))):
                        # Reserved now, so that no request sent meanwhile releases it.
                        self._refs[key] = self._refs.get(key, 0) + 1
                        if key not in self._images:
                            missing[key] = None
                if missing:
                    built = await self._owner.build(images, seed, prefix, list(missing))
                    for item, key in zip(built, missing, strict=True):
                        self._images[key] = item
                self._ready = positions.stop
                if self._progress is not None:
                    self._progress.set()
                    self._progress = None
            # Nothing awaited since the loop's test: no request was sent in between.
            self._need = anyio.Event()
            await self._need.wait()

    def _release(self, i: int, keys: list[int]) -> None:
        position = self._position(i)
        for key in keys:
            left = self._refs[key] - 1
            if left:
                self._refs[key] = left
            else:
                del self._refs[key]
                del self._images[key]
        if position >= self._sent:
            self._sent = position + 1
            # Wake the producer for a whole batch, not for every request.
            if self._need is not None and self._sent + self._ahead - self._ready >= _BATCH:
                self._need.set()

    def _recount(self) -> None:
        """The references of the positions built ahead, after the replay's cycle changed."""
        refs: dict[int, int] = {}
        for position in range(self._sent, self._ready):
            for key in self._slot_keys(self._request(self._index(position))):
                refs[key] = refs.get(key, 0) + 1
        for key in [k for k in self._images if k not in refs]:
            del self._images[key]
        missing = [k for k in refs if k not in self._images]
        for key in missing:  # before the phase starts, and only if the source sent few
            self._images[key] = self._stream.make(key)
        self._refs = refs

    def _index(self, position: int) -> int:
        return schedule.shard_index(position, self.lanes, self.shard, self.shards)

    def _position(self, i: int) -> int:
        try:
            return schedule.shard_position(i, self.lanes, self.shard, self.shards)
        except ValueError:
            raise LookupError(
                f"request {i} of phase {self.name!r} is not one of shard {self.shard} of "
                f"{self.shards}"
            ) from None

    def _prompt(self, i: int) -> int:
        return prompt_index(self._request(i), len(self._texts))

    def _request(self, i: int) -> int:
        """The request of the stream that request i shows."""
        if i < 0:
            raise IndexError(f"negative request index {i}")
        if self._count is not None and i >= self._count:
            raise LookupError(
                f"request {i} of phase {self.name!r} is past the {self._count} requests it was "
                "prepared for"
            )
        if self._cycle is None:
            return i
        if not self._cycle:
            raise LookupError(f"phase {self.name!r} has no request to replay in shard {self.shard}")
        position = self._position(i) % self._cycle
        return schedule.shard_index(position, self._source_lanes, self.shard, self.shards)

    def _slot_keys(self, r: int) -> list[int]:
        first = r * self._per_request
        slots = self._stream.slots
        return [slots.key(first + s) for s in range(self._per_request)]

    def _image(self, i: int, key: int) -> ImageItem:
        try:
            return self._images[key]
        except KeyError:
            where = "built yet" if self.lazy else f"prepared by shard {self.shard} of {self.shards}"
            raise LookupError(f"request {i} of phase {self.name!r} was not {where}") from None

    def _collect(self) -> list[int]:
        """The distinct keys this shard shows before the phase (lazy: its first `ahead`
        requests), in order of first use, each counted once per request showing it."""
        needed: dict[int, None] = {}
        universe = self._stream.universe
        if self._count is None and universe is not None:
            keys = range(universe)  # every image the stream can show
            if self._per_request:
                needed = dict.fromkeys(keys)
        else:
            positions = (
                schedule.shard_count(self._count, self.lanes, self.shard, self.shards)
                if self._count is not None
                else self._ahead
            )
            for position in range(positions):
                for key in self._slot_keys(self._request(self._index(position))):
                    needed[key] = None
                    if self.lazy:
                        self._refs[key] = self._refs.get(key, 0) + 1
            if self.lazy:
                self._ready = positions
        self._keys = list(needed)
        return self._keys


def build_synthetic(
    images: ImagesConfig, seed: int, prefix: str, keys: list[int]
) -> list[ImageItem]:
    """Synthetic images by key (run in a worker process by `PhaseRequests.produce`)."""
    make = _synthetic_maker(images, seed, prefix)
    return [make(key) for key in keys]


class Workload:
    def __init__(
        self,
        cfg: WorkloadConfig,
        seed: int,
        model: str,
        *,
        max_images: int = DEFAULT_MAX_IMAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.config = cfg
        self.seed = seed
        self.text_parts = text_parts(cfg.prompts)
        if not model:  # resolved (from the scenario or the server) before any shard starts
            raise ValueError("empty model name")
        self._template = build_template(cfg, model)
        self._model = model
        self._budget = _Budget(max_images=max_images, max_bytes=max_bytes)
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._phases: dict[str, PhaseRequests] = {}
        self._prepared: list[PhaseRequests] = []
        self._builder: anyio.CapacityLimiter | None = None
        self._thread_builder = False
        self._files: list[Path] = []
        self.skipped: list[str] = []  # files of the image folder left out, with their reasons
        self._file_images: dict[int, ImageItem] = {}
        if cfg.images.source == "folder":
            self._files, self.skipped = list_folder(cfg.images.folder, skip_bad=cfg.images.skip_bad)

    @property
    def model(self) -> str:
        return self._model

    @property
    def template(self) -> BodyTemplate:
        return self._template

    @property
    def images_built(self) -> int:
        return self._budget.images

    @property
    def bytes_built(self) -> int:
        """Memory held by the built images' JSON parts."""
        return self._budget.nbytes

    @property
    def build_seconds(self) -> float:
        return self._budget.seconds

    def describe(self) -> str:
        """One line for the console: what was built, how big, how long it took."""
        return describe_built(self.config, [self.built()])

    def built(self) -> dict[str, Any]:
        """What this shard built, to add up over the shards (`describe_built`)."""
        return {
            "images": self.images_built,
            "bytes": self.bytes_built,
            "seconds": self.build_seconds,
            "ahead": any(reqs.lazy for reqs in self._prepared),
            "skipped": list(self.skipped),
        }

    @property
    def builder(self) -> anyio.CapacityLimiter:
        """One worker process builds images ahead of need, for all phases."""
        if self._builder is None:
            self._builder = anyio.CapacityLimiter(1)
        return self._builder

    async def start_builder(self) -> None:
        """Start the worker process of `PhaseRequests.produce` now, before the run's clock
        matters, if a phase will need it."""
        if any(reqs.lazy for reqs in self._prepared):
            await self.build(self.config.images, 0, "", [])

    async def build(
        self, images: ImagesConfig, seed: int, prefix: str, keys: list[int]
    ) -> list[ImageItem]:
        """Synthetic images by key, built off the event loop: in the worker process, or in a
        thread once it could not start or died (a Ctrl-C reaches it too), so that no request
        waits for ever."""
        if not self._thread_builder:
            try:
                return await anyio.to_process.run_sync(
                    build_synthetic, images, seed, prefix, keys, limiter=self.builder
                )
            except BrokenWorkerProcess:
                self._thread_builder = True
        return await anyio.to_thread.run_sync(build_synthetic, images, seed, prefix, keys)

    def prepare(
        self,
        phase: str,
        count: int | None,
        *,
        ahead: int = DEFAULT_AHEAD,
        repeat_of: str = "",
        replay_count: int | None = None,
        warmup: bool = False,
        shard: int = 0,
        shards: int = 1,
        lanes: int = 0,
    ) -> PhaseRequests:
        """Build every image that this shard's requests of the phase show (requests i < count
        that `schedule.shard_indices` deals it over `lanes`, by default one per shard) and return
        them as PhaseRequests. `count=None`: a phase whose
        count is unknown beforehand; its images are all built when finite (a pool, a folder),
        else those of its first `ahead` requests (see `PhaseRequests.produce`). A replay
        (`repeat_of`) needs the source phase prepared first; it shows the source's requests in
        order, cycling over its first `replay_count` (default: all of them, and once the source
        ran, `PhaseRequests.replayed` with what it sent)."""
        if count is not None and count < 0:
            raise ValueError(f"request count must be 0 or more, got {count}")
        if not 0 <= shard < shards:
            raise ValueError(f"shard must be in [0, {shards}), got {shard}")
        cycle = None
        lanes = lanes or shards
        source_lanes = lanes
        if repeat_of:
            if warmup:
                raise ValueError("a warm-up draws its own images; it cannot replay a phase")
            source = self._phases.get(repeat_of)
            if source is None:
                raise ValueError(f"prepare phase {repeat_of!r} before the phase that replays it")
            total = source.count
            if replay_count is not None:
                if replay_count < 0 or (total is not None and replay_count > total):
                    raise ValueError(
                        f"replay_count must be in [0, {total}] for {repeat_of!r}, got {replay_count}"
                    )
                total = replay_count
            source_lanes = source.lanes
            if total is not None:
                # this shard's requests of the source
                cycle = schedule.shard_count(total, source_lanes, shard, shards)
                if count and not total:
                    raise ValueError(f"phase {repeat_of!r} has no requests to replay")
            stream = source._stream
        else:
            stream = self._stream(WARMUP if warmup else _PHASE, phase)
        reqs = PhaseRequests(
            owner=self,
            name=phase,
            warmup=warmup,
            count=count,
            stream=stream,
            shard=shard,
            shards=shards,
            lanes=lanes,
            replaying=bool(repeat_of),
            source_lanes=source_lanes,
            cycle=cycle,
            ahead=ahead,
        )
        started = time.perf_counter()
        reqs.built = self._build(phase, reqs._images, stream.make, reqs._collect())
        reqs.build_seconds = time.perf_counter() - started
        self._budget.seconds += reqs.build_seconds
        if not warmup:
            self._phases[phase] = reqs
        self._prepared.append(reqs)
        return reqs

    def _stream(self, kind: str, phase: str) -> _Stream:
        stream = self._streams.get((kind, phase))
        if stream is None:
            cfg = self.config
            images = cfg.images
            stream_seed = schedule.derive_seed(self.seed, kind, phase)
            files = len(self._files) if images.source == "folder" else None
            slots = SlotSequence(
                seed=stream_seed,
                pool_size=images.pool_size,
                repeat_ratio=images.repeat_ratio,
                universe=files,
            )
            universe = images.pool_size or files
            period = _body_period(images, universe, cfg.images_per_request, len(cfg.prompts))
            fresh = universe is None and not images.repeat_ratio
            bodies = _BodyNumbers(slots, cfg.images_per_request, cfg.prompts, period, fresh)
            if images.source == "folder":
                names = [path.name for path in self._files]
                stream = _Stream(
                    slots,
                    self._file_images,
                    self._file_maker(images),
                    names.__getitem__,
                    universe,
                    bodies,
                )
            else:
                prefix = f"{'syn' if kind == _PHASE else 'warm'}-{self.seed}-{phase}-"
                stream = _Stream(
                    slots,
                    {},
                    _synthetic_maker(images, stream_seed, prefix),
                    lambda key: f"{prefix}{key}",
                    universe,
                    bodies,
                    (images, stream_seed, prefix),
                )
            self._streams[(kind, phase)] = stream
        return stream

    def _file_maker(self, images: ImagesConfig) -> Callable[[int], ImageItem]:
        def make(key: int) -> ImageItem:
            return load_file(self._files[key], max_side=images.max_side, quality=images.quality)

        return make

    def _build(
        self,
        phase: str,
        images: dict[int, ImageItem],
        make: Callable[[int], ImageItem],
        keys: list[int],
    ) -> int:
        budget = self._budget
        missing = [key for key in keys if key not in images]
        if budget.images + len(missing) > budget.max_images:
            raise WorkloadTooLarge(
                f"phase {phase!r} needs {len(missing)} more distinct images, "
                f"{budget.images + len(missing)} in all, over the limit of {budget.max_images} "
                "built before a run: set workload.images.pool_size (a pool of distinct images "
                "reused in turn) or repeat_ratio, or send fewer requests"
            )
        for key in missing:
            item = make(key)
            images[key] = item
            budget.images += 1
            budget.nbytes += len(item.part)
            if budget.nbytes > budget.max_bytes:
                raise WorkloadTooLarge(
                    f"phase {phase!r}: the images built so far hold {budget.nbytes} bytes, over "
                    f"the limit of {budget.max_bytes}: use smaller images, a pool_size, or "
                    "fewer requests"
                )
        return len(missing)


def _synthetic_maker(images: ImagesConfig, seed: int, prefix: str) -> Callable[[int], ImageItem]:
    def make(key: int) -> ImageItem:
        picture = synthesize(images.content, images.width, images.height, seed, key)
        data = encode(picture, images.format, images.quality)
        return make_item(f"{prefix}{key}", data, images.format, images.width, images.height)

    return make


def describe_built(config: WorkloadConfig, shards: Sequence[Mapping[str, Any]]) -> str:
    """One console line for the payloads every shard built (`Workload.built` of each): images
    added up over the shards (shards may build the same pool image each), bytes held in all of
    them, the longest build (they build at once)."""
    nbytes = sum(int(s["bytes"]) for s in shards)
    seconds = max((float(s["seconds"]) for s in shards), default=0.0)
    ahead = ""
    if any(s["ahead"] for s in shards):
        ahead = "; more built ahead of need while a phase bounded by time runs"
    if config.images_per_request == 0:
        return f"text only (no images), built in {seconds:.2f} s"
    images = config.images
    if images.source == "folder":
        shrink = f", longer side <= {images.max_side}" if images.max_side else ""
        kind = f"files from {images.folder}{shrink}"
    else:
        quality = "" if images.format == "png" else f" q{images.quality}"
        kind = f"{images.content} {images.width}x{images.height} {images.format}{quality}"
    repeat = ""
    if images.pool_size:
        repeat = f", pool of {images.pool_size}"
    elif images.repeat_ratio:
        repeat = f", repeat ratio {images.repeat_ratio:g}"
    counts = [int(s["images"]) for s in shards]
    if len(counts) == 1:
        what = f"{counts[0]} distinct images ({kind}{repeat})"
    else:
        each = " + ".join(str(n) for n in counts)
        what = f"{sum(counts)} images ({each} in the workers; {kind}{repeat})"
    skipped = ""
    bad = list(
        dict.fromkeys(f for s in shards for f in s.get("skipped", ()))
    )  # each shard reads all
    if bad:
        shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        skipped = f"; skipped {len(bad)} unusable files (skip_bad): {shown}"
    return f"{what}, {nbytes / 1e6:.1f} MB as data URLs, built in {seconds:.2f} s{ahead}{skipped}"
