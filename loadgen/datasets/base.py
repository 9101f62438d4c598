"""What a dataset is to loadgen: for each named stream of requests (a phase's, a warm-up's), the
inputs of request r (its prompt, the keys of its images, maybe its own max_tokens), and how to
build the image behind a key.

A dataset is seeded (the scenario's seed and the stream's name decide every request) and sized
before the first phase: whatever it reads (a folder's listing) is read when it is made, and a
stream says how many distinct images it can show (`universe`), so the workload can build them
all before a phase, or build them ahead of need in a worker process when there is no bound.
"""

from __future__ import annotations

from typing import Final, NamedTuple, Protocol

from loadgen.datasets.images import ImageItem

# The kind of a phase's stream; a warm-up's is `loadgen.config.WARMUP`, so warm-up never
# pre-warms the measured images.
PHASE_STREAM: Final = "phase"


class RequestInputs(NamedTuple):
    """What one request asks. (A named tuple: one is made per request sent, and a tuple is the
    cheapest immutable record to make.)"""

    prompt: str
    images: tuple[int, ...]  # keys of the stream's images, in the order the body shows them
    max_tokens: int | None = None  # None: the workload's `max_tokens`


class ImageBuilder(Protocol):
    """Builds a stream's images by key. Picklable: a worker process builds images ahead of
    need with it (`loadgen.workload.workload.build_images`)."""

    def name(self, key: int) -> str:
        """The image's id in the records, without building it."""
        ...

    def build(self, key: int) -> ImageItem: ...


class RequestStream(Protocol):
    """The requests of one stream, by number r = 0, 1, 2, ... (a replay reads them again)."""

    @property
    def universe(self) -> int | None:
        """How many distinct images the stream can show (keys 0 .. universe-1); None when
        unbounded (then keys are built ahead of need in a phase bounded only by time)."""
        ...

    @property
    def builder(self) -> ImageBuilder: ...

    @property
    def built(self) -> dict[int, ImageItem]:
        """Images built so far by key; streams of one dataset may share it (a folder)."""
        ...

    def inputs(self, r: int) -> RequestInputs:
        """Request r's inputs: the same for the same seed, stream and r (prefix-stable: asking
        for later requests never changes earlier ones)."""
        ...

    def body_number(self, r: int) -> int:
        """The first request of the stream whose inputs equal request r's: equal numbers mean
        byte-identical bodies (the phase summary counts distinct bodies with them)."""
        ...


class Dataset(Protocol):
    """A workload's source of requests, registered by name in `loadgen.datasets.DATASETS`
    (`[workload.images] source`) and made as `DATASETS[name](config, seed)`."""

    @property
    def skipped(self) -> list[str]:
        """Inputs left out when it was made, each with its reason (a folder's unusable files)."""
        ...

    def stream(self, kind: str, phase: str) -> RequestStream:
        """The stream of a phase (`PHASE_STREAM`) or of its warm-up (`WARMUP`); called once per
        (kind, phase) by the workload."""
        ...
