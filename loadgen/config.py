"""The resolved configuration of a run: what a scenario file (plus command-line overrides) means.

Plain frozen dataclasses with no I/O. `loadgen.scenario` builds them from TOML and validates every
value; the rest of the program only ever sees these validated objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

LoadMode = Literal["closed", "constant", "poisson", "gamma"]
ImageFormat = Literal["jpeg", "png", "webp"]
ImageContent = Literal["noise", "gradient", "solid", "photo"]

# Bounds on what a scenario file (or a flag) may ask for, checked at load and listed in README's
# "Scenario format". Every number must also be finite. They are far above any real load and keep a
# slip of the keyboard (a billion streams, a 1e-9 s window, 1e15 requests) from hanging a run
# before or after its requests, or overflowing the 64-bit integers of a request body.
MAX_FILE_BYTES: Final = 4 * 1024 * 1024  # a scenario file; only regular files are read
MAX_DEPTH: Final = 32  # tables and arrays nested in one another
MAX_STREAMS: Final = 100_000  # concurrency, max_concurrency, target pool_size
MAX_REQUESTS: Final = 1_000_000  # requests a phase plans (payloads are built before it)
MAX_RATE: Final = 1_000_000.0  # requests/s
MAX_SECONDS: Final = 1_000_000.0  # duration, ramp_up, drain_timeout, timeouts, intervals
MIN_WINDOW: Final = 0.1  # output.window, seconds
MAX_BURSTINESS: Final = 1000.0  # and at least 1 / MAX_BURSTINESS
MAX_TOKENS: Final = 10_000_000  # max_tokens, min_tokens
# The warm-up's phase name (reserved: no scenario phase has it) and the name of its requests'
# stream, whose seeds derive from it: warm-up never pre-warms the measured images.
WARMUP: Final = "warmup"
MAX_SEED: Final = 2**63 - 1
MAX_IMAGES_PER_REQUEST: Final = 256
MAX_IMAGE_POOL: Final = 1_000_000  # workload.images.pool_size
# The ways a deliberately bad request (workload.invalid_share) is broken, and those that need an
# endpoint taking images.
INVALID_KINDS: Final = ("undecodable_image", "oversized_image", "min_tokens_above_max")
INVALID_IMAGE_KINDS: Final = frozenset({"undecodable_image", "oversized_image"})
MAX_MILLISECONDS: Final = MAX_SECONDS * 1000  # SLO thresholds
# Keys workload.extra_body may not set: the body's structure, and streaming, which the client
# relies on.
RESERVED_BODY_KEYS: Final = frozenset({"model", "messages", "prompt", "stream"})
# The API a target serves when a scenario names none (a name of `loadgen.endpoints.ENDPOINTS`).
DEFAULT_API: Final = "chat"


@dataclass(frozen=True, slots=True)
class TargetConfig:
    urls: tuple[str, ...] = ()  # base URLs (".../v1" optional); several are used round-robin
    model: str = ""  # "" means the first model the server lists
    endpoint: str = "/v1/chat/completions"  # the path of `api` when a scenario sets neither
    api: str = DEFAULT_API  # the kind of request bodies and streams (loadgen.endpoints)
    headers: tuple[tuple[str, str], ...] = ()
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from here ...
    api_key_file: str = ""  # ... or from this file; never from the scenario itself
    verify_tls: bool = True
    connect_timeout: float = 10.0
    read_timeout: float = 600.0  # longest silence allowed between two bytes of a stream
    # Longest a whole request may take, from its send to the stream's end (a stream that never
    # ends); None: no bound (read_timeout bounds only silence).
    request_timeout: float | None = None
    pool_size: int = 0  # max connections; 0 = enough for the load's peak concurrency
    scrape_metrics: bool = True  # scrape GET /metrics at start, during and at the end
    scrape_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class ImageMixEntry:
    """One entry of `[workload.images] mix`: a share of the synthetic images, its format and
    content resolved at load (an entry without them takes the table's)."""

    size: str  # "WIDTHxHEIGHT"
    format: ImageFormat
    content: ImageContent
    weight: float  # a share of the entries' sum


@dataclass(frozen=True, slots=True)
class ImagesConfig:
    # The dataset the requests draw from: a name of `loadgen.datasets.DATASETS` ("synthetic",
    # "folder", ...), checked when the scenario is loaded.
    source: str = "synthetic"
    folder: str = ""  # for source = "folder": JPEG/PNG/WebP files, sorted by name
    max_side: int = 0  # resize so the longer side is at most this (0 = keep)
    width: int = 640  # synthetic images
    height: int = 480
    format: ImageFormat = "jpeg"
    quality: int = 85  # JPEG/WebP quality
    content: ImageContent = "photo"
    # Repetition, to exercise the server's prefix and multimodal caches:
    pool_size: int = 0  # number of distinct images cycled through; 0 = a fresh image per slot
    repeat_ratio: float = 0.0  # probability that a request reuses an image already sent
    skip_bad: bool = False  # for source = "folder": leave unusable files out (else: an error)
    # For source = "folder": name each file by URL, url_base + its quoted name, instead of
    # sending it as a data URL (the target fetches it). With `serve`, the run starts loadgen's
    # image server for the folder and sets url_base to it; `serve_host` is the host name or
    # address the target reaches this host by ("": loopback).
    url_base: str = ""
    serve: bool = False
    serve_host: str = ""
    # For source = "synthetic": images of several sizes, formats and contents in weighted
    # shares (`loadgen.datasets.mix`); () = every image width x height, format, content.
    mix: tuple[ImageMixEntry, ...] = ()


DatasetFormat = Literal["", "parquet", "arrow", "imagefolder"]


@dataclass(frozen=True, slots=True)
class DatasetConfig:
    """`[workload.dataset]`: the file of a row dataset (`source = "jsonl"` or `"hf"`)."""

    path: str = ""  # the .jsonl file, or the Hugging Face data file or folder
    image_column: str = "image"  # hf: the column of images (or of lists of them)
    prompt_column: str = ""  # hf: "" = the scenario's prompts
    reference_column: str = ""  # hf: "" = none
    format: DatasetFormat = ""  # hf: "" = from the file suffix (a folder: imagefolder)
    split: str = "train"  # hf
    limit: int = 0  # rows read, from the start of the file (0 = all)
    shuffle: bool = False  # rows in an order shuffled by the seed (else: file order)


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    images: ImagesConfig = field(default_factory=ImagesConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    images_per_request: int = 1
    prompts: tuple[str, ...] = ("Describe this image in one sentence.",)
    system_prompt: str = ""
    max_tokens: int = 128
    min_tokens: int | None = None
    ignore_eos: bool = False
    temperature: float = 0.0
    extra_body: tuple[tuple[str, object], ...] = ()  # merged into every request body
    # images_per_request as a range or weighted counts (`loadgen.datasets.mix.ImageCount.spec`,
    # TOML inline-table text such as "{ 1 = 70, 3 = 30 }"), drawn per request; then
    # images_per_request is the most a request carries. "": always images_per_request.
    images_per_request_spec: str = ""
    # Deliberately bad requests (loadgen.workload.invalid): this share of each phase's requests,
    # drawn per request from the seed, is sent broken in one of these ways (INVALID_KINDS).
    invalid_share: float = 0.0
    invalid_kind: tuple[str, ...] = ("undecodable_image",)


@dataclass(frozen=True, slots=True)
class LoadConfig:
    mode: LoadMode = "closed"
    concurrency: int = 1  # closed loop: number of streams
    rate: float = 0.0  # open loop: requests per second
    burstiness: float = 1.0  # gamma shape; 1.0 = Poisson, < 1 burstier, > 1 smoother
    max_concurrency: int = 0  # open loop cap on requests in flight (0 = none)
    ramp_up: float = 0.0  # seconds to reach full concurrency / rate
    requests: int = 0  # stop after this many requests (0 = no count limit)
    duration: float = 0.0  # stop sending after this many seconds (0 = no time limit)
    # After `duration`, wait at most this long for the requests in flight, then cancel them
    # (outcome `cancelled`). None: wait for every one to end.
    drain_timeout: float | None = None
    warmup_requests: int = 0  # sent first, excluded from the results


@dataclass(frozen=True, slots=True)
class PhaseConfig:
    name: str
    load: LoadConfig
    repeat_of: str = ""  # replay exactly the requests (images, prompts) of this earlier phase
    # The phase's own workload (`[phases.workload]`: the scenario's with some keys changed, see
    # PHASE_WORKLOAD_KEYS); None: the scenario's.
    workload: WorkloadConfig | None = None


# The workload keys a phase may change (`[phases.workload]`), and those of its images.
PHASE_WORKLOAD_KEYS: Final = (
    "prompts",
    "system_prompt",
    "max_tokens",
    "min_tokens",
    "images_per_request",
    "ignore_eos",
    "temperature",
    "invalid_share",
    "invalid_kind",
)
PHASE_IMAGE_KEYS: Final = ("width", "height", "format", "quality", "content")


@dataclass(frozen=True, slots=True)
class SloConfig:
    ttft_ms: float = 0.0  # 0 = no threshold
    tpot_ms: float = 0.0
    e2e_ms: float = 0.0

    @property
    def any(self) -> bool:
        return bool(self.ttft_ms or self.tpot_ms or self.e2e_ms)


@dataclass(frozen=True, slots=True)
class OutputConfig:
    directory: str = "results"  # a folder per run is made inside it
    window: float = 10.0  # throughput window, seconds (vLLM's VLLM_LOG_STATS_INTERVAL)
    progress: bool = True  # progress on stderr: a live line on a terminal, else plain lines ...
    progress_interval: float = 5.0  # ... this many seconds apart


@dataclass(frozen=True, slots=True)
class DistributedConfig:
    """Where the shards run: on this host (in this process or worker processes), or as Ray
    actors on a Ray cluster (`loadgen.rayshard`), one per shard."""

    backend: Literal["local", "ray"] = "local"
    # The Ray cluster: "auto" (the one this host belongs to), "HOST:PORT" of its head, or
    # "local" (a private one-node Ray started for the run).
    address: str = "auto"
    workers: int = 0  # shards in all; 0: one per core (local), workers_per_node per node (ray)
    workers_per_node: int = 1  # ray, when workers = 0: actors per alive node
    num_cpus: float = 1.0  # ray: CPUs each actor reserves in its placement group bundle


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    source: str  # the file it came from ("" when built in code)
    seed: int
    target: TargetConfig
    workload: WorkloadConfig
    phases: tuple[PhaseConfig, ...]
    slo: SloConfig = field(default_factory=SloConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    description: str = ""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
