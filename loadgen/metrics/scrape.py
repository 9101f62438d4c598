"""The server's own view: vLLM's Prometheus `/metrics`, parsed into snapshots, differenced over a
phase, and compared with the client's usage totals.

Metric names follow vLLM's V1 `PrometheusStatLogger` (vllm/v1/metrics/loggers.py, checked against
the 0.10-0.11 era source): counters get `_total` appended by prometheus_client, every series has
the labels `model_name` and `engine`. Older servers' deprecated names are read as fallbacks.

Parsing (`parse_metrics`, `diff`, `ServerComparison`) is pure; `scrape_once` and `MetricsScraper`
do the HTTP.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import httpx
from prometheus_client.parser import text_string_to_metric_families

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


def _samples(text: str) -> tuple[list[_Sample], str | None]:
    """Every sample on the page. A malformed page is re-read line by line, skipping bad lines."""
    try:
        return [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ], None
    except Exception as exc:  # prometheus_client raises ValueError and friends on bad input
        error = f"{type(exc).__name__}: {exc}"
    out: list[_Sample] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        try:
            out.extend(
                (s.name, s.labels, s.value)
                for family in text_string_to_metric_families(line + "\n")
                for s in family.samples
            )
        except Exception:
            continue
    return out, error


def parse_metrics(text: str, time: float, *, model: str | None = None) -> ServerSnapshot:
    """Parse a Prometheus text page. Never raises: what cannot be read is None.

    `model`, when given, keeps only series whose `model_name` label equals it (series without the
    label are kept).
    """
    sums: dict[str, float] = {}
    per_series: dict[str, list[float]] = {}
    by_reason: dict[str, float] = {}
    seen = 0
    samples, error = _samples(text)
    for name, labels, raw in samples:
        if not name.startswith("vllm:"):
            continue
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


def diff(start: ServerSnapshot, end: ServerSnapshot) -> dict[str, Any]:
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
    for key in HISTOGRAMS:
        a, b = start.histograms.get(key), end.histograms.get(key)
        if a is None or b is None or b[1] <= a[1]:
            means[key] = None
        else:
            means[key] = (b[0] - a[0]) / (b[1] - a[1]) * 1000.0
    return {
        "start": start.time,
        "end": end.time,
        "duration_s": end.time - start.time,
        "prompt_tokens": _int(d("prompt_tokens_total")),
        "generation_tokens": _int(d("generation_tokens_total")),
        "requests_finished": _int(d("request_success_total")),
        "requests_completed": completed,
        "requests_by_reason": dict(sorted(reasons.items())) if reasons is not None else None,
        "preemptions": _int(d("num_preemptions")),
        "prefix_cache": {"queries": _int(pq), "hits": _int(ph), "hit_rate": _hit_rate(ph, pq)},
        "mm_cache": {"queries": _int(mq), "hits": _int(mh), "hit_rate": _hit_rate(mh, mq)},
        "mean_ms": means,
        "notes": notes,
    }


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
        server: Mapping[str, Any],
    ) -> ServerComparison:
        return cls(
            client_prompt_tokens=prompt_tokens,
            server_prompt_tokens=server.get("prompt_tokens"),
            client_generation_tokens=generation_tokens,
            server_generation_tokens=server.get("generation_tokens"),
            client_requests=requests,
            server_requests=server.get("requests_completed"),
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

    @property
    def comparable(self) -> bool:
        return any(s is not None for _, s in self._pairs().values())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            key: {"client": c, "server": s, "match": None if s is None else c == s}
            for key, (c, s) in self._pairs().items()
        }
        out["mismatch"] = self.mismatch
        out["note"] = _MISMATCH_NOTE if self.mismatch else ""
        return out


def compare_tokens(summary: Mapping[str, Any], server: Mapping[str, Any]) -> dict[str, Any]:
    """Compare a phase summary's usage totals (requests with usage) with `diff(...)` output."""
    tokens = summary.get("tokens", {})
    requests = summary.get("requests", {})
    return ServerComparison.build(
        prompt_tokens=int(tokens.get("prompt", 0)),
        generation_tokens=int(tokens.get("generation", 0)),
        requests=int(requests.get("with_usage", 0)),
        server=server,
    ).to_json()


