"""A run's workload: the images each phase needs, built before it is measured, and its bodies.

Streams. Images come from named streams: each phase has its own (seeded by the scenario seed and
the phase name), and so does each phase's warm-up, so warm-up never pre-warms measured images and
two phases never share images by accident. A phase with `repeat_of` reads the stream of the phase
it replays. With a folder source all streams draw from the same files.

Requests. Request i of a phase is request r = i % cycle of its stream, where cycle is the prepared
count (or, for a replay, the number of source requests replayed). So a phase asked for more
requests than it was prepared for (a duration-bounded phase outrunning its estimate) replays its
own requests from the start, and a replay shows exactly the source's images and prompts in the
source's order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from loadgen import schedule
from loadgen.config import ImagesConfig, WorkloadConfig
from loadgen.workload.images import ImageItem, encode, list_folder, load_file, make_item
from loadgen.workload.payloads import BodyTemplate, build_template, top_level_fields
from loadgen.workload.prompts import prompt_index, text_parts
from loadgen.workload.slots import SlotSequence, derive_seed
from loadgen.workload.synthetic import synthesize

# What one process builds and holds before a run. Photo-like 640x480 JPEGs take about 15 ms each
# to build on one core and weigh about 50 KB, so the defaults mean minutes and hundreds of MB.
DEFAULT_MAX_IMAGES: Final = 10_000
DEFAULT_MAX_BYTES: Final = 1 << 30  # of image parts (base64 data URLs) held in memory

_PHASE: Final = "phase"
_WARMUP: Final = "warmup"


class WorkloadTooLarge(ValueError):
    """The images a phase needs exceed the build budget."""


@dataclass(slots=True)
class _Stream:
    slots: SlotSequence
    images: dict[int, ImageItem]  # key -> built image (shared by all streams of a folder)
    make: Callable[[int], ImageItem]


@dataclass(slots=True)
class _Budget:
    max_images: int
    max_bytes: int
    images: int = 0
    nbytes: int = 0
    seconds: float = field(default=0.0)


class PhaseRequests:
    """The requests of one phase (or warm-up) as this shard sends them."""

    def __init__(
        self,
        *,
        owner: Workload,
        name: str,
        warmup: bool,
        count: int,
        cycle: int,
        stream: _Stream,
        shard: int,
        shards: int,
        lanes: int,
    ) -> None:
        self.name = name
        self.warmup = warmup
        self.shard = shard
        self.shards = shards
        self.lanes = lanes
        self._owner = owner
        self._count = count
        self._cycle = cycle
        self._stream = stream
        self._per_request = owner.config.images_per_request
        self._texts = owner.text_parts
        self._keys: list[int] = []  # distinct image keys in order of first use
        self.built = 0  # images this prepare() had to build (others were already built)
        self.build_seconds = 0.0

    def __len__(self) -> int:
        return self._count

    def body(self, i: int) -> bytes:
        """The serialized JSON body of request i."""
        r = self._request(i)
        parts = [self._image(i, key).part for key in self._slot_keys(r)]
        template: BodyTemplate = self._owner.template
        return template.render(self._texts[prompt_index(r, len(self._texts))], parts)

    def image_ids(self, i: int) -> list[str]:
        r = self._request(i)
        return [self._image(i, key).id for key in self._slot_keys(r)]

    def prompt(self, i: int) -> str:
        r = self._request(i)
        return self._owner.config.prompts[prompt_index(r, len(self._texts))]

    def images(self) -> list[ImageItem]:
        """The distinct images of this shard's requests, in order of first use."""
        return [self._stream.images[key] for key in self._keys]

    def _request(self, i: int) -> int:
        if i < 0:
            raise IndexError(f"negative request index {i}")
        if not self._cycle:
            raise IndexError(f"phase {self.name!r} was prepared with no requests")
        return i % self._cycle

    def _slot_keys(self, r: int) -> list[int]:
        first = r * self._per_request
        slots = self._stream.slots
        return [slots.key(first + s) for s in range(self._per_request)]

    def _image(self, i: int, key: int) -> ImageItem:
        try:
            return self._stream.images[key]
        except KeyError:
            raise LookupError(
                f"request {i} of phase {self.name!r} was not prepared by shard "
                f"{self.shard} of {self.shards}"
            ) from None

    def _collect(self) -> list[int]:
        """The distinct keys this shard's requests show, in order of first use."""
        needed: dict[int, None] = {}
        for i in schedule.shard_indices(self._count, self.lanes, self.shard, self.shards):
            for key in self._slot_keys(i % self._cycle):
                needed[key] = None
        self._keys = list(needed)
        return self._keys


