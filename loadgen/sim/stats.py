"""What the engine reports after each step, and vLLM's two consumers of it: the periodic stats log
line and the Prometheus metrics. Both follow vLLM's V1 code (vllm/v1/metrics/loggers.py and
stats.py): prompt tokens are counted in full when a request produces its first token, generation
tokens as they are produced, cache hit rates over the most recent 1000 requests.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

logger = logging.getLogger("loadgen.sim.stats")

FINISH_REASONS = ("stop", "length", "abort", "error")


@dataclass(slots=True)
class CacheStats:
    requests: int = 0
    queries: int = 0
    hits: int = 0

    def record(self, queries: int, hits: int) -> None:
        self.requests += 1
        self.queries += queries
        self.hits += hits


@dataclass(slots=True)
class SchedulerStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache: CacheStats = field(default_factory=CacheStats)


@dataclass(slots=True)
class FinishedStats:
    finish_reason: str
    e2e_latency: float
    queued_time: float
    prefill_time: float
    inference_time: float
    decode_time: float
    mean_time_per_output_token: float
    num_prompt_tokens: int
    num_generation_tokens: int
    max_tokens_param: int | None


@dataclass(slots=True)
class IterationStats:
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_preempted: int = 0
    ttfts: list[float] = field(default_factory=list)
    itls: list[float] = field(default_factory=list)
    finished: list[FinishedStats] = field(default_factory=list)


class CachingMetrics:
    """Hit rate over the most recent `max_recent_requests` requests (vLLM's CachingMetrics)."""

    def __init__(self, max_recent_requests: int = 1000) -> None:
        self.max_recent_requests = max_recent_requests
        self._queue: deque[tuple[int, int, int]] = deque()
        self._requests = 0
        self._queries = 0
        self._hits = 0

    def observe(self, stats: CacheStats) -> None:
        if stats.requests == 0:
            return
        self._queue.append((stats.requests, stats.queries, stats.hits))
        self._requests += stats.requests
        self._queries += stats.queries
        self._hits += stats.hits
        while len(self._queue) > 1 and self._requests > self.max_recent_requests:
            requests, queries, hits = self._queue.popleft()
            self._requests -= requests
            self._queries -= queries
            self._hits -= hits

    @property
    def empty(self) -> bool:
        return self._requests == 0

    @property
    def hit_rate(self) -> float:
        return self._hits / self._queries if self._queries else 0.0


class LoggingStatLogger:
    """The interval log line, with vLLM's format, parts and idle rule."""

    def __init__(self, now: float, engine_index: int = 0) -> None:
        self.engine_index = engine_index
        self.prefix_caching = CachingMetrics()
        self.mm_caching = CachingMetrics()
        self.last_scheduler = SchedulerStats()
        self.last_prompt_throughput = 0.0
        self.last_generation_throughput = 0.0
        self._reset(now)

    def _reset(self, now: float) -> None:
        self.last_log_time = now
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self.num_preemptions = 0

    def record(self, scheduler: SchedulerStats | None, iteration: IterationStats | None) -> None:
        if iteration is not None:
            self.num_prompt_tokens += iteration.num_prompt_tokens
            self.num_generation_tokens += iteration.num_generation_tokens
            self.num_preemptions += iteration.num_preempted
        if scheduler is not None:
            self.prefix_caching.observe(scheduler.prefix_cache)
            self.last_scheduler = scheduler

    def record_mm(self, stats: CacheStats) -> None:
        self.mm_caching.observe(stats)

    def format(self, now: float) -> tuple[int, str]:
        """(log level, message) for the interval ending now; resets the interval."""
        elapsed = now - self.last_log_time
        prompt = self.num_prompt_tokens / elapsed if elapsed > 0 else 0.0
        generation = self.num_generation_tokens / elapsed if elapsed > 0 else 0.0
        preemptions = self.num_preemptions
        self._reset(now)
        idle = not any(
            (prompt, generation, self.last_prompt_throughput, self.last_generation_throughput)
        )
        self.last_prompt_throughput = prompt
        self.last_generation_throughput = generation
        parts = [
            "Avg prompt throughput: %.1f tokens/s",
            "Avg generation throughput: %.1f tokens/s",
            "Running: %d reqs",
            "Waiting: %d reqs",
        ]
        args: list[float | int] = [
            prompt,
            generation,
            self.last_scheduler.num_running,
            self.last_scheduler.num_waiting,
        ]
        if preemptions > 0:
            parts.append("Preemptions: %d")
            args.append(preemptions)
        parts += ["GPU KV cache usage: %.1f%%", "Prefix cache hit rate: %.1f%%"]
        args += [self.last_scheduler.kv_cache_usage * 100, self.prefix_caching.hit_rate * 100]
        if not self.mm_caching.empty:
            parts.append("MM cache hit rate: %.1f%%")
            args.append(self.mm_caching.hit_rate * 100)
        message = f"Engine {self.engine_index:03d}: " + ", ".join(parts) % tuple(args)
        return (logging.DEBUG if idle else logging.INFO), message

    def log(self, now: float) -> None:
        level, message = self.format(now)
        logger.log(level, "%s", message)


# Bucket boundaries as in vLLM's PrometheusStatLogger.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to max_value (vLLM's build_1_2_5_buckets)."""
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


class PrometheusMetrics:
    """vLLM's V1 metric names and labels, in the simulator's own CollectorRegistry."""

    def __init__(self, model_name: str, max_model_len: int, engine: str = "0") -> None:
        import prometheus_client as prom  # lazy: only the server process needs it

        prom.disable_created_metrics()  # type: ignore[no-untyped-call]
        self._prom = prom
        self.registry: CollectorRegistry = prom.CollectorRegistry()
        self._labels = ["model_name", "engine"]
        self._values = (model_name, engine)
        self._add_engine_state()
        self._add_token_counters()
        self._add_request_histograms(build_1_2_5_buckets(max_model_len))

    def _counter(self, name: str, doc: str) -> Counter:
        metric = self._prom.Counter(name, doc, self._labels, registry=self.registry)
        return metric.labels(*self._values)

    def _gauge(self, name: str, doc: str) -> Gauge:
        metric = self._prom.Gauge(name, doc, self._labels, registry=self.registry)
        return metric.labels(*self._values)

    def _histogram(self, name: str, doc: str, buckets: Sequence[float]) -> Histogram:
        metric = self._prom.Histogram(
            name, doc, self._labels, buckets=buckets, registry=self.registry
        )
        return metric.labels(*self._values)

    def _add_engine_state(self) -> None:
        self.running = self._gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        )
        self.waiting = self._gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        )
        self.kv_usage = self._gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        self.prefix_queries = self._counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        self.prefix_hits = self._counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        self.mm_queries = self._counter(
            "vllm:mm_cache_queries",
            "Multi-modal cache queries, in terms of number of queried items.",
        )
        self.mm_hits = self._counter(
            "vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items."
        )
        self.preemptions = self._counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        )

    def _add_token_counters(self) -> None:
        self.prompt_tokens = self._counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed."
        )
        self.generation_tokens = self._counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        success = self._prom.Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            [*self._labels, "finished_reason"], registry=self.registry,
        )  # fmt: skip
        self.success = {r: success.labels(*self._values, r) for r in FINISH_REASONS}

    def _add_request_histograms(self, len_buckets: Sequence[float]) -> None:
        histogram = self._histogram
        self.req_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", len_buckets
        )
        self.req_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", len_buckets
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
            ITERATION_TOKEN_BUCKETS,
        )  # fmt: skip
        self.max_tokens_param = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
            len_buckets,
        )  # fmt: skip
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )  # fmt: skip
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        )  # fmt: skip
        self.tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS,
        )  # fmt: skip
        lat = REQUEST_LATENCY_BUCKETS
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", lat
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            lat,
        )
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            lat,
        )
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            lat,
        )
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            lat,
        )

    def record(self, scheduler: SchedulerStats | None, iteration: IterationStats | None) -> None:
        if scheduler is not None:
            self.running.set(scheduler.num_running)
            self.waiting.set(scheduler.num_waiting)
            self.kv_usage.set(scheduler.kv_cache_usage)
            if scheduler.prefix_cache.requests:
                self.prefix_queries.inc(scheduler.prefix_cache.queries)
                self.prefix_hits.inc(scheduler.prefix_cache.hits)
        if iteration is None:
            return
        if iteration.num_preempted:
            self.preemptions.inc(iteration.num_preempted)
        if iteration.num_prompt_tokens:
            self.prompt_tokens.inc(iteration.num_prompt_tokens)
        if iteration.num_generation_tokens:
            self.generation_tokens.inc(iteration.num_generation_tokens)
        self.iteration_tokens.observe(iteration.num_prompt_tokens + iteration.num_generation_tokens)
        for ttft in iteration.ttfts:
            self.ttft.observe(ttft)
        observe_itl = self.itl.observe
        for itl in iteration.itls:
            observe_itl(itl)
        for f in iteration.finished:
            self.success[f.finish_reason].inc()
            self.e2e.observe(f.e2e_latency)
            self.queue_time.observe(f.queued_time)
            self.prefill_time.observe(f.prefill_time)
            self.inference_time.observe(f.inference_time)
            self.decode_time.observe(f.decode_time)
            self.req_prompt_tokens.observe(f.num_prompt_tokens)
            self.req_generation_tokens.observe(f.num_generation_tokens)
            self.tpot.observe(f.mean_time_per_output_token)
            if f.max_tokens_param:
                self.max_tokens_param.observe(f.max_tokens_param)

    def record_mm(self, stats: CacheStats) -> None:
        if stats.requests:
            self.mm_queries.inc(stats.queries)
            self.mm_hits.inc(stats.hits)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
