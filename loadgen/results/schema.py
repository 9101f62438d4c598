"""The result documents: summary.json (a run) and sweep.json (a sweep), as typed structures.

One module owns their shape: the writers build these structures and every reader (console,
report, compare, sweep) reads their attributes, so a key on one side that the other does not know
is a type error, not a silent "-" in a table. The JSON on disk is the structures' fields by name
(`rename` only where a key is not an identifier, such as "p99.9"); docs/summary.schema.json and
docs/sweep.schema.json are generated from them (`python -m loadgen.results.schema docs`).

Version: both documents carry `schema_version` = SCHEMA_VERSION. Fields added to version 1 after
its first release have defaults, so the earliest version-1 summaries still decode; a document of
another version is refused in one line (`decode`).

msgspec was chosen by measuring (scripts/bench_schema.py, docs/performance.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

SCHEMA_VERSION = 1
_DOCS = Path(__file__).resolve().parents[2] / "docs"
SUMMARY_SCHEMA_FILE = "summary.schema.json"
SWEEP_SCHEMA_FILE = "sweep.schema.json"


class _Doc(msgspec.Struct, kw_only=True, gc=False):
    """Every result structure: fields by keyword, unknown keys ignored when read."""


# ---- a phase (PhaseAccumulator.finish) --------------------------------------------------------


class Span(_Doc, kw_only=True, gc=False):
    first_intended: float | None
    last_end: float | None
    duration_s: float | None


class Requests(_Doc, kw_only=True, gc=False, omit_defaults=True):
    total: int
    succeeded: int
    failed: int
    with_usage: int
    missing_usage: int
    # Deliberately bad requests ([workload] invalid_share), not in `total`: their outcomes are
    # invalid_rejected, invalid_accepted and invalid_failed. Written only when not 0.
    invalid: int = 0


class Tokens(_Doc, kw_only=True, gc=False):
    prompt: int
    generation: int
    total: int
    cached: int
    cached_reported_requests: int
    cached_fraction: float | None
    usage_complete: bool
    missing_usage_requests: int


class Throughput(_Doc, kw_only=True, gc=False):
    requests_per_s: float | None
    prompt_tokens_per_s: float | None
    generation_tokens_per_s: float | None
    total_tokens_per_s: float | None


class LatencyStats(_Doc, kw_only=True, gc=False):
    """One latency metric in ms: HdrHistogram percentiles, max, mean, and the sample count."""

    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    p99_9: float | None = msgspec.field(default=None, name="p99.9")
    max: float | None = None
    mean: float | None = None
    count: int = 0

    def quantile(self, name: str) -> float | None:
        """A figure by its name on disk ("p50" .. "p99.9", "max", "mean")."""
        value: float | None = getattr(self, name.replace(".", "_"))
        return value


class Concurrency(_Doc, kw_only=True, gc=False):
    peak: int
    mean: float | None
    target: int | None = None  # what the phase asked in flight (None: uncapped open loop)
    mean_over_target: float | None = None


class Workload(_Doc, kw_only=True, gc=False):
    images_shown: int = 0
    distinct_images: int | None = None
    distinct_bodies: int | None = None
    waited_for_body: int = 0
    body_wait_s: float = 0.0


class Goodput(_Doc, kw_only=True, gc=False):
    slo: dict[str, float]  # the thresholds set, in ms
    latency_basis: str
    count: int
    fraction: float | None
    requests_per_s: float | None


class Window(_Doc, kw_only=True, gc=False):
    """One throughput window (metrics.windows.ThroughputWindows.series)."""

    index: int
    start: float
    end: float
    duration: float
    prompt_tokens: int
    generation_tokens: int
    requests: int
    errors: int
    cached_prompt_tokens: int = 0
    prompt_tokens_per_s: float | None = None
    computed_prompt_tokens_per_s: float | None = None
    generation_tokens_per_s: float | None = None
    requests_per_s: float | None = None
    mean_concurrency: float | None = None


class Windows(_Doc, kw_only=True, gc=False):
    window_s: float
    origin: float
    series: list[Window]


class ErrorExample(_Doc, kw_only=True, gc=False):
    end: float
    index: int
    status: int | None
    error: str


class TargetTotals(_Doc, kw_only=True, gc=False):
    """One target URL's share of a phase, to set beside that server's counters."""

    requests: int
    with_usage: int
    prompt_tokens: int
    generation_tokens: int


class Phase(_Doc, kw_only=True, gc=False):
    """A measured phase: docs/metrics.md describes each figure."""

    schema_version: int = SCHEMA_VERSION
    phase: str
    started: float | None
    ended: float | None
    span: Span
    requests: Requests
    outcomes: dict[str, int]
    finish_reasons: dict[str, int]
    tokens: Tokens
    throughput: Throughput
    latency_ms: dict[str, LatencyStats]
    histograms_clamped: dict[str, int] = {}
    concurrency: Concurrency
    workload: Workload | None = None
    goodput: Goodput | None = None
    windows: Windows
    errors: dict[str, list[ErrorExample]] = {}
    targets: dict[str, TargetTotals] = {}

    def latency(self, metric: str, quantile: str) -> float | None:
        stats = self.latency_ms.get(metric)
        return None if stats is None else stats.quantile(quantile)


class Pair(_Doc, kw_only=True, gc=False):
    baseline: int | float | None  # token counts stay integers
    candidate: int | float | None


class PhaseComparison(_Doc, kw_only=True, gc=False):
    """A repeated phase against the phase it repeats: ratios are candidate / baseline."""

    baseline: str | None
    candidate: str | None
    ttft_p50_ratio: float | None = None
    ttft_p99_ratio: float | None = None
    tpot_p50_ratio: float | None = None
    tpot_p99_ratio: float | None = None
    itl_p50_ratio: float | None = None
    itl_p99_ratio: float | None = None
    e2e_p50_ratio: float | None = None
    e2e_p99_ratio: float | None = None
    requests_per_s_ratio: float | None = None
    prompt_tokens_per_s_ratio: float | None = None
    generation_tokens_per_s_ratio: float | None = None
    cached_fraction: Pair
    cached_tokens: Pair
    ttft_p50_ms: Pair

    def ratio(self, name: str) -> float | None:
        """`<metric>_<p>` ("ttft_p50") or a throughput key ("requests_per_s")."""
        value: float | None = getattr(self, f"{name}_ratio")
        return value


# ---- the server's side (metrics.scrape) --------------------------------------------------------


class CacheRate(_Doc, kw_only=True, gc=False):
    queries: int | None
    hits: int | None
    hit_rate: float | None


class ServerDelta(_Doc, kw_only=True, gc=False):
    """What a server did between two /metrics snapshots (metrics.scrape.diff)."""

    start: float
    end: float
    duration_s: float
    prompt_tokens: int | None
    generation_tokens: int | None
    requests_finished: int | None
    requests_completed: int | None
    requests_by_reason: dict[str, int] | None
    preemptions: int | None
    prefix_cache: CacheRate
    mm_cache: CacheRate
    mean_ms: dict[str, float | None]
    histogram_counts: dict[str, int | None] = {}
    notes: list[str] = []


class Agreement(_Doc, kw_only=True, gc=False):
    client: int
    server: int | None
    match: bool | None


class Comparison(_Doc, kw_only=True, gc=False):
    """The client's usage totals beside the server's counters over the same phase."""

    prompt_tokens: Agreement
    generation_tokens: Agreement
    requests: Agreement
    mismatch: bool
    note: str

    def figures(self) -> dict[str, Agreement]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "requests": self.requests,
        }


class PhaseTarget(_Doc, kw_only=True, gc=False):
    delta: ServerDelta
    comparison: Comparison


class PhaseServer(PhaseTarget, kw_only=True, gc=False):
    """A phase's server figures: the total over the targets, and each target's own."""

    targets: dict[str, PhaseTarget] = {}


class ServerTarget(_Doc, kw_only=True, gc=False):
    """One server's whole run: availability, first-to-last delta, gauge peaks."""

    available: bool
    samples: int
    failures: int
    note: str | None
    delta: ServerDelta | None
    peak_running: float | None = None
    peak_waiting: float | None = None
    peak_kv_cache_usage_perc: float | None = None


