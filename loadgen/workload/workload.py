"""A run's workload: a dataset's requests as an endpoint's bodies, and the images each phase
needs, built before it is measured.

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

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.to_process
import anyio.to_thread
from anyio import BrokenWorkerProcess

from loadgen import schedule
from loadgen.config import DEFAULT_API, WARMUP, WorkloadConfig
from loadgen.datasets import (
    PHASE_STREAM,
    Dataset,
    ImageBuilder,
    ImageItem,
    RequestInputs,
    RequestStream,
    dataset_named,
)
from loadgen.datasets.mix import describe_counts, describe_mix, mix_of
from loadgen.endpoints import BodyTemplate, Endpoint, endpoint_named
from loadgen.workload.invalid import invalid_kind, min_above_max, render_invalid

# What one process builds and holds before a run. Photo-like 640x480 JPEGs take about 15 ms each
# to build on one core and weigh about 50 KB, so the defaults mean minutes and hundreds of MB.
DEFAULT_MAX_IMAGES: Final = 10_000
DEFAULT_MAX_BYTES: Final = 1 << 30  # of image parts (base64 data URLs) held in memory
DEFAULT_AHEAD: Final = 64  # requests built ahead of the last one sent, in a phase of unknown count
_BATCH: Final = 8  # requests' images built per call to the worker process


class WorkloadTooLarge(ValueError):
    """The images a phase needs exceed the build budget."""


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
        stream: RequestStream,
        shard: int,
        shards: int,
        lanes: int,
        replaying: bool = False,
        source_lanes: int = 0,
        cycle: int | None = None,
        ahead: int = 0,
        stream_key: str = "",
    ) -> None:
        self.name = name
        self.warmup = warmup
        self.shard = shard
        self.shards = shards
        self.lanes = lanes
        self._owner = owner
        self._count = count
        self._stream = stream
        self._stream_key = stream_key  # names the stream in the draws of bad requests
        self._replaying = replaying
        self._source_lanes = source_lanes or lanes  # how the replayed phase dealt its requests
        self._cycle = cycle  # a replay cycles over this many positions of its source (None: no)
        self._template = owner.template
        self._texts = owner.prompt_parts  # prompt -> its encoded part, filled as met
        self._keys: list[int] = []  # distinct image keys in order of first use
        self.built = 0  # images this prepare() had to build (others were already built)
        self.build_seconds = 0.0
        # Built ahead of need (lazy: a phase of unknown count over an unbounded stream): the
        # images of positions [0, _ready) minus those already sent, with for each key the
        # number of positions not sent yet that show it.
        self.lazy = count is None and stream.universe is None
        self._ahead = max(1, ahead)
        self._images = {} if self.lazy else stream.built
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
        inputs = self._stream.inputs(self._request(i))
        prompt, keys, max_tokens = inputs
        parts = [self._image(i, key).part for key in keys]
        text = self._texts.get(prompt) or self._owner.prompt_part(prompt)
        kind = self.invalid_kind(i)
        if kind:
            body = self._owner.invalid_body(kind, inputs, text, parts)
        else:
            template = self._template if max_tokens is None else self._owner.template_for(inputs)
            body = template.render(text, parts)
        if self.lazy:
            self._release(i, keys)
        return body

    def invalid_kind(self, i: int) -> str:
        """How request i is deliberately broken (`[workload] invalid_share`), "" if it is not;
        warm-up requests never are."""
        cfg = self._owner.config
        if self.warmup or not cfg.invalid_share:
            return ""
        return invalid_kind(cfg, self._owner.seed, self._stream_key, self._request(i))

    def image_ids(self, i: int) -> list[str]:
        name = self._stream.builder.name
        return [name(key) for key in self._slot_keys(self._request(i))]

    def body_id(self, i: int) -> int:
        """Request i's body number in its stream: equal numbers, byte-identical bodies."""
        return self._stream.body_number(self._request(i))

    def prompt(self, i: int) -> str:
        return self._stream.inputs(self._request(i)).prompt

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
        if not self.lazy:
            return
        builder = self._stream.builder
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
                    built = await self._owner.build(builder, list(missing))
                    for item, key in zip(built, missing, strict=True):
                        self._images[key] = item
                self._ready = positions.stop
                if self._progress is not None:
                    self._progress.set()
                    self._progress = None
            # Nothing awaited since the loop's test: no request was sent in between.
            self._need = anyio.Event()
            await self._need.wait()

    def _release(self, i: int, keys: Sequence[int]) -> None:
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
            self._images[key] = self._stream.builder.build(key)
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

    def _slot_keys(self, r: int) -> tuple[int, ...]:
        return self._stream.inputs(r).images

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
            if self._owner.config.images_per_request:
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