class Workload:
    def __init__(
        self,
        cfg: WorkloadConfig,
        seed: int,
        model: str = "",
        *,
        max_images: int = DEFAULT_MAX_IMAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.config = cfg
        self.seed = seed
        self.text_parts = text_parts(cfg.prompts)
        top_level_fields(cfg)  # reject a bad extra_body now, not when the model becomes known
        self._template = build_template(cfg, model) if model else None
        self._model = model
        self._budget = _Budget(max_images=max_images, max_bytes=max_bytes)
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._phases: dict[str, PhaseRequests] = {}
        self._files: list[Path] = []
        self._file_images: dict[int, ImageItem] = {}
        if cfg.images.source == "folder":
            self._files = list_folder(cfg.images.folder)

    @property
    def model(self) -> str:
        return self._model

    def set_model(self, model: str) -> None:
        """Name the model once it is known (e.g. the first one the server lists)."""
        if not model:
            raise ValueError("empty model name")
        if self._model and model != self._model:
            raise ValueError(f"the model is already {self._model!r}, not {model!r}")
        self._model = model
        self._template = build_template(self.config, model)

    @property
    def template(self) -> BodyTemplate:
        if self._template is None:
            raise RuntimeError("the model is not known yet: call Workload.set_model first")
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
        images = self.config.images
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
        return (
            f"{self.images_built} distinct images ({kind}{repeat}), "
            f"{self.bytes_built / 1e6:.1f} MB as data URLs, built in {self.build_seconds:.2f} s"
        )

    def prepare(
        self,
        phase: str,
        count: int,
        *,
        repeat_of: str = "",
        replay_count: int | None = None,
        warmup: bool = False,
        shard: int = 0,
        shards: int = 1,
        lanes: int = 0,
    ) -> PhaseRequests:
        """Build every image that this shard's requests of the phase show (requests i < count
        that `schedule.shard_indices` gives it over `lanes`, by default one per shard) and return
        them as PhaseRequests. `count` may be a cap for a
        phase bounded by duration: requests past it wrap around. A replay (`repeat_of`) needs the
        source phase prepared first; it replays the source's first `replay_count` requests
        (default: all it was prepared with), cyclically."""
        if count < 0:
            raise ValueError(f"request count must be 0 or more, got {count}")
        if not 0 <= shard < shards:
            raise ValueError(f"shard must be in [0, {shards}), got {shard}")
        if repeat_of:
            if warmup:
                raise ValueError("a warm-up draws its own images; it cannot replay a phase")
            source = self._phases.get(repeat_of)
            if source is None:
                raise ValueError(f"prepare phase {repeat_of!r} before the phase that replays it")
            cycle = len(source) if replay_count is None else replay_count
            if not 0 <= cycle <= len(source):
                raise ValueError(
                    f"replay_count must be in [0, {len(source)}] for {repeat_of!r}, got {cycle}"
                )
            if count and not cycle:
                raise ValueError(f"phase {repeat_of!r} has no requests to replay")
            stream = source._stream
        else:
            cycle = count
            stream = self._stream(_WARMUP if warmup else _PHASE, phase)
        reqs = PhaseRequests(
            owner=self,
            name=phase,
            warmup=warmup,
            count=count,
            cycle=cycle,
            stream=stream,
            shard=shard,
            shards=shards,
            lanes=lanes or shards,
        )
        started = time.perf_counter()
        reqs.built = self._build(phase, stream, reqs._collect())
        reqs.build_seconds = time.perf_counter() - started
        self._budget.seconds += reqs.build_seconds
        if not warmup:
            self._phases[phase] = reqs
        return reqs

    def _stream(self, kind: str, phase: str) -> _Stream:
        stream = self._streams.get((kind, phase))
        if stream is None:
            images = self.config.images
            stream_seed = derive_seed(self.seed, kind, phase)
            universe = len(self._files) if images.source == "folder" else None
            slots = SlotSequence(
                seed=stream_seed,
                pool_size=images.pool_size,
                repeat_ratio=images.repeat_ratio,
                universe=universe,
            )
            if images.source == "folder":
                stream = _Stream(slots, self._file_images, self._file_maker(images))
            else:
                prefix = f"{'syn' if kind == _PHASE else 'warm'}-{self.seed}-{phase}-"
                stream = _Stream(slots, {}, _synthetic_maker(images, stream_seed, prefix))
            self._streams[(kind, phase)] = stream
        return stream

    def _file_maker(self, images: ImagesConfig) -> Callable[[int], ImageItem]:
        def make(key: int) -> ImageItem:
            return load_file(self._files[key], max_side=images.max_side, quality=images.quality)

        return make

    def _build(self, phase: str, stream: _Stream, keys: list[int]) -> int:
        budget = self._budget
        missing = [key for key in keys if key not in stream.images]
        if budget.images + len(missing) > budget.max_images:
            raise WorkloadTooLarge(
                f"phase {phase!r} needs {len(missing)} more distinct images, "
                f"{budget.images + len(missing)} in all, over the limit of {budget.max_images} "
                "built before a run: set workload.images.pool_size (a pool of distinct images "
                "reused in turn) or repeat_ratio, or send fewer requests"
            )
        for key in missing:
            item = stream.make(key)
            stream.images[key] = item
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
