"""Windowed throughput counted like vLLM's stats log line, and concurrency."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.metrics.windows import (
    ConcurrencyTracker,
    ThroughputWindows,
    generation_tokens_per_chunk,
    window_index,
)
from loadgen.records import Outcome, RequestRecord


def make(
    index: int = 0,
    *,
    sent: float = 0.0,
    end: float = 1.0,
    outcome: Outcome = Outcome.OK,
    first_token: float | None = None,
    chunk_times: list[float] | None = None,
    chunk_tokens: list[int] | None = None,
    prompt: int | None = None,
    completion: int | None = None,
) -> RequestRecord:
    return RequestRecord(
        index=index,
        phase="main",
        shard=0,
        target="http://127.0.0.1:1",
        intended=sent,
        sent=sent,
        end=end,
        outcome=outcome,
        first_token=first_token,
        chunk_times=list(chunk_times or []),
        chunk_tokens=list(chunk_tokens or []),
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


def test_prompt_at_first_token_generation_per_chunk_request_at_end() -> None:
    w = ThroughputWindows(window=10.0, origin=0.0)
    w.add(
        make(
            sent=1.0,
            end=25.5,
            first_token=8.0,
            chunk_times=[8.0, 9.5, 10.0, 12.0, 25.0],
            chunk_tokens=[1, 2, 1, 1, 3],
            prompt=100,
            completion=8,
        )
    )
    assert w.bins() == {
        0: {
            "prompt_tokens": 100,
            "generation_tokens": 3,
            "requests": 0,
            "errors": 0,
            "cached_prompt_tokens": 0,
        },
        1: {
            "prompt_tokens": 0,
            "generation_tokens": 2,
            "requests": 0,
            "errors": 0,
            "cached_prompt_tokens": 0,
        },
        2: {
            "prompt_tokens": 0,
            "generation_tokens": 3,
            "requests": 1,
            "errors": 0,
            "cached_prompt_tokens": 0,
        },
    }


def test_prompt_tokens_count_at_the_first_token_bearing_chunk_when_it_is_earlier() -> None:
    # a chunk carrying only part of a UTF-8 character arrives before the first visible content
    w = ThroughputWindows(window=1.0)
    w.add(make(end=3.5, first_token=2.2, chunk_times=[1.9, 2.2], prompt=50, completion=2))
    assert w.bins()[1]["prompt_tokens"] == 50


def test_usage_total_is_shared_over_chunks_when_chunk_counts_disagree() -> None:
    # 4 chunks, no per-chunk counts, usage says 10 tokens: 2, 3, 2, 3 on the running total
    r = make(end=5.0, first_token=0.5, chunk_times=[0.5, 1.5, 2.5, 3.5], prompt=1, completion=10)
    assert generation_tokens_per_chunk(r) == [2, 3, 2, 3]
    w = ThroughputWindows(window=1.0)
    w.add(r)
    assert [w.bins()[i]["generation_tokens"] for i in range(4)] == [2, 3, 2, 3]
    # per-chunk counts that add up to the usage figure are taken as they are
    r2 = make(end=2.0, chunk_times=[0.5, 1.5], chunk_tokens=[3, 4], completion=7)
    assert generation_tokens_per_chunk(r2) == [3, 4]
    # ... and in proportion when they do not
    r3 = make(end=2.0, chunk_times=[0.5, 1.5], chunk_tokens=[1, 3], completion=8)
    assert generation_tokens_per_chunk(r3) == [2, 6]


def test_without_chunk_times_generation_counts_at_end() -> None:
    w = ThroughputWindows(window=1.0)
    w.add(make(end=4.2, first_token=1.1, prompt=7, completion=12))
    assert w.bins() == {
        1: {
            "prompt_tokens": 7,
            "generation_tokens": 0,
            "requests": 0,
            "errors": 0,
            "cached_prompt_tokens": 0,
        },
        4: {
            "prompt_tokens": 0,
            "generation_tokens": 12,
            "requests": 1,
            "errors": 0,
            "cached_prompt_tokens": 0,
        },
    }


def test_missing_usage_and_errors_count_requests_but_no_tokens() -> None:
    w = ThroughputWindows(window=1.0)
    w.add(make(end=0.5, outcome=Outcome.MISSING_USAGE, first_token=0.2, chunk_times=[0.2, 0.3]))
    w.add(make(end=0.7, outcome=Outcome.TIMEOUT))
    assert w.bins() == {
        0: {
            "prompt_tokens": 0,
            "generation_tokens": 0,
            "requests": 1,
            "errors": 1,
            "cached_prompt_tokens": 0,
        }
    }


def test_series_rates_zero_filled_windows_and_the_last_window_cut_at_the_last_end() -> None:
    w = ThroughputWindows(window=10.0)
    w.add(make(0, sent=0.0, end=5.0, first_token=1.0, chunk_times=[1.0], prompt=40, completion=1))
    w.add(
        make(1, sent=20.0, end=25.0, first_token=21.0, chunk_times=[21.0], prompt=60, completion=1)
    )
    rows = w.series()
    assert [(r["index"], r["start"], r["end"], r["duration"]) for r in rows] == [
        (0, 0.0, 10.0, 10.0),
        (1, 10.0, 20.0, 10.0),
        (2, 20.0, 25.0, 5.0),
    ]
    assert [r["prompt_tokens_per_s"] for r in rows] == [4.0, 0.0, 12.0]
    assert [r["requests_per_s"] for r in rows] == [0.1, 0.0, 0.2]
    assert [r["mean_concurrency"] for r in rows] == [0.5, 0.0, 1.0]


def test_concurrency_peak_mean_and_per_window() -> None:
    c = ConcurrencyTracker()
    for a, b in [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0)]:
        c.add(a, b)
    # at 10.0 one request ends as another starts: [sent, end) intervals never overlap there
    assert c.peak() == 2
    assert c.mean(0.0, 20.0) == 1.5
    assert c.mean(0.0, 10.0) == 1.5
    assert c.mean(10.0, 20.0) == 1.5
    assert c.mean(5.0, 5.0) is None
    assert c.mean(20.0, 30.0) == 0.0


def test_window_of_time_matches_its_boundaries() -> None:
    assert window_index(10.0, 0.0, 10.0) == 1
    assert window_index(9.999999, 0.0, 10.0) == 0
    assert window_index(-0.1, 0.0, 10.0) == -1
    with pytest.raises(ValueError):
        ThroughputWindows(window=0.0)


@given(
    st.floats(min_value=-1e4, max_value=1e5, allow_nan=False),
    st.floats(min_value=-100.0, max_value=100.0, allow_nan=False),
    st.floats(min_value=1e-3, max_value=100.0, allow_nan=False),
)
def test_window_index_agrees_with_boundary_comparisons(
    t: float, origin: float, window: float
) -> None:
    i = window_index(t, origin, window)
    assert origin + i * window <= t < origin + (i + 1) * window


outcomes = st.sampled_from(list(Outcome))


@st.composite
def records(draw: st.DrawFn, index: int) -> RequestRecord:
    sent = draw(st.floats(min_value=0.0, max_value=60.0))
    ttft = draw(st.floats(min_value=0.0, max_value=5.0))
    gaps = draw(st.lists(st.floats(min_value=0.0, max_value=2.0), max_size=12))
    first = sent + ttft
    times = [first]
    for g in gaps:
        times.append(times[-1] + g)
    tokens = draw(
        st.one_of(
            st.just([]), st.lists(st.integers(0, 4), min_size=len(times), max_size=len(times))
        )
    )
    with_chunks = draw(st.booleans())
    return make(
        index,
        sent=sent,
        end=times[-1] + draw(st.floats(min_value=0.0, max_value=1.0)),
        outcome=draw(outcomes),
        first_token=first if draw(st.booleans()) else None,
        chunk_times=times if with_chunks else [],
        chunk_tokens=tokens if with_chunks else [],
        prompt=draw(st.one_of(st.none(), st.integers(0, 5000))),
        completion=draw(st.one_of(st.none(), st.integers(0, 600))),
    )


record_lists = st.integers(0, 25).flatmap(
    lambda n: st.tuples(*(records(i) for i in range(n))).map(list)
)


@settings(max_examples=80, deadline=None)
@given(record_lists, st.sampled_from([0.5, 1.0, 10.0]))
def test_window_totals_equal_record_totals(recs: list[RequestRecord], window: float) -> None:
    w = ThroughputWindows(window)
    for r in recs:
        w.add(r)
    ok = [r for r in recs if r.outcome is Outcome.OK]
    assert w.totals() == {
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok),
        "generation_tokens": sum(r.completion_tokens or 0 for r in ok),
        "requests": sum(r.outcome.is_success for r in recs),
        "errors": sum(not r.outcome.is_success for r in recs),
        "cached_prompt_tokens": sum(r.cached_tokens or 0 for r in ok if r.prompt_tokens),
    }
    series = w.series()
    assert sum(row["generation_tokens"] for row in series) == w.totals()["generation_tokens"]


@settings(max_examples=80, deadline=None)
@given(record_lists, st.integers(1, 4), st.data())
def test_merging_shards_gives_the_bins_of_one_process(
    recs: list[RequestRecord], shards: int, data: st.DataObject
) -> None:
    whole = ThroughputWindows(2.0, 0.5)
    parts = [ThroughputWindows(2.0, 0.5) for _ in range(shards)]
    for r in recs:
        whole.add(r)
        parts[data.draw(st.integers(0, shards - 1))].add(r)
    merged = ThroughputWindows.from_state(json.loads(json.dumps(parts[0].to_state())))
    for p in parts[1:]:
        merged.merge(ThroughputWindows.from_state(json.loads(json.dumps(p.to_state()))))
    assert merged.bins() == whole.bins()
    assert merged.concurrency.peak() == whole.concurrency.peak()
    assert merged.to_state() == whole.to_state()
    assert merged.series() == whole.series()


def test_cached_prompt_tokens_give_the_computed_rate_vllm_logs() -> None:
    """vLLM 0.32's log line counts the computed part of the prompt (prompt - cached)."""
    w = ThroughputWindows(window=1.0)
    rec = make(end=1.5, first_token=0.5, prompt=300, completion=2, chunk_times=[0.5, 1.2])
    rec.cached_tokens = 256
    w.add(rec)
    first = w.series()[0]
    assert first["prompt_tokens"] == 300
    assert first["cached_prompt_tokens"] == 256
    assert first["computed_prompt_tokens_per_s"] == pytest.approx(44.0)
    assert w.totals()["cached_prompt_tokens"] == 256