class ServerRun(ServerTarget, kw_only=True, gc=False):
    targets: dict[str, ServerTarget] = {}


class ServerSample(_Doc, kw_only=True, gc=False):
    time: float
    running: float | None
    waiting: float | None
    kv_cache_usage_perc: float | None


class Server(_Doc, kw_only=True, gc=False):
    phases: dict[str, PhaseServer] = {}
    run: ServerRun | None = None
    timeseries: list[ServerSample] = []


# ---- the client's self-check (metrics.selfcheck) -------------------------------------------------


class LoopLag(_Doc, kw_only=True, gc=False):
    p50: float | None = None
    p99: float | None = None
    max: float | None = None
    count: int = 0
    late_share: float | None = None


class CpuUse(_Doc, kw_only=True, gc=False):
    seconds: float | None = None
    wall_seconds: float | None = None
    cores_used: float | None = None
    loop_cores: float | None = None
    cores_available: int | None = None
    fraction_of_available: float | None = None


class HostLoad(_Doc, kw_only=True, gc=False):
    run_queue_wait_share: float | None = None
    run_queue_source: str | None = None
    cpu_pressure_share: float | None = None
    load_per_core: float | None = None


class Evidence(_Doc, kw_only=True, gc=False):
    evidence: str = ""


class Thresholds(_Doc, kw_only=True, gc=False):
    loop_lag_p99_ms: float
    late_share: float
    loop_busy_share: float
    run_queue_wait_share: float