# ---- HTTP ----


async def _fetch(
    client: httpx.AsyncClient,
    url: str,
    *,
    origin: float,
    clock: Callable[[], float],
    request_timeout: float,
    model: str | None,
) -> tuple[ServerSnapshot | None, str | None]:
    try:
        response = await client.get(url, timeout=request_timeout)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    arrived = clock() - origin
    if response.status_code != 200:
        return None, f"HTTP {response.status_code}"
    snap = parse_metrics(response.text, arrived, model=model)
    if snap.vllm_samples == 0:
        return None, "no vllm: metrics on the page"
    return snap, None


async def scrape_once(
    client: httpx.AsyncClient,
    url: str,
    *,
    origin: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
    request_timeout: float = 5.0,
    model: str | None = None,
) -> ServerSnapshot | None:
    """GET `url` (the server's `/metrics`) once; None when it fails or is not vLLM's.

    The snapshot's time is `clock() - origin` when the response arrived, i.e. the run clock when
    `origin` is the run's zero on `clock`.
    """
    snap, _ = await _fetch(
        client, url, origin=origin, clock=clock, request_timeout=request_timeout, model=model
    )
    return snap


class MetricsScraper:
    """Scrapes `/metrics` every `interval` seconds and keeps the snapshots.

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
        self.snapshots: list[ServerSnapshot] = []
        self.failures = 0
        self.note: str | None = None

    @property
    def available(self) -> bool:
        return bool(self.snapshots)

    async def scrape(self, client: httpx.AsyncClient) -> ServerSnapshot | None:
        """Scrape once and keep the snapshot."""
        snap, error = await _fetch(
            client,
            self.url,
            origin=self.origin,
            clock=self.clock,
            request_timeout=min(self.timeout, max(self.interval, 0.5)),
            model=self.model,
        )
        if snap is None:
            self.failures += 1
            if self.note is None:
                self.note = f"{self.url}: {error}"
                log.warning(
                    "server metrics unavailable (%s); the run goes on without them", self.note
                )
            return None
        self.snapshots.append(snap)
        return snap

    async def run(self, client: httpx.AsyncClient | None = None) -> None:
        """Scrape on absolute deadlines until cancelled (a slow scrape skips missed deadlines)."""
        if client is None:
            async with httpx.AsyncClient(verify=self.verify) as own:
                await self._loop(own)
        else:
            await self._loop(client)

    async def _loop(self, client: httpx.AsyncClient) -> None:
        start = self.clock()
        k = 0
        while True:
            await self.scrape(client)
            k += 1
            now = self.clock()
            k = max(k, math.ceil((now - start) / self.interval))
            await anyio.sleep(max(0.0, start + k * self.interval - now))

    async def start(self, tg: anyio.abc.TaskGroup, client: httpx.AsyncClient | None = None) -> None:
        """Run in `tg` until its scope is cancelled."""
        tg.start_soon(self.run, client)

    def series(self) -> list[dict[str, Any]]:
        """The gauges over time: [{time, running, waiting, kv_cache_usage_perc}, ...]."""
        return [
            {
                "time": s.time,
                "running": s.running,
                "waiting": s.waiting,
                "kv_cache_usage_perc": s.kv_cache_usage_perc,
            }
            for s in self.snapshots
        ]

    def summary(self) -> dict[str, Any]:
        """Availability, the whole-run delta (first to last snapshot) and gauge peaks."""

        def peak(name: str) -> float | None:
            values = [v for s in self.snapshots if (v := getattr(s, name)) is not None]
            return max(values) if values else None

        return {
            "available": self.available,
            "samples": len(self.snapshots),
            "failures": self.failures,
            "note": self.note,
            "delta": diff(self.snapshots[0], self.snapshots[-1]) if self.snapshots else None,
            "peak_running": peak("running"),
            "peak_waiting": peak("waiting"),
            "peak_kv_cache_usage_perc": peak("kv_cache_usage_perc"),
        }
