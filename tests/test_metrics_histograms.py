"""Latency histograms: what each request contributes, exact merging, encoding, interval logs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.metrics.histograms import (
    HIGHEST_US,
    LAYOUT,
    METRICS,
    IntervalHistograms,
    LatencyHistograms,
    new_histogram,
)
from loadgen.metrics.windows import to_us
from loadgen.records import Outcome, RequestRecord


def make(
    index: int = 0,
    *,
    intended: float = 0.0,
    sent: float | None = None,
    end: float = 1.0,
    outcome: Outcome = Outcome.OK,
    first_token: float | None = None,
    chunk_times: list[float] | None = None,
    chunk_tokens: list[int] | None = None,
    completion: int | None = None,
) -> RequestRecord:
    return RequestRecord(
        index=index,
        phase="main",
        shard=0,
        target="http://127.0.0.1:1",
        intended=intended,
        sent=intended if sent is None else sent,
        end=end,
        outcome=outcome,
        first_token=first_token,
        chunk_times=list(chunk_times or []),
        chunk_tokens=list(chunk_tokens or []),
        prompt_tokens=10 if outcome is Outcome.OK else None,
        completion_tokens=completion,
    )


def samples(h: LatencyHistograms, name: str) -> dict[int, int]:
    """value (us, lowest of its bucket) -> count"""
    return {LAYOUT.value(i): c for i, c in h.buckets(name).items()}


def test_a_chunk_of_k_tokens_gives_k_samples_of_its_gap_over_k() -> None:
    # first chunk at 1.000 (TTFT, not ITL); then gaps 1 ms (1 token), 3 ms (3 tokens), 1 ms (1)
    r = make(
        intended=0.5,
        sent=0.75,
        end=1.006,
        first_token=1.0,
        chunk_times=[1.0, 1.001, 1.004, 1.005],
        chunk_tokens=[2, 1, 3, 1],
        completion=7,
    )
    h = LatencyHistograms()
    h.record(r)
    assert samples(h, "itl") == {1000: 5}
    assert samples(h, "ttft") == {250_000 // 128 * 128: 1}  # 250 ms, in a 128 us bucket
    assert h.count("ttft_intended") == 1
    assert samples(h, "schedule_lag") == {250_000 // 128 * 128: 1}
    # TPOT = (last chunk - first token) / (completion - 1) = 5 ms / 6
    assert samples(h, "tpot") == {833: 1}
    assert h.count("e2e") == h.count("e2e_intended") == 1


def test_itl_of_one_request_sums_to_its_decode_time_and_its_mean_is_tpot() -> None:
    # gaps in whole microseconds below 2048 us, where the histogram's buckets are exact
    times = [2.0, 2.0012, 2.0021, 2.0036, 2.0040]
    tokens = [1, 2, 3, 1, 1]  # 1.2 ms / 2, 0.9 ms / 3, 1.5 ms / 1, 0.4 ms / 1
    r = make(end=2.005, first_token=2.0, chunk_times=times, chunk_tokens=tokens, completion=8)
    h = LatencyHistograms()
    h.record(r)
    itl = samples(h, "itl")
    assert itl == {600: 2, 300: 3, 1500: 1, 400: 1}
    total_us = sum(v * c for v, c in itl.items())
    assert total_us == 4000  # last chunk - first chunk
    # one sample per token after the first chunk (whose tokens arrive with the TTFT)
    assert sum(itl.values()) == sum(tokens[1:]) == 7
    assert r.tpot is not None
    assert round(r.tpot * 1e6, 6) == round(total_us / 7, 6)


def test_without_per_chunk_counts_each_chunk_is_one_token() -> None:
    r = make(end=3.0, first_token=1.0, chunk_times=[1.0, 1.001, 1.003], completion=9)
    h = LatencyHistograms()
    h.record(r)
    assert samples(h, "itl") == {1000: 1, 2000: 1}


def test_failed_requests_only_contribute_schedule_lag() -> None:
    h = LatencyHistograms()
    r = make(
        intended=1.0,
        sent=1.002,
        end=2.0,
        outcome=Outcome.HTTP_5XX,
        first_token=1.5,
        chunk_times=[1.5, 1.6],
    )
    h.record(r)
    assert samples(h, "schedule_lag") == {2000: 1}
    assert all(h.count(name) == 0 for name in METRICS if name != "schedule_lag")


def test_missing_usage_gives_latencies_but_no_tpot() -> None:
    h = LatencyHistograms()
    r = make(end=2.0, outcome=Outcome.MISSING_USAGE, first_token=1.0, chunk_times=[1.0, 1.001])
    h.record(r)
    assert h.count("ttft") == h.count("e2e") == h.count("itl") == 1
    assert h.count("tpot") == 0


def test_values_above_an_hour_are_clamped_and_counted() -> None:
    h = LatencyHistograms()
    h.add_us("e2e", to_us(7200.0))
    h.add_us("e2e", to_us(-1.0))  # a negative duration is 0
    assert h.clamped == {"e2e": 1}
    assert h.count("e2e") == 2
    p = h.percentiles("e2e")
    assert p["max"] is not None and HIGHEST_US / 1000 <= p["max"] < HIGHEST_US / 1000 * 1.001


def test_percentiles_are_hdrhistograms_and_empty_is_none() -> None:
    h = LatencyHistograms()
    ref = new_histogram()
    for ms in range(1, 1001):
        h.add_us("ttft", ms * 1000)
        ref.record_value(ms * 1000)
    p = h.percentiles("ttft")
    assert p["count"] == 1000
    assert p["p50"] == ref.get_value_at_percentile(50.0) / 1000
    assert p["p99.9"] == ref.get_value_at_percentile(99.9) / 1000
    assert p["max"] == ref.get_max_value() / 1000
    assert p["mean"] == ref.get_mean_value() / 1000
    assert 499.9 < float(p["p50"] or 0) < 500.6
    empty = h.percentiles("tpot")
    assert empty["count"] == 0 and empty["p50"] is None and empty["mean"] is None


values_us = st.integers(min_value=-5, max_value=HIGHEST_US + 10_000)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(values_us, st.integers(1, 5)), max_size=200))
def test_sparse_recording_is_the_same_histogram_as_hdrh_record_value(
    data: list[tuple[int, int]],
) -> None:
    h = LatencyHistograms()
    ref = new_histogram()
    for v, c in data:
        h.add_us("e2e", v, c)
        ref.record_value(min(max(v, 0), HIGHEST_US), c)
    built = h.histogram("e2e")
    assert built.equals(ref)
    assert built.get_total_count() == ref.get_total_count()
    assert built.get_min_value() == ref.get_min_value()
    assert built.get_max_value() == ref.get_max_value()
    assert built.encode() == ref.encode()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=2, max_size=60),
    st.booleans(),
    st.data(),
)
def test_fast_itl_path_equals_one_sample_at_a_time(
    gaps: list[float], with_tokens: bool, data: st.DataObject
) -> None:
    times = [10.0]
    for g in gaps:
        times.append(times[-1] + g)
    if data.draw(st.booleans()):  # out-of-order times take the careful path
        times[len(times) // 2] -= 5.0
    tokens = data.draw(st.lists(st.integers(0, 4), min_size=len(times), max_size=len(times)))
    if not with_tokens:
        tokens = []
    fast = LatencyHistograms()
    fast.record(make(end=times[-1] + 1, first_token=10.0, chunk_times=times, chunk_tokens=tokens))
    slow = LatencyHistograms()
    for i in range(1, len(times)):
        k = max(tokens[i], 1) if tokens else 1
        slow.add_us("itl", int((times[i] - times[i - 1]) * 1e6 / k + 0.5), k)
    assert fast.buckets("itl") == slow.buckets("itl")


def test_merge_is_exact_and_equals_hdrh_add() -> None:
    a, b, both = LatencyHistograms(), LatencyHistograms(), LatencyHistograms()
    for i in range(200):
        target = a if i % 3 else b
        for h in (target, both):
            h.add_us("ttft", 1000 + 37 * i * i)
            h.add_us("itl", 5 + i, 2)
    merged = LatencyHistograms()
    merged.merge(a)
    merged.merge(b)
    assert merged == both
    ref = a.histogram("ttft")
    ref.add(b.histogram("ttft"))
    assert merged.histogram("ttft").equals(ref)


def test_encode_decode_round_trip_and_foreign_layouts() -> None:
    h = LatencyHistograms()
    for v in (0, 1, 999, 2048, 123_456, 3_000_000_000):
        h.add_us("e2e", v, 3)
    h.add_us("itl", 42)
    enc = h.encode()
    assert set(enc) == {"e2e", "itl"}  # empty histograms are left out
    assert all(s.startswith("HISTF") for s in enc.values())
    assert LatencyHistograms.decode(enc) == h
    # a histogram of another layout is re-bucketed, keeping its counts
    other = HdrHistogram(1, 60_000_000, 2)
    for v in (5, 500, 50_000, 5_000_000):
        other.record_value(v, 2)
    decoded = LatencyHistograms.decode({"ttft": other.encode().decode()})
    assert decoded.count("ttft") == 8


def _rec_ending(index: int, end: float, ttft: float) -> RequestRecord:
    return make(
        index,
        intended=end - 2.0,
        end=end,
        first_token=end - 2.0 + ttft,
        chunk_times=[end - 2.0 + ttft, end - 0.5],
        completion=2,
    )


def test_interval_histograms_bin_by_end_and_sum_to_the_whole() -> None:
    iv = IntervalHistograms(window=10.0, origin=0.0)
    whole = LatencyHistograms()
    recs = [_rec_ending(0, 3.0, 0.1), _rec_ending(1, 9.99, 0.2), _rec_ending(2, 25.0, 0.3)]
    for r in recs:
        iv.record(r)
        whole.record(r)
    assert sorted(iv.windows) == [0, 2]
    assert iv.windows[0].count("ttft") == 2 and iv.windows[2].count("ttft") == 1
    assert iv.total() == whole


def test_interval_logs_read_back_with_hdrh(tmp_path: Path) -> None:
    iv = IntervalHistograms(window=10.0, origin=0.0)
    for i, (end, ttft) in enumerate([(3.0, 0.1), (9.0, 0.2), (25.0, 0.3)]):
        iv.record(_rec_ending(i, end, ttft))
    paths = iv.write_interval_logs(tmp_path, start_epoch=1_700_000_000.0, prefix="main.")
    assert sorted(p.name for p in paths) == sorted(f"main.{m}.hlog" for m in METRICS)
    text = (tmp_path / "main.ttft.hlog").read_text()
    assert "#[BaseTime: 1700000000.000" in text and "#[StartTime: 1700000000.000" in text
    reader = HistogramLogReader(str(tmp_path / "main.ttft.hlog"), new_histogram())
    got = []
    while (h := reader.get_next_interval_histogram()) is not None:
        got.append((h.get_start_time_stamp() / 1000.0, h.get_total_count()))
    reader.close()
    # windows 0, 1 (empty) and 2, placed in wall time
    assert got == [(1_700_000_000.0, 2), (1_700_000_010.0, 0), (1_700_000_020.0, 1)]


def test_interval_state_round_trip_merges_exactly() -> None:
    a = IntervalHistograms(5.0, 1.0)
    b = IntervalHistograms(5.0, 1.0)
    whole = IntervalHistograms(5.0, 1.0)
    for i in range(30):
        r = _rec_ending(i, 3.0 + i * 0.7, 0.05 * (i % 7))
        (a if i % 2 else b).record(r)
        whole.record(r)
    merged = IntervalHistograms.from_state(a.to_state())
    merged.merge(IntervalHistograms.from_state(b.to_state()))
    assert merged.windows == whole.windows


def vllm_bench_itl(records: list[RequestRecord]) -> list[float]:
    """ITL as `vllm bench serve` collects it: one sample per gap between consecutive streamed
    chunks that carried tokens, whatever the number of tokens in the later chunk (seconds)."""
    out: list[float] = []
    for r in records:
        out.extend(b - a for a, b in zip(r.chunk_times, r.chunk_times[1:], strict=False))
    return out


def test_itl_chunk_is_one_sample_per_chunk_gap_as_vllm_bench_counts_it() -> None:
    # Two requests whose chunks carry several tokens: 1 + 1 + 1 + 2 = 5 chunk gaps, 11 tokens.
    # The per-token `itl` spreads 20 ms over 4 samples of 5 ms; vLLM's ITL sees one gap of 20 ms.
    a = make(
        end=1.1,
        first_token=1.0,
        chunk_times=[1.0, 1.002, 1.022, 1.025],
        chunk_tokens=[1, 1, 4, 1],
        completion=7,
    )
    b = make(
        1,
        end=2.1,
        first_token=2.0,
        chunk_times=[2.0, 2.003, 2.043],
        chunk_tokens=[2, 1, 3],
        completion=6,
    )
    h = LatencyHistograms()
    h.record(a)
    h.record(b)
    gaps = vllm_bench_itl([a, b])
    assert len(gaps) == h.count("itl_chunk") == 5
    assert h.count("itl") == 1 + 4 + 1 + 1 + 3
    reference = LatencyHistograms()
    for g in gaps:
        reference.add_us("itl_chunk", to_us(g))
    assert h.buckets("itl_chunk") == reference.buckets("itl_chunk")
    p = h.percentiles("itl_chunk")
    # with 5 samples the median is a sample: np.percentile's and HdrHistogram's agree (0.1 %)
    assert p["p50"] is not None and p["max"] is not None
    median_ms = sorted(gaps)[2] * 1000.0
    assert abs(p["p50"] - median_ms) <= median_ms * 1e-3 + 1e-9
    assert abs(p["max"] - max(gaps) * 1000.0) <= max(gaps) * 1.0 + 1e-9
    # the per-token rule differs: b's 40 ms gap before 3 tokens is 3 samples of 13.3 ms there
    assert p["max"] == pytest.approx(40.0, rel=1e-3)
    assert h.percentiles("itl")["max"] == pytest.approx(40.0 / 3, rel=1e-3)


@given(
    st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=2, max_size=60),
    st.lists(st.integers(1, 4), min_size=61, max_size=61),
)
def test_itl_chunk_equals_one_sample_per_gap_with_or_without_token_counts(
    gaps: list[float], tokens: list[int]
) -> None:
    times = [5.0]
    for g in gaps:
        times.append(times[-1] + g)
    for counts in (tokens[: len(times)], []):
        h = LatencyHistograms()
        h.record(make(end=times[-1] + 1, first_token=5.0, chunk_times=times, chunk_tokens=counts))
        slow = LatencyHistograms()
        for i in range(1, len(times)):
            slow.add_us("itl_chunk", int((times[i] - times[i - 1]) * 1e6 + 0.5))
        assert h.buckets("itl_chunk") == slow.buckets("itl_chunk")