class ShardCheck(_Doc, kw_only=True, gc=False):
    """One shard's self-check: its event loop's lag, CPU, the host, and the causes found."""

    node: str = ""  # the cluster node it ran on ("": the driver's host)

    loop_lag_ms: LoopLag = msgspec.field(default_factory=LoopLag)
    cpu: CpuUse = msgspec.field(default_factory=CpuUse)
    host: HostLoad = msgspec.field(default_factory=HostLoad)
    causes: dict[str, Evidence] = {}
    thresholds: Thresholds | None = None


class Cause(_Doc, kw_only=True, gc=False):
    cause: str  # client_cpu_bound, host_contention, in_flight_short
    where: str  # "shard 0", "phase main"
    evidence: str


class NodeCheck(_Doc, kw_only=True, gc=False):
    """The self-check of a cluster node's shards together: was the client bound on that host?"""

    node: str
    shards: list[int]
    causes: list[str]  # the causes found on its shards (client_cpu_bound, host_contention)
    cores_used: float | None = None  # its shards' CPU together
    loop_lag_p99_ms: float | None = None  # the worst of its shards'


class ClientCheck(_Doc, kw_only=True, gc=False):
    """Every shard's self-check and the causes found; `client_bound` only for client_cpu_bound."""

    client_bound: bool = False
    causes: list[Cause] = []
    shards: list[ShardCheck] = []
    nodes: list[NodeCheck] = []  # shards on a cluster (Ray): per node


class ShardPlace(_Doc, kw_only=True, gc=False):
    """Where a shard ran on a cluster, and its clock against the driver's."""

    shard: int
    node: str  # the node's IP address
    node_id: str
    host: str
    pid: int
    clock_offset_s: float  # its monotonic clock minus the driver's
    clock_uncertainty_s: float  # half the shortest round trip of the measurement
    round_trips: int


class Distributed(_Doc, kw_only=True, gc=False):
    """Shards on a cluster (`[distributed] backend = "ray"`): where each ran, and the clocks."""

    backend: str
    address: str
    nodes: int  # distinct nodes the shards ran on
    shards: list[ShardPlace] = []
    worst_clock_uncertainty_s: float | None = None


# ---- the run ----------------------------------------------------------------------------------


class Loss(_Doc, kw_only=True, gc=False):
    """A worker lost in the middle of a phase, and what it took along."""

    shard: int
    phase: str
    cause: str
    exit_status: int | None
    noticed_at: float  # run clock, s
    records: int  # delivered, kept in requests.jsonl and counted
    in_flight: int  # lost with it, as of its last progress line ...
    in_flight_at: float  # ... read at this run-clock time


class RunInfo(_Doc, kw_only=True, gc=False):
    name: str
    directory: str
    started_at: str
    origin_epoch: float
    duration_s: float
    seed: int
    transport: str
    urls: list[str]
    model: str
    simulator: bool
    workers: int = 1
    api: str = "chat"  # `[target] api`: the endpoint's name (loadgen.endpoints)
    # False: answers were read whole ("stream": false): TTFT = E2E, no ITL, no TPOT
    streamed: bool = True


class Host(_Doc, kw_only=True, gc=False):
    hostname: str = ""
    platform: str = ""
    machine: str = ""
    cpu_count: int | None = None
    cores_available: int | None = None


class Environment(_Doc, kw_only=True, gc=False):
    versions: dict[str, str] = {}
    host: Host = msgspec.field(default_factory=Host)
    argv: list[str] = []


class RunSummary(_Doc, kw_only=True, gc=False):
    """summary.json."""

    schema_version: int = SCHEMA_VERSION
    status: str  # "running" while phases remain, then "completed", "interrupted", "incomplete"
    reason: str = ""
    losses: list[Loss] = []
    run: RunInfo
    scenario: dict[str, Any]  # the scenario as run (loadgen.scenario.scenario_to_json)
    phases: dict[str, Phase]
    phase_comparisons: dict[str, PhaseComparison] = {}
    server: Server = msgspec.field(default_factory=Server)
    client: ClientCheck = msgspec.field(default_factory=ClientCheck)
    distributed: Distributed | None = None  # shards on a cluster
    warnings: list[str] = []
    environment: Environment = msgspec.field(default_factory=Environment)

    def phase_config(self, phase: str) -> dict[str, Any]:
        """The scenario's entry of `phase` ({} when absent)."""
        for p in self.scenario.get("phases", []):
            if isinstance(p, dict) and p.get("name") == phase:
                return dict(p)
        return {}


