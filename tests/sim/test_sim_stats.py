"""The stats log line and the cache hit-rate window, as vLLM computes them."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st
from vllm_log_format import line_regex

from loadgen.sim.stats import (
    CacheStats,
    CachingMetrics,
    IterationStats,
    LoggingStatLogger,
    SchedulerStats,
    build_1_2_5_buckets,
)

LINE = line_regex()


def scheduler(running: int = 30, waiting: int = 0, usage: float = 0.123) -> SchedulerStats:
    return SchedulerStats(num_running=running, num_waiting=waiting, kv_cache_usage=usage)


def test_the_example_line_from_the_seed_case() -> None:
    logger = LoggingStatLogger(now=0.0)
    prefix = CacheStats(requests=10, queries=1000, hits=456)
    sched = scheduler()
    sched.prefix_cache = prefix
    logger.record(sched, IterationStats(num_prompt_tokens=13010, num_generation_tokens=19240))
    logger.record_mm(CacheStats(requests=2, queries=2, hits=1))
    level, message = logger.format(now=10.0)
    assert level == logging.INFO
    assert message == (
        "Engine 000: Avg prompt throughput: 1301.0 tokens/s, Avg generation throughput: "
        "1924.0 tokens/s, Running: 30 reqs, Waiting: 0 reqs, GPU KV cache usage: 12.3%, "
        "Prefix cache hit rate: 45.6%, MM cache hit rate: 50.0%"
    )
    assert LINE.match(message)


def test_interval_averages_over_time_since_last_log() -> None:
    logger = LoggingStatLogger(now=100.0)
    logger.record(scheduler(), IterationStats(num_generation_tokens=500))
    _, first = logger.format(now=105.0)
    logger.record(scheduler(), IterationStats(num_generation_tokens=500))
    _, second = logger.format(now=107.0)
    assert "Avg generation throughput: 100.0 tokens/s" in first
    assert "Avg generation throughput: 250.0 tokens/s" in second


def test_idle_engine_logs_at_debug_after_one_quiet_interval() -> None:
    logger = LoggingStatLogger(now=0.0)
    logger.record(scheduler(), IterationStats(num_generation_tokens=5))
    assert logger.format(1.0)[0] == logging.INFO
    assert logger.format(2.0)[0] == logging.INFO  # the previous interval was busy
    assert logger.format(3.0)[0] == logging.DEBUG


def test_optional_parts_appear_only_when_they_apply() -> None:
    logger = LoggingStatLogger(now=0.0)
    logger.record(scheduler(), IterationStats(num_generation_tokens=5))
    _, plain = logger.format(1.0)
    assert "MM cache" not in plain and "Preemptions" not in plain
    logger.record(scheduler(), IterationStats(num_generation_tokens=5, num_preempted=3))
    _, preempted = logger.format(2.0)
    assert ", Preemptions: 3, GPU KV cache usage" in preempted
    for message in (plain, preempted):
        assert LINE.match(message)


@given(
    st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 5000), st.integers(0, 5000),
    st.floats(0, 1), st.integers(0, 100), st.booleans(),
)  # fmt: skip
def test_every_line_matches_vllms_format(
    prompt: int, gen: int, running: int, waiting: int, usage: float, preempted: int, mm: bool
) -> None:
    logger = LoggingStatLogger(now=0.0)
    logger.record(scheduler(running, waiting, usage), IterationStats(prompt, gen, preempted))
    if mm:
        logger.record_mm(CacheStats(1, 1, 1))
    assert LINE.match(logger.format(now=10.0)[1])


def test_hit_rate_covers_the_most_recent_1000_requests() -> None:
    window = CachingMetrics()
    window.observe(CacheStats(requests=1000, queries=1000, hits=0))
    assert window.hit_rate == 0.0
    window.observe(CacheStats(requests=500, queries=500, hits=500))
    # The old batch is dropped once more than 1000 requests are held; the newest stays.
    assert window.hit_rate == 1.0
    window.observe(CacheStats())  # empty updates do not push anything out
    assert window.hit_rate == 1.0 and not window.empty


def test_1_2_5_buckets() -> None:
    assert build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert build_1_2_5_buckets(32768)[-1] == 20000
