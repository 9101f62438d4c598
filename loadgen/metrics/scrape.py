"""The server's own view: vLLM's Prometheus `/metrics`, parsed into snapshots, differenced over a
phase, and compared with the client's usage totals.

Metric names follow vLLM's V1 `PrometheusStatLogger` (vllm/v1/metrics/loggers.py, checked against
the 0.10-0.11 era source): counters get `_total` appended by prometheus_client, every series has
the labels `model_name` and `engine`. Older servers' deprecated names are read as fallbacks.

Parsing (`parse_metrics`, `diff`, `combine_deltas`, `reconcile`, `ServerComparison`) is pure;
`fetch_snapshot`, `MetricsScraper` (one server) and `ServerScrapes` (every target of a run) do the
HTTP, in worker threads so that neither the network wait nor the parse runs on the event loop that
timestamps the client's streams.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import httpx
import msgspec

from loadgen.results.schema import (
    Agreement,
    CacheRate,
    Comparison,
    Phase,
    PhaseServer,
    PhaseTarget,
    ServerDelta,
    ServerRun,
    ServerSample,
    ServerTarget,
)
from loadgen.safetext import for_terminal

log = logging.getLogger(__name__)

# snapshot field -> sample names, preferred first (later ones: deprecated names of older servers)
COUNTERS: dict[str, tuple[str, ...]] = {
    "prompt_tokens_total": ("vllm:prompt_tokens_total",),
    "generation_tokens_total": ("vllm:generation_tokens_total",),
    "request_success_total": ("vllm:request_success_total",),
    "prefix_cache_queries": (
        "vllm:prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_queries_total",
    ),
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "mm_cache_queries": ("vllm:mm_cache_queries_total",),
    "mm_cache_hits": ("vllm:mm_cache_hits_total",),
    "num_preemptions": ("vllm:num_preemptions_total",),
}
GAUGES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage_perc": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}
# Gauges averaged over engines rather than summed (a fraction per engine).
MEAN_GAUGES = frozenset({"kv_cache_usage_perc"})
# Server-side latency histograms whose _sum/_count give a mean over a phase.
HISTOGRAMS: dict[str, str] = {
    "ttft": "vllm:time_to_first_token_seconds",
    "itl": "vllm:inter_token_latency_seconds",
    "tpot": "vllm:request_time_per_output_token_seconds",
    "e2e": "vllm:e2e_request_latency_seconds",
    "queue": "vllm:request_queue_time_seconds",
    "prefill": "vllm:request_prefill_time_seconds",
    "decode": "vllm:request_decode_time_seconds",
}
# vLLM's finished_reason label values that are not a completed request.
NOT_COMPLETED_REASONS = frozenset({"abort", "error"})


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """One scrape of `/metrics`. Counters are summed over every label set (engines, reasons);
    a metric the server does not export is None."""

    time: float  # run clock, when the response arrived
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    request_success_total: float | None = None
    prefix_cache_queries: float | None = None
    prefix_cache_hits: float | None = None
    mm_cache_queries: float | None = None
    mm_cache_hits: float | None = None
    num_preemptions: float | None = None
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage_perc: float | None = None  # 0..1, mean over engines
    request_success_by_reason: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (sum, count)
    vllm_samples: int = 0  # how many `vllm:` samples the page had (0: not a vLLM server)
    parse_error: str | None = None  # the page had malformed lines (the readable ones are kept)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"time": self.time}
        for name in (*COUNTERS, *GAUGES):
            out[name] = getattr(self, name)
        out["request_success_by_reason"] = dict(self.request_success_by_reason)
        out["histograms"] = {k: {"sum": s, "count": c} for k, (s, c) in self.histograms.items()}
        out["vllm_samples"] = self.vllm_samples
        out["parse_error"] = self.parse_error
        return out


_Sample = tuple[str, dict[str, str], float]

# Every sample name `parse_metrics` reads. Only lines of these names are parsed: a real server's
# page is mostly histogram buckets and families loadgen ignores (106 KB, ~2000 lines, for a vLLM
# with many histograms), and a general parser spends tens of milliseconds on it.
KEPT_NAMES: frozenset[str] = frozenset(
    [n for names in (*COUNTERS.values(), *GAUGES.values()) for n in names]
    + [f"{base}{suffix}" for base in HISTOGRAMS.values() for suffix in ("_sum", "_count")]
)
# A line is looked at only when it starts with one of these (one C-level check per line): bucket
# lines and other families are skipped without being split or parsed.
_KEPT_PREFIXES = tuple(sorted(KEPT_NAMES))
_NAME_END = re.compile(r"[{ \t]")
# The label block up to its closing brace; a quoted value may hold braces, commas and escapes.
_LABEL_BLOCK = re.compile(r'\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\}')
_LABEL_PAIR = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_ESCAPE = re.compile(r'\\[\\n"]')
_UNESCAPED = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: _UNESCAPED[m.group(0)], value) if "\\" in value else value


def _labels(block: str) -> dict[str, str]:
    """`a="x",b="y\\"z"` (the inside of the braces) -> labels; ValueError when malformed."""
    labels: dict[str, str] = {}
    pos, end = 0, len(block)
    while pos < end:
        m = _LABEL_PAIR.match(block, pos)
        if m is None:
            if block[pos:].strip():
                raise ValueError(f"malformed labels {{{block}}}")
            break
        name = m.group(1)
        if name in labels:
            raise ValueError(f"label {name} given twice")
        labels[name] = _unescape(m.group(2))
        pos = m.end()
    return labels


def _number(text: str) -> float:
    if "_" in text:  # float() accepts 1_000; the exposition format does not
        raise ValueError(f"invalid value {text!r}")
    return float(text)


def _sample(line: str) -> _Sample | None:
    """One sample line -> (name, labels, value); None when its name is not one loadgen reads.
    Raises ValueError on a malformed line. The optional timestamp is checked and dropped."""
    m = _NAME_END.search(line)
    name_end = len(line) if m is None else m.start()
    name = line[:name_end]
    if name not in KEPT_NAMES:  # a longer name that starts with a kept one
        return None
    rest = line[name_end:].lstrip(" \t")
    labels: dict[str, str] = {}
    if rest.startswith("{"):
        block = _LABEL_BLOCK.match(rest)
        if block is None:
            raise ValueError(f"unterminated labels: {line[:80]!r}")
        labels = _labels(block.group(1))
        rest = rest[block.end() :]
    fields = rest.split()
    if not fields:
        raise ValueError(f"no value: {line[:80]!r}")
    value = _number(fields[0])
    if len(fields) > 1:
        _number(fields[-1])  # a timestamp in milliseconds
    return name, labels, value


def _samples(text: str) -> tuple[list[_Sample], str | None]:
    """The samples loadgen reads, in page order; the first malformed such line is reported and
    skipped. Lines of other families are never parsed, so their errors go unnoticed."""
    out: list[_Sample] = []
    error: str | None = None
    for raw in text.split("\n"):
        line = raw
        if not line.startswith(_KEPT_PREFIXES):
            if not line[:1].isspace():
                continue
            line = line.strip()  # indented: rare, but the format allows it
            if not line.startswith(_KEPT_PREFIXES):
                continue
        try:
            sample = _sample(line.rstrip())
        except ValueError as exc:
            if error is None:
                error = f"ValueError: {exc}"
            continue
        if sample is not None:
            out.append(sample)
    return out, error


def parse_metrics(text: str, time: float, *, model: str | None = None) -> ServerSnapshot:
    """Parse a Prometheus text page (format 0.0.4). Never raises: what cannot be read is None.

    Only the samples in KEPT_NAMES (COUNTERS, GAUGES, HISTOGRAMS' `_sum` and `_count`) are
    parsed; `vllm_samples` counts them. `model`, when given, keeps only series whose `model_name`
    label equals it (series without the label are kept).
    """
    sums: dict[str, float] = {}
    per_series: dict[str, list[float]] = {}
    by_reason: dict[str, float] = {}
    seen = 0
    samples, error = _samples(text)
    for name, labels, raw in samples:
        if model is not None and labels.get("model_name", model) != model:
            continue
        value = float(raw)
        if not math.isfinite(value):
            continue
        seen += 1
        sums[name] = sums.get(name, 0.0) + value
        per_series.setdefault(name, []).append(value)
        if name == "vllm:request_success_total":
            reason = labels.get("finished_reason", "")
            by_reason[reason] = by_reason.get(reason, 0.0) + value

    def pick(names: tuple[str, ...], mean: bool = False) -> float | None:
        for n in names:
            if n in sums:
                values = per_series[n]
                return sum(values) / len(values) if mean else sums[n]
        return None

    values: dict[str, Any] = {k: pick(v) for k, v in COUNTERS.items()}
    values.update({k: pick(v, k in MEAN_GAUGES) for k, v in GAUGES.items()})
    hist = {
        key: (sums[f"{base}_sum"], sums[f"{base}_count"])
        for key, base in HISTOGRAMS.items()
        if f"{base}_sum" in sums and f"{base}_count" in sums
    }
    return ServerSnapshot(
        time=time,
        request_success_by_reason=by_reason,
        histograms=hist,
        vllm_samples=seen,
        parse_error=error,
        **values,
    )


def _delta(start: float | None, end: float | None, name: str, notes: list[str]) -> float | None:
    if start is None or end is None:
        return None
    if end < start:
        notes.append(f"{name} went down ({start:g} -> {end:g}): the server restarted")
        return None
    return end - start


def _int(x: float | None) -> int | None:
    return None if x is None else round(x)


def _hit_rate(hits: float | None, queries: float | None) -> float | None:
    if hits is None or not queries:
        return None
    return hits / queries


def diff(start: ServerSnapshot, end: ServerSnapshot) -> ServerDelta:
    """What the server did between two snapshots: totals, cache hit rates and mean latencies.

    Hit rates are over the interval (not vLLM's rolling last-1000-requests figure in its log line):
    prefix cache in tokens, multimodal cache in items.
    """
    notes: list[str] = []

    def d(name: str) -> float | None:
        return _delta(getattr(start, name), getattr(end, name), name, notes)

    pq, ph = d("prefix_cache_queries"), d("prefix_cache_hits")
    mq, mh = d("mm_cache_queries"), d("mm_cache_hits")
    reasons: dict[str, int] | None = {}
    went_down = [
        r
        for r, v in end.request_success_by_reason.items()
        if v < start.request_success_by_reason.get(r, 0.0)
    ]
    if went_down:
        notes.append(f"request_success_total{{finished_reason={went_down[0]}}} went down")
        reasons = None
    else:
        reasons = {
            r: round(v - start.request_success_by_reason.get(r, 0.0))
            for r, v in end.request_success_by_reason.items()
        }
    completed: int | None = None
    if reasons is not None and end.request_success_by_reason:
        completed = sum(n for r, n in reasons.items() if r not in NOT_COMPLETED_REASONS)
    means: dict[str, float | None] = {}
    counts: dict[str, int | None] = {}  # observations over the interval: a mean's weight
    for key in HISTOGRAMS:
        a, b = start.histograms.get(key), end.histograms.get(key)
        counts[key] = None if a is None or b is None or b[1] < a[1] else round(b[1] - a[1])
        if a is None or b is None or b[1] <= a[1]:
            means[key] = None
        else:
            means[key] = (b[0] - a[0]) / (b[1] - a[1]) * 1000.0
    return ServerDelta(
        start=start.time,
        end=end.time,
        duration_s=end.time - start.time,
        prompt_tokens=_int(d("prompt_tokens_total")),
        generation_tokens=_int(d("generation_tokens_total")),
        requests_finished=_int(d("request_success_total")),
        requests_completed=completed,
        requests_by_reason=dict(sorted(reasons.items())) if reasons is not None else None,
        preemptions=_int(d("num_preemptions")),
        prefix_cache=CacheRate(queries=_int(pq), hits=_int(ph), hit_rate=_hit_rate(ph, pq)),
        mm_cache=CacheRate(queries=_int(mq), hits=_int(mh), hit_rate=_hit_rate(mh, mq)),
        mean_ms=means,
        histogram_counts=counts,
        notes=notes,
    )


_MISMATCH_NOTE = (
    "client and server totals differ; other traffic on the server, requests still in flight at a "
    "scrape, and requests that failed or were cancelled on the client (the server still counts "
    "their tokens) all explain a difference"
)


@dataclass(frozen=True, slots=True)
class ServerComparison:
    """Client usage totals beside the server's counters over the same phase, compared exactly."""

    client_prompt_tokens: int
    server_prompt_tokens: int | None
    client_generation_tokens: int
    server_generation_tokens: int | None
    client_requests: int
    server_requests: int | None

    @classmethod
    def build(
        cls,
        *,
        prompt_tokens: int,
        generation_tokens: int,
        requests: int,
        server: ServerDelta,
    ) -> ServerComparison:
        return cls(
            client_prompt_tokens=prompt_tokens,
            server_prompt_tokens=server.prompt_tokens,
            client_generation_tokens=generation_tokens,
            server_generation_tokens=server.generation_tokens,
            client_requests=requests,
            server_requests=server.requests_completed,
        )

    def _pairs(self) -> dict[str, tuple[int, int | None]]:
        return {
            "prompt_tokens": (self.client_prompt_tokens, self.server_prompt_tokens),
            "generation_tokens": (self.client_generation_tokens, self.server_generation_tokens),
            "requests": (self.client_requests, self.server_requests),
        }

    @property
    def mismatch(self) -> bool:
        """True when any figure the server reports differs from the client's."""
        return any(s is not None and c != s for c, s in self._pairs().values())

    def result(self) -> Comparison:
        """The comparison as summary.json keeps it."""
        pairs = {
            key: Agreement(client=c, server=s, match=None if s is None else c == s)
            for key, (c, s) in self._pairs().items()
        }
        return Comparison(
            prompt_tokens=pairs["prompt_tokens"],
            generation_tokens=pairs["generation_tokens"],
            requests=pairs["requests"],
            mismatch=self.mismatch,
            note=_MISMATCH_NOTE if self.mismatch else "",
        )


def compare_tokens(summary: Phase, server: ServerDelta) -> Comparison:
    """Compare a phase summary's usage totals (requests with usage) with `diff(...)` output."""
    return ServerComparison.build(
        prompt_tokens=summary.tokens.prompt,
        generation_tokens=summary.tokens.generation,
        requests=summary.requests.with_usage,
        server=server,
    ).result()


# ---- HTTP, off the measuring event loop ----
#
# Every GET and parse runs in a worker thread with its own blocking httpx.Client: neither the
# network wait nor the parsing runs on the event loop that timestamps streamed chunks (with one
# worker that loop is this process's). The loop only sleeps to the next deadline and awaits the
# thread. The parse holds the GIL, so it is kept short: only the families loadgen reads are parsed.


def fetch_snapshot(
    client: httpx.Client,
    url: str,
    *,
    origin: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
    request_timeout: float = 5.0,
    model: str | None = None,
) -> tuple[ServerSnapshot | None, str | None]:
    """GET `url` (a server's `/metrics`) and parse it, blocking: (snapshot, None) or (None, why).

    The snapshot's time is `clock() - origin` when the response arrived, i.e. the run clock when
    `origin` is the run's zero on `clock`.
    """
    try:
        response = client.get(url, timeout=request_timeout)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    arrived = clock() - origin
    if response.status_code != 200:
        return None, f"HTTP {response.status_code}"
    snap = parse_metrics(response.text, arrived, model=model)
    if snap.vllm_samples == 0:
        return None, "no vllm: metrics on the page"
    return snap, None


class MetricsScraper:
    """One server's `/metrics`: periodic snapshots (`scrape`) and one-off marks (`mark`), each
    fetched and parsed in a worker thread.

    A failing or absent `/metrics` is not fatal: the first failure is logged and kept in `note`,
    later ones only counted.
    """

    def __init__(
        self,
        url: str,
        *,
        interval: float = 1.0,
        origin: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
        verify: bool = True,
        timeout: float = 5.0,
        model: str | None = None,
        transport: httpx.BaseTransport | None = None,  # tests: an httpx.MockTransport
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0 seconds")
        self.url = url
        self.interval = interval
        self.origin = origin
        self.clock = clock
        self.verify = verify
        self.timeout = timeout
        self.model = model
        self.transport = transport
        self.snapshots: list[ServerSnapshot] = []
        self.failures = 0
        self.note: str | None = None
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()  # one request at a time on this server's client

    @property
    def available(self) -> bool:
        return bool(self.snapshots)

    def _fetch_blocking(self, request_timeout: float) -> tuple[ServerSnapshot | None, str | None]:
        with self._lock:
            if self._client is None:  # built in the thread: a TLS context costs milliseconds
                self._client = httpx.Client(verify=self.verify, transport=self.transport)
            return fetch_snapshot(
                self._client,
                self.url,
                origin=self.origin,
                clock=self.clock,
                request_timeout=request_timeout,
                model=self.model,
            )

    async def _fetch(self, request_timeout: float) -> tuple[ServerSnapshot | None, str | None]:
        return await anyio.to_thread.run_sync(self._fetch_blocking, request_timeout)

    def _failed(self, error: str | None) -> None:
        self.failures += 1
        if self.note is None:
            self.note = f"{self.url}: {error}"
            log.warning(  # the server's words, on the terminal: no escape sequences
                "server metrics unavailable (%s); the run goes on without them",
                for_terminal(self.note, lines=False),
            )

    async def scrape(self) -> ServerSnapshot | None:
        """Scrape once and keep the snapshot in the series."""
        snap, error = await self._fetch(min(self.timeout, max(self.interval, 0.5)))
        if snap is None:
            self._failed(error)
            return None
        self.snapshots.append(snap)
        return snap

    async def mark(self) -> ServerSnapshot | None:
        """One snapshot outside the series (a phase's start or end); None when it fails."""
        snap, _ = await self._fetch(self.timeout)
        return snap

    async def run(self) -> None:
        """Scrape on absolute deadlines until cancelled (a slow scrape skips missed deadlines)."""
        await _every(self.interval, self.clock, self.scrape)

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Run in `tg` until its scope is cancelled."""
        tg.start_soon(self.run)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def series(self) -> list[ServerSample]:
        """The gauges over time: time, running, waiting, kv_cache_usage_perc."""
        return _series(self.snapshots)

    def summary(self) -> ServerTarget:
        """Availability, the whole-run delta (first to last snapshot) and gauge peaks."""
        return ServerTarget(
            available=self.available,
            samples=len(self.snapshots),
            failures=self.failures,
            note=self.note,
            delta=diff(self.snapshots[0], self.snapshots[-1]) if self.snapshots else None,
            **msgspec.structs.asdict(_peaks(self.snapshots)),
        )


async def _every(
    interval: float, clock: Callable[[], float], step: Callable[[], Awaitable[object]]
) -> None:
    start = clock()
    k = 0
    while True:
        await step()
        k += 1
        now = clock()
        k = max(k, math.ceil((now - start) / interval))
        await anyio.sleep(max(0.0, start + k * interval - now))


def _series(snapshots: Sequence[ServerSnapshot]) -> list[ServerSample]:
    return [
        ServerSample(
            time=s.time,
            running=s.running,
            waiting=s.waiting,
            kv_cache_usage_perc=s.kv_cache_usage_perc,
        )
        for s in snapshots
    ]


class _Peaks(msgspec.Struct, kw_only=True):
    peak_running: float | None
    peak_waiting: float | None
    peak_kv_cache_usage_perc: float | None


def _peaks(snapshots: Sequence[ServerSnapshot]) -> _Peaks:
    def peak(name: str) -> float | None:
        values = [v for s in snapshots if (v := getattr(s, name)) is not None]
        return max(values) if values else None

    return _Peaks(
        peak_running=peak("running"),
        peak_waiting=peak("waiting"),
        peak_kv_cache_usage_perc=peak("kv_cache_usage_perc"),
    )


class ServerScrapes:
    """The `/metrics` of every target of a run (requests go round-robin over them), scraped
    together: one round every `interval`, and marks at phase boundaries.

    Targets are server roots (`http://h:8000`); `summary()` and `phase()` give each target's
    figures and their total (counters summed; for one target the total is that target's own).
    """

    def __init__(
        self,
        roots: Sequence[str],
        *,
        interval: float = 1.0,
        origin: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
        verify: bool = True,
        timeout: float = 5.0,
        model: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not roots:
            raise ValueError("no target to scrape")
        self.interval = interval
        self.clock = clock
        self.scrapers = {
            root: MetricsScraper(
                root + "/metrics",
                interval=interval,
                origin=origin,
                clock=clock,
                verify=verify,
                timeout=timeout,
                model=model,
                transport=transport,
            )
            for root in dict.fromkeys(roots)
        }
        # Rounds in which every target answered, combined: the run's total series.
        self.rounds: list[ServerSnapshot] = []

    @property
    def roots(self) -> list[str]:
        return list(self.scrapers)

    async def _each(
        self, call: Callable[[MetricsScraper], Awaitable[ServerSnapshot | None]]
    ) -> dict[str, ServerSnapshot | None]:
        if len(self.scrapers) == 1:
            root, scraper = next(iter(self.scrapers.items()))
            return {root: await call(scraper)}
        out: dict[str, ServerSnapshot | None] = {}

        async def one(root: str, scraper: MetricsScraper) -> None:
            out[root] = await call(scraper)

        async with anyio.create_task_group() as tg:
            for root, scraper in self.scrapers.items():
                tg.start_soon(one, root, scraper)
        return {root: out.get(root) for root in self.scrapers}

    async def mark(self) -> dict[str, ServerSnapshot | None]:
        """A snapshot of every target (None for one that failed), fetched concurrently."""
        return await self._each(MetricsScraper.mark)

    async def scrape(self) -> None:
        snaps = await self._each(MetricsScraper.scrape)
        if all(s is not None for s in snaps.values()):
            self.rounds.append(combine_snapshots([s for s in snaps.values() if s is not None]))

    async def run(self) -> None:
        await _every(self.interval, self.clock, self.scrape)

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Scrape every `interval` in `tg` until its scope is cancelled."""
        tg.start_soon(self.run)

    def close(self) -> None:
        for scraper in self.scrapers.values():
            scraper.close()

    def series(self) -> list[ServerSample]:
        """The total gauges over time (requests summed over targets, KV usage their mean)."""
        if len(self.scrapers) == 1:
            return next(iter(self.scrapers.values())).series()
        return _series(self.rounds)

    def summary(self) -> ServerRun:
        """The whole run: the total (as `MetricsScraper.summary`) and `targets`, one each."""
        targets = {root: s.summary() for root, s in self.scrapers.items()}
        if len(targets) == 1:
            only = next(iter(targets.values()))
            return ServerRun(
                available=only.available,
                samples=only.samples,
                failures=only.failures,
                note=only.note,
                delta=only.delta,
                peak_running=only.peak_running,
                peak_waiting=only.peak_waiting,
                peak_kv_cache_usage_perc=only.peak_kv_cache_usage_perc,
                targets=targets,
            )
        parts = list(targets.values())
        deltas = {r: t.delta for r, t in targets.items() if t.delta is not None}
        notes = [t.note for t in parts if t.note]
        return ServerRun(
            available=all(t.available for t in parts),
            samples=len(self.rounds),
            failures=sum(t.failures for t in parts),
            note="; ".join(notes) if notes else None,
            delta=combine_deltas(deltas) if len(deltas) == len(parts) else None,
            targets=targets,
            **msgspec.structs.asdict(_peaks(self.rounds)),
        )

    def phase(
        self,
        start: Mapping[str, ServerSnapshot | None],
        end: Mapping[str, ServerSnapshot | None],
        client: Mapping[str, ClientTotals],
    ) -> PhaseServer | None:
        """A phase's server figures from its start and end marks, beside the client's totals
        per target (`client[root]`): each target's delta and comparison, and their total."""
        return reconcile(self.roots, start, end, client)


@dataclass(frozen=True, slots=True)
class ClientTotals:
    """What the client counted for one target over a phase (requests with usage, their tokens)."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests: int = 0

    def __add__(self, other: ClientTotals) -> ClientTotals:
        return ClientTotals(
            self.prompt_tokens + other.prompt_tokens,
            self.generation_tokens + other.generation_tokens,
            self.requests + other.requests,
        )

    def compare(self, delta: ServerDelta) -> Comparison:
        return ServerComparison.build(
            prompt_tokens=self.prompt_tokens,
            generation_tokens=self.generation_tokens,
            requests=self.requests,
            server=delta,
        ).result()


def reconcile(
    roots: Sequence[str],
    start: Mapping[str, ServerSnapshot | None],
    end: Mapping[str, ServerSnapshot | None],
    client: Mapping[str, ClientTotals],
) -> PhaseServer | None:
    """Per target: the server's delta over the phase and its comparison with the client's totals
    for that target; in total: the deltas combined, compared with the client's totals over the
    same targets. A target without both marks is left out of the total, with a note (comparing
    it would blame the other servers for its requests). None when no target has both marks."""
    targets: dict[str, PhaseTarget] = {}
    missing: list[str] = []
    counted = ClientTotals()
    for root in roots:
        a, b = start.get(root), end.get(root)
        if a is None or b is None:
            missing.append(root)
            continue
        delta = diff(a, b)
        mine = client.get(root, ClientTotals())
        targets[root] = PhaseTarget(delta=delta, comparison=mine.compare(delta))
        counted = counted + mine
    if not targets:
        return None
    if len(roots) == 1:
        only = targets[roots[0]]
        return PhaseServer(delta=only.delta, comparison=only.comparison, targets=targets)
    total = combine_deltas({root: t.delta for root, t in targets.items()})
    if missing:
        total.notes.append(
            "no /metrics at the start or end of the phase from "
            + ", ".join(missing)
            + ": the total and its comparison leave out those targets and their requests"
        )
    return PhaseServer(delta=total, comparison=counted.compare(total), targets=targets)


def combine_snapshots(snaps: Sequence[ServerSnapshot]) -> ServerSnapshot:
    """Several servers as one: counters and request gauges summed, KV cache usage averaged,
    histogram sums and counts added; a figure is None unless every server has it."""

    def total(name: str, mean: bool = False) -> float | None:
        values: list[float | None] = [getattr(s, name) for s in snaps]
        known = [v for v in values if v is not None]
        if len(known) < len(values):
            return None
        return sum(known) / len(known) if mean else sum(known)

    values: dict[str, Any] = {k: total(k) for k in COUNTERS}
    values.update({k: total(k, k in MEAN_GAUGES) for k in GAUGES})
    by_reason: dict[str, float] = {}
    for s in snaps:
        for reason, v in s.request_success_by_reason.items():
            by_reason[reason] = by_reason.get(reason, 0.0) + v
    hist = {
        key: (
            sum(s.histograms[key][0] for s in snaps),
            sum(s.histograms[key][1] for s in snaps),
        )
        for key in HISTOGRAMS
        if all(key in s.histograms for s in snaps)
    }
    errors = [s.parse_error for s in snaps if s.parse_error]
    return ServerSnapshot(
        time=max(s.time for s in snaps),
        request_success_by_reason=by_reason,
        histograms=hist,
        vllm_samples=sum(s.vllm_samples for s in snaps),
        parse_error=errors[0] if errors else None,
        **values,
    )


def _sum_known(values: Sequence[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def combine_deltas(deltas: Mapping[str, ServerDelta]) -> ServerDelta:
    """The total of several servers' `diff` outputs over the same interval: counts added (None
    when any server lacks one), hit rates and mean latencies over the combined counts, notes
    prefixed with their server. One server's delta is returned as it is (a copy)."""
    if len(deltas) == 1:
        return msgspec.structs.replace(next(iter(deltas.values())))
    parts = list(deltas.values())

    def add(get: Callable[[ServerDelta], int | None]) -> int | None:
        return _sum_known([get(d) for d in parts])

    reasons: dict[str, int] | None = {}
    for d in parts:
        by = d.requests_by_reason
        if by is None or reasons is None:
            reasons = None
            continue
        for r, n in by.items():
            reasons[r] = reasons.get(r, 0) + n
    pq, ph = add(lambda d: d.prefix_cache.queries), add(lambda d: d.prefix_cache.hits)
    mq, mh = add(lambda d: d.mm_cache.queries), add(lambda d: d.mm_cache.hits)
    means, counts = _combined_means(parts)
    start = min(d.start for d in parts)
    end = max(d.end for d in parts)
    return ServerDelta(
        start=start,
        end=end,
        duration_s=end - start,
        prompt_tokens=add(lambda d: d.prompt_tokens),
        generation_tokens=add(lambda d: d.generation_tokens),
        requests_finished=add(lambda d: d.requests_finished),
        requests_completed=add(lambda d: d.requests_completed),
        requests_by_reason=dict(sorted(reasons.items())) if reasons is not None else None,
        preemptions=add(lambda d: d.preemptions),
        prefix_cache=CacheRate(queries=pq, hits=ph, hit_rate=_hit_rate(ph, pq)),
        mm_cache=CacheRate(queries=mq, hits=mh, hit_rate=_hit_rate(mh, mq)),
        mean_ms=means,
        histogram_counts=counts,
        notes=[f"{root}: {n}" for root, d in deltas.items() for n in d.notes],
    )


def _combined_means(
    parts: Sequence[ServerDelta],
) -> tuple[dict[str, float | None], dict[str, int | None]]:
    """Each histogram's mean over the servers' combined observations, and their count."""
    means: dict[str, float | None] = {}
    counts: dict[str, int | None] = {}
    for key in HISTOGRAMS:
        n = [d.histogram_counts.get(key) for d in parts]
        m = [d.mean_ms.get(key) for d in parts]
        counts[key] = _sum_known(n)
        weighted = [(c, v) for c, v in zip(n, m, strict=True) if c and v is not None]
        observed = sum(c for c, _ in weighted)
        means[key] = sum(c * v for c, v in weighted) / observed if observed else None
    return means, counts