# ---- a sweep ----------------------------------------------------------------------------------


class Quantiles(_Doc, kw_only=True, gc=False):
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


class Level(_Doc, kw_only=True, gc=False):
    """The figures of one level's measured phase."""

    level: float
    run_dir: str  # relative to the sweep folder
    status: str
    requests: int
    failed: int
    requests_per_s: float | None
    prompt_tokens_per_s: float | None
    generation_tokens_per_s: float | None
    goodput_per_s: float | None  # None without SLOs
    goodput_fraction: float | None
    mean_concurrency: float | None
    ttft_ms: Quantiles
    tpot_ms: Quantiles
    itl_ms: Quantiles
    e2e_ms: Quantiles
    client_saturated: bool


class Knee(_Doc, kw_only=True, gc=False):
    level: float | None  # None: no level met the SLOs
    rule: Literal["slo", "throughput"]
    sentence: str
    beyond: bool = False  # the curve had not bent yet at the highest level


class Sweep(_Doc, kw_only=True, gc=False):
    """sweep.json."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["sweep"] = "sweep"
    status: str
    name: str | None
    axis: Literal["concurrency", "rate"]
    phase: str
    levels: list[Level]
    slo: dict[str, float] = {}
    attainment: float
    min_gain: float
    knee: Knee
    simulator: bool
    urls: list[str]
    started_at: str
    duration_s: float
    scenario: dict[str, Any]


# ---- reading and writing ----------------------------------------------------------------------


class SchemaError(ValueError):
    """A result document that is not of this loadgen's shape or version."""


class _Version(msgspec.Struct):
    schema_version: Any = None


D = TypeVar("D", RunSummary, Sweep)
_KIND = {RunSummary: "summary", Sweep: "sweep"}


def decode(data: bytes | str, kind: type[D] = RunSummary) -> D:  # type: ignore[assignment]
    """A summary.json (or, with `kind=Sweep`, a sweep.json) read back. Raises SchemaError, in one
    line, for another version or a document whose shape is not the one loadgen writes."""
    try:
        doc = msgspec.json.decode(data, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        _check_version(data, kind)  # another version's shape: say so, not which field differs
        raise SchemaError(f"does not have the shape loadgen writes ({_first_line(exc)})") from None
    if doc.schema_version != SCHEMA_VERSION:
        raise _refused(doc.schema_version, kind)
    return doc


def _check_version(data: bytes | str, kind: type[msgspec.Struct]) -> None:
    try:
        version = msgspec.json.decode(data, type=_Version).schema_version
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise SchemaError(f"not a loadgen {_KIND[kind]} ({_first_line(exc)})") from None
    if version != SCHEMA_VERSION:
        raise _refused(version, kind)


def _refused(version: Any, kind: type[msgspec.Struct]) -> SchemaError:
    return SchemaError(
        f"{_KIND[kind]} schema version {version!r} is not supported: this loadgen reads "
        f"version {SCHEMA_VERSION}"
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def to_builtins(doc: msgspec.Struct) -> Any:
    """The document as dicts and lists, keyed exactly as on disk."""
    return msgspec.to_builtins(doc, enc_hook=str)


def json_schema(kind: type[msgspec.Struct]) -> dict[str, Any]:
    schema: dict[str, Any] = msgspec.json.schema(kind)
    return schema


def schema_texts() -> dict[str, str]:
    """docs/*.schema.json as they should be: file name -> text."""
    import orjson

    option = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
    return {
        SUMMARY_SCHEMA_FILE: orjson.dumps(json_schema(RunSummary), option=option).decode(),
        SWEEP_SCHEMA_FILE: orjson.dumps(json_schema(Sweep), option=option).decode(),
    }


def write_schemas(folder: Path = _DOCS) -> list[Path]:
    """Write docs/summary.schema.json and docs/sweep.schema.json from the types."""
    paths = []
    for name, text in schema_texts().items():
        path = folder / name
        path.write_text(text, "utf-8")
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    if argv != ["docs"]:
        print("usage: python -m loadgen.results.schema docs", file=sys.stderr)
        return 2
    for path in write_schemas():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