def build_images(builder: ImageBuilder, keys: list[int]) -> list[ImageItem]:
    """A stream's images by key (run in a worker process by `PhaseRequests.produce`)."""
    return [builder.build(key) for key in keys]


class Workload:
    """A dataset's requests as one endpoint's bodies: the dataset (`loadgen.datasets`, named by
    `[workload.images] source`) says what each request asks, the endpoint (`api`, a name of
    `loadgen.endpoints.ENDPOINTS`) how its body is written."""

    def __init__(
        self,
        cfg: WorkloadConfig,
        seed: int,
        model: str,
        *,
        api: str = DEFAULT_API,
        dataset: Dataset | None = None,
        max_images: int = DEFAULT_MAX_IMAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.config = cfg
        self.seed = seed
        if not model:  # resolved (from the scenario or the server) before any shard starts
            raise ValueError("empty model name")
        self.endpoint: Endpoint = endpoint_named(api)
        if cfg.images_per_request and not self.endpoint.accepts_images:
            raise ValueError(f"api {api!r} takes no images: set images_per_request = 0")
        self._template = self.endpoint.template(cfg, model, cfg.max_tokens)
        self._templates: dict[int, BodyTemplate] = {cfg.max_tokens: self._template}
        self._broken: dict[int, BodyTemplate] = {}  # by max_tokens: min_tokens above it
        self.prompt_parts: dict[str, bytes] = {}
        self._model = model
        self.dataset = dataset or dataset_named(cfg.images.source)(cfg, seed)
        for prompt in cfg.prompts:
            self.prompt_part(prompt)
        self._budget = _Budget(max_images=max_images, max_bytes=max_bytes)
        self._streams: dict[tuple[str, str], RequestStream] = {}
        self._phases: dict[str, PhaseRequests] = {}
        self._prepared: list[PhaseRequests] = []
        self._builder: anyio.CapacityLimiter | None = None
        self._thread_builder = False
        self._api = api
        self._variants: list[Workload] = []

    def variant(self, cfg: WorkloadConfig | None) -> Workload:
        """The workload of a phase that has its own (`PhaseConfig.workload`): its dataset and
        body templates, with this one's build budget and builder process. None: this one."""
        if cfg is None or cfg == self.config:
            return self
        for known in self._variants:
            if known.config == cfg:
                return known
        budget = self._budget
        made = Workload(
            cfg,
            self.seed,
            self._model,
            api=self._api,
            max_images=budget.max_images,
            max_bytes=budget.max_bytes,
        )
        made._budget = budget
        made._builder = self.builder
        self._variants.append(made)
        return made

    @property
    def model(self) -> str:
        return self._model

    @property
    def template(self) -> BodyTemplate:
        """The body template of a request asking the workload's max_tokens."""
        return self._template

    def template_for(self, inputs: RequestInputs) -> BodyTemplate:
        """The body template of a request asking its own max_tokens."""
        max_tokens = inputs.max_tokens or self.config.max_tokens
        template = self._templates.get(max_tokens)
        if template is None:
            template = self.endpoint.template(self.config, self._model, max_tokens)
            self._templates[max_tokens] = template
        return template

    def invalid_body(
        self, kind: str, inputs: RequestInputs, text: bytes, parts: Sequence[bytes]
    ) -> bytes:
        """The body of a request deliberately broken the way `kind` says
        (loadgen.workload.invalid)."""
        max_tokens = inputs.max_tokens or self.config.max_tokens

        def broken() -> BodyTemplate:
            template = self._broken.get(max_tokens)
            if template is None:
                cfg = min_above_max(self.config, max_tokens)
                template = self.endpoint.template(cfg, self._model, max_tokens)
                self._broken[max_tokens] = template
            return template

        return render_invalid(kind, self.template_for(inputs), broken, text, parts)

    def prompt_part(self, prompt: str) -> bytes:
        """The prompt as the endpoint's JSON fragment (encoded once per distinct prompt)."""
        part = self.prompt_parts.get(prompt)
        if part is None:
            part = self.prompt_parts[prompt] = self.endpoint.prompt_part(prompt)
        return part

    @property
    def skipped(self) -> list[str]:
        """Inputs the dataset left out, with their reasons (files of an image folder)."""
        return self.dataset.skipped

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
        lazy = [reqs for reqs in self._prepared if reqs.lazy]
        if lazy:
            await self.build(lazy[0]._stream.builder, [])

    async def build(self, builder: ImageBuilder, keys: list[int]) -> list[ImageItem]:
        """Images by key, built off the event loop: in the worker process, or in a thread once
        it could not start or died (a Ctrl-C reaches it too), so that no request waits for
        ever."""
        if not self._thread_builder:
            try:
                return await anyio.to_process.run_sync(
                    build_images, builder, keys, limiter=self.builder
                )
            except BrokenWorkerProcess:
                self._thread_builder = True
        return await anyio.to_thread.run_sync(build_images, builder, keys)

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
        workload: WorkloadConfig | None = None,
    ) -> PhaseRequests:
        """Build every image that this shard's requests of the phase show (requests i < count
        that `schedule.shard_indices` deals it over `lanes`, by default one per shard) and return
        them as PhaseRequests. `count=None`: a phase whose
        count is unknown beforehand; its images are all built when finite (a pool, a folder),
        else those of its first `ahead` requests (see `PhaseRequests.produce`). A replay
        (`repeat_of`) needs the source phase prepared first; it shows the source's requests in
        order, cycling over its first `replay_count` (default: all of them, and once the source
        ran, `PhaseRequests.replayed` with what it sent). `workload`: the phase's own
        (`PhaseConfig.workload`; None: this one's); a replay sends its source's."""
        if count is not None and count < 0:
            raise ValueError(f"request count must be 0 or more, got {count}")
        if not 0 <= shard < shards:
            raise ValueError(f"shard must be in [0, {shards}), got {shard}")
        cycle = None
        lanes = lanes or shards
        stream_key = f"{WARMUP if warmup else PHASE_STREAM}\x1f{phase}"
        owner = self.variant(workload)
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
            stream_key = source._stream_key
            owner = source._owner
        else:
            stream = owner._stream(WARMUP if warmup else PHASE_STREAM, phase)
        reqs = PhaseRequests(
            owner=owner,
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
            stream_key=stream_key,
        )
        started = time.perf_counter()
        reqs.built = self._build(phase, reqs._images, stream.builder, reqs._collect())
        reqs.build_seconds = time.perf_counter() - started
        self._budget.seconds += reqs.build_seconds
        if not warmup:
            self._phases[phase] = reqs
        self._prepared.append(reqs)
        return reqs

    def _stream(self, kind: str, phase: str) -> RequestStream:
        stream = self._streams.get((kind, phase))
        if stream is None:
            stream = self._streams[(kind, phase)] = self.dataset.stream(kind, phase)
        return stream

    def _build(
        self,
        phase: str,
        images: dict[int, ImageItem],
        builder: ImageBuilder,
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
            item = builder.build(key)
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
    if images.source == "folder" and images.url_base:
        kind = f"files from {images.folder} by URL at {images.url_base}"
    elif images.source == "folder":
        shrink = f", longer side <= {images.max_side}" if images.max_side else ""
        kind = f"files from {images.folder}{shrink}"
    elif config.dataset.path:
        kind = f"{images.source} rows of {config.dataset.path}"
    elif images.source == "synthetic" and images.mix:
        kind = describe_mix(mix_of(images.mix), images.quality)
    elif images.source == "synthetic":
        quality = "" if images.format == "png" else f" q{images.quality}"
        kind = f"{images.content} {images.width}x{images.height} {images.format}{quality}"
    else:
        kind = f"dataset {images.source}"
    repeat = ""
    if images.pool_size:
        repeat = f", pool of {images.pool_size}"
    elif images.repeat_ratio:
        repeat = f", repeat ratio {images.repeat_ratio:g}"
    if config.images_per_request_spec:
        repeat += f"; {describe_counts(config.images_per_request_spec)}"
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
    held = "as URLs: the target fetches them" if images.url_base else "as data URLs"
    return f"{what}, {nbytes / 1e6:.1f} MB {held}, built in {seconds:.2f} s{ahead}{skipped}"
