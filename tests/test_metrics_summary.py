"""Phase summaries: counts, usage totals, throughput, goodput, errors, and exact shard merging."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.config import SloConfig
from loadgen.metrics.summary import (
    PhaseAccumulator,
    compare_phases,
    meets_slo,
    summarize_phase,
)
from loadgen.records import Outcome, RequestRecord
from loadgen.results.schema import SCHEMA_VERSION, Phase, to_builtins


def make(
    index: int,
    *,
    intended: float,
    end: float,
    sent: float | None = None,
    outcome: Outcome = Outcome.OK,
    first_token: float | None = None,
    chunk_times: list[float] | None = None,
    chunk_tokens: list[int] | None = None,
    prompt: int | None = None,
    completion: int | None = None,
    cached: int | None = None,
    status: int | None = None,
    error: str | None = None,
    finish_reason: str | None = None,
    phase: str = "main",
    target: str = "http://127.0.0.1:1",
) -> RequestRecord:
    return RequestRecord(
        index=index,
        phase=phase,
        shard=0,
        target=target,
        intended=intended,
        sent=intended if sent is None else sent,
        end=end,
        outcome=outcome,
        status=status,
        error=error,
        first_token=first_token,
        chunk_times=list(chunk_times or []),
        chunk_tokens=list(chunk_tokens or []),
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        finish_reason=finish_reason,
    )


SLO = SloConfig(ttft_ms=500.0, tpot_ms=150.0, e2e_ms=3000.0)


def phase_records() -> list[RequestRecord]:
    # times are multiples of 1/8 s: exact in binary, so the expected figures are exact
    return [
        # meets every SLO: TTFT 250 ms, TPOT 125 ms, E2E 625 ms
        make(0, intended=0.0, end=0.625, first_token=0.25, chunk_times=[0.25, 0.375, 0.5],
             chunk_tokens=[1, 1, 1], prompt=100, completion=3, cached=0, finish_reason="length"),
        # sent 0.5 s late: TTFT from the send is 250 ms, from the intended time 750 ms -> not good
        make(1, intended=1.0, sent=1.5, end=2.25, first_token=1.75, chunk_times=[1.75, 2.0],
             chunk_tokens=[1, 1], prompt=200, completion=2, cached=64, finish_reason="length"),
        # one output token: no TPOT, which meets the TPOT threshold
        make(2, intended=2.0, end=2.5, first_token=2.125, chunk_times=[2.125], chunk_tokens=[1],
             prompt=300, completion=1, finish_reason="length"),
        # no usage: tokens unknown, TPOT cannot be checked
        make(3, intended=3.0, end=3.5, outcome=Outcome.MISSING_USAGE, first_token=3.125,
             chunk_times=[3.125, 3.25]),
        make(4, intended=4.0, end=4.125, outcome=Outcome.HTTP_5XX, status=503,
             error="upstream overloaded"),
        make(5, intended=5.0, end=15.0, outcome=Outcome.TIMEOUT, error="read timeout"),
        make(6, intended=6.0, end=6.25, outcome=Outcome.HTTP_5XX, status=500),
        make(7, intended=7.0, end=7.25, outcome=Outcome.HTTP_5XX, status=502, error="bad gateway"),
    ]  # fmt: skip


def test_phase_summary_exact_figures() -> None:
    acc = PhaseAccumulator("main", slo=SLO, window=10.0, error_examples=2)
    for r in phase_records():
        acc.add(r)
    s = to_builtins(acc.finish(started=0.0, ended=15.5))
    assert s["schema_version"] == SCHEMA_VERSION
    assert (s["phase"], s["started"], s["ended"]) == ("main", 0.0, 15.5)
    assert s["span"] == {"first_intended": 0.0, "last_end": 15.0, "duration_s": 15.0}
    assert s["requests"] == {
        "total": 8,
        "succeeded": 4,
        "failed": 4,
        "with_usage": 3,
        "missing_usage": 1,
    }
    assert s["outcomes"]["ok"] == 3 and s["outcomes"]["missing_usage"] == 1
    assert s["outcomes"]["http_5xx"] == 3 and s["outcomes"]["timeout"] == 1
    assert sum(s["outcomes"].values()) == 8 and s["outcomes"]["http_429"] == 0
    assert s["finish_reasons"] == {"length": 3}
    assert s["tokens"] == {
        "prompt": 600,
        "generation": 6,
        "total": 606,
        "cached": 64,
        "cached_reported_requests": 2,
        "cached_fraction": 64 / 300,
        "usage_complete": False,
        "missing_usage_requests": 1,
    }
    assert s["throughput"] == {
        "requests_per_s": 4 / 15,
        "prompt_tokens_per_s": 40.0,
        "generation_tokens_per_s": 0.4,
        "total_tokens_per_s": 606 / 15,
    }
    assert s["goodput"] == {
        "slo": {"ttft_ms": 500.0, "tpot_ms": 150.0, "e2e_ms": 3000.0},
        "latency_basis": "intended",
        "count": 2,
        "fraction": 0.25,
        "requests_per_s": 2 / 15,
    }
    lat = s["latency_ms"]
    assert [lat[m]["count"] for m in ("ttft", "ttft_intended", "e2e", "tpot", "itl")] == [
        4,
        4,
        4,
        2,
        4,
    ]
    assert lat["schedule_lag"]["count"] == 8
    assert 749.9 < lat["ttft_intended"]["max"] < 750.8  # the late request's 750 ms
    assert 249.9 < lat["ttft"]["max"] < 250.2  # ... which is 250 ms from its actual send
    assert s["concurrency"] == {
        "peak": 2,
        "mean": 13.0 / 15,
        "target": None,
        "mean_over_target": None,
    }
    series = s["windows"]["series"]
    assert [(w["start"], w["end"]) for w in series] == [(0.0, 10.0), (10.0, 15.0)]
    assert [(w["prompt_tokens"], w["generation_tokens"], w["requests"], w["errors"]) for w in series] == [
        (600, 6, 4, 3),
        (0, 0, 0, 1),
    ]  # fmt: skip
    assert s["errors"] == {
        "http_5xx": [
            {"end": 4.125, "index": 4, "status": 503, "error": "upstream overloaded"},
            {"end": 6.25, "index": 6, "status": 500, "error": "HTTP 500"},
        ],
        "timeout": [{"end": 15.0, "index": 5, "status": None, "error": "read timeout"}],
    }
    json.dumps(s, allow_nan=False)  # JSON-able as it is


def test_summarize_phase_is_the_accumulator_in_one_call() -> None:
    acc = PhaseAccumulator("main", slo=SLO, window=10.0)
    for r in phase_records():
        acc.add(r)
    assert summarize_phase(
        phase_records(), slo=SLO, window=10.0, phase_name="main", started=0.0, ended=15.5
    ) == acc.finish(started=0.0, ended=15.5)


def test_no_slo_means_no_goodput_and_no_records_means_no_rates() -> None:
    s = to_builtins(
        summarize_phase([], slo=SloConfig(), window=10.0, phase_name="x", started=0, ended=1)
    )
    assert s["goodput"] is None
    assert s["requests"]["total"] == 0
    assert s["throughput"]["requests_per_s"] is None
    assert s["latency_ms"]["ttft"]["p50"] is None
    assert s["windows"]["series"] == []
    assert s["concurrency"] == {"peak": 0, "mean": None, "target": None, "mean_over_target": None}


def test_goodput_rules_per_threshold() -> None:
    base: dict[str, Any] = {
        "intended": 0.0,
        "end": 1.0,
        "first_token": 0.25,
        "chunk_times": [0.25, 0.5, 0.75],
        "prompt": 5,
        "completion": 3,
    }
    ok = make(0, **base)
    assert meets_slo(ok, SloConfig(ttft_ms=250.0, tpot_ms=250.0, e2e_ms=1000.0))
    assert not meets_slo(ok, SloConfig(ttft_ms=249.0))
    assert not meets_slo(ok, SloConfig(tpot_ms=249.0))
    assert not meets_slo(ok, SloConfig(e2e_ms=999.0))
    late = make(1, **{**base, "intended": -0.5}, sent=0.0)  # E2E from intended: 1.5 s
    assert meets_slo(late, SloConfig(ttft_ms=750.0)) and not meets_slo(
        late, SloConfig(e2e_ms=1400.0)
    )
    no_usage = make(2, **{**base, "completion": None}, outcome=Outcome.MISSING_USAGE)
    assert meets_slo(no_usage, SloConfig(ttft_ms=500.0))
    assert not meets_slo(no_usage, SloConfig(tpot_ms=10_000.0))
    failed = make(3, **base, outcome=Outcome.STREAM_ERROR)
    assert not meets_slo(failed, SloConfig())
    no_first_token = make(4, **{**base, "first_token": None})
    assert not meets_slo(no_first_token, SloConfig(ttft_ms=10_000.0))


def test_compare_phases_cold_vs_warm() -> None:
    def run(name: str, ttft: float, cached: int) -> Phase:
        recs = [
            make(i, intended=float(i), end=i + ttft + 0.5, first_token=i + ttft,
                 chunk_times=[i + ttft, i + ttft + 0.25], prompt=1000, completion=2, cached=cached)
            for i in range(10)
        ]  # fmt: skip
        return summarize_phase(
            recs, slo=SloConfig(), window=10.0, phase_name=name, started=0.0, ended=20.0
        )

    cold, warm = run("cold", 1.0, 0), run("warm", 0.25, 960)
    c = to_builtins(compare_phases(cold, warm))
    assert (c["baseline"], c["candidate"]) == ("cold", "warm")
    p50 = (warm.latency("ttft", "p50"), cold.latency("ttft", "p50"))
    assert p50[0] is not None and p50[1] is not None
    assert c["ttft_p50_ratio"] == p50[0] / p50[1]
    assert c["ttft_p50_ratio"] == pytest.approx(0.25, rel=2e-3)
    assert c["ttft_p99_ratio"] == pytest.approx(0.25, rel=2e-3)
    assert c["tpot_p50_ratio"] == pytest.approx(1.0, rel=2e-3)
    assert c["cached_fraction"] == {"baseline": 0.0, "candidate": 0.96}
    assert c["cached_tokens"] == {"baseline": 0, "candidate": 9600}
    assert c["generation_tokens_per_s_ratio"] is not None
    empty = summarize_phase([], slo=SloConfig(), window=10.0, phase_name="e", started=0, ended=0)
    assert compare_phases(empty, warm).ttft_p50_ratio is None


def test_merging_different_phases_or_windows_is_refused() -> None:
    a = PhaseAccumulator("a", window=10.0)
    with pytest.raises(ValueError):
        a.merge(PhaseAccumulator("b", window=10.0))
    with pytest.raises(ValueError):
        a.merge(PhaseAccumulator("a", window=5.0))


@st.composite
def records(draw: st.DrawFn, index: int) -> RequestRecord:
    intended = draw(st.floats(min_value=0.0, max_value=60.0))
    lag = draw(st.floats(min_value=0.0, max_value=2.0))
    ttft = draw(st.floats(min_value=0.0, max_value=5.0))
    gaps = draw(st.lists(st.floats(min_value=0.0, max_value=2.0), max_size=10))
    first = intended + lag + ttft
    times = [first]
    for g in gaps:
        times.append(times[-1] + g)
    n = len(times)
    tokens = draw(st.one_of(st.just([]), st.lists(st.integers(1, 4), min_size=n, max_size=n)))
    outcome = draw(st.sampled_from(list(Outcome)))
    usage = outcome is Outcome.OK
    return make(
        index,
        intended=intended,
        sent=intended + lag,
        end=times[-1] + draw(st.floats(min_value=0.0, max_value=1.0)),
        outcome=outcome,
        first_token=first if draw(st.booleans()) else None,
        chunk_times=times,
        chunk_tokens=tokens,
        prompt=draw(st.integers(0, 3000)) if usage else None,
        completion=(sum(tokens) if tokens else n) if usage else None,
        cached=draw(st.one_of(st.none(), st.integers(0, 100))) if usage else None,
        status=draw(st.one_of(st.none(), st.integers(400, 599))),
        error=draw(st.one_of(st.none(), st.text(max_size=8))),
        finish_reason=draw(st.sampled_from([None, "stop", "length"])),
        target=draw(st.sampled_from(["http://127.0.0.1:1", "http://127.0.0.1:2"])),
    )


record_lists = st.integers(0, 30).flatmap(
    lambda n: st.tuples(*(records(i) for i in range(n))).map(list)
)


@settings(max_examples=60, deadline=None)
@given(record_lists, st.integers(1, 4), st.data())
def test_merged_shards_give_exactly_the_summary_of_one_process(
    recs: list[RequestRecord], shards: int, data: st.DataObject
) -> None:
    slo = SloConfig(ttft_ms=2000.0, tpot_ms=500.0, e2e_ms=6000.0)
    whole = PhaseAccumulator("main", slo=slo, window=3.0, origin=0.0)
    parts = [PhaseAccumulator("main", slo=slo, window=3.0, origin=0.0) for _ in range(shards)]
    for r in recs:
        whole.add(r)
        parts[data.draw(st.integers(0, shards - 1))].add(r)
    # each shard ships its state as JSON text, as a worker process or machine would
    shipped = [PhaseAccumulator.from_state(json.loads(json.dumps(p.to_state()))) for p in parts]
    merged = shipped[0]
    for p in shipped[1:]:
        merged.merge(p)
    # the parts the brief names, checked one by one ...
    assert merged.outcomes == whole.outcomes
    assert (merged.prompt_tokens, merged.generation_tokens, merged.cached_tokens) == (
        whole.prompt_tokens,
        whole.generation_tokens,
        whole.cached_tokens,
    )
    m_hist, w_hist = merged.latency(), whole.latency()
    for name in ("ttft", "itl", "tpot", "e2e", "schedule_lag", "ttft_intended", "e2e_intended"):
        assert m_hist.count(name) == w_hist.count(name)
        assert m_hist.buckets(name) == w_hist.buckets(name)
    assert merged.windows.bins() == whole.windows.bins()
    assert merged.targets == whole.targets  # each server's share, for its /metrics
    # ... and the whole summary, every figure
    assert merged.finish(started=0.0, ended=70.0) == whole.finish(started=0.0, ended=70.0)


def test_client_totals_per_target() -> None:
    a, b = "http://a:8000/v1/chat/completions", "http://b:8000/v1/chat/completions"
    acc = PhaseAccumulator("main")
    acc.add(make(0, intended=0.0, end=1.0, prompt=10, completion=3, target=a))
    acc.add(make(1, intended=0.0, end=1.0, prompt=20, completion=4, target=b))
    acc.add(make(2, intended=0.0, end=1.0, prompt=30, completion=5, target=a))
    acc.add(make(3, intended=0.0, end=1.0, outcome=Outcome.HTTP_5XX, status=500, target=b))
    targets = to_builtins(acc.finish())["targets"]
    assert targets == {
        a: {"requests": 2, "with_usage": 2, "prompt_tokens": 40, "generation_tokens": 8},
        b: {"requests": 2, "with_usage": 1, "prompt_tokens": 20, "generation_tokens": 4},
    }
    tokens = to_builtins(acc.finish())["tokens"]
    assert sum(t["prompt_tokens"] for t in targets.values()) == tokens["prompt"]
    assert sum(t["generation_tokens"] for t in targets.values()) == tokens["generation"]


@settings(max_examples=20, deadline=None)
@given(record_lists, st.integers(1, 4), st.sampled_from([None, 1, 8, 256]), st.data())
def test_mean_in_flight_against_the_phases_target_merges_exactly(
    recs: list[RequestRecord], shards: int, target: int | None, data: st.DataObject
) -> None:
    whole = PhaseAccumulator("main", window=3.0, target_concurrency=target)
    parts = [PhaseAccumulator("main", window=3.0, target_concurrency=target) for _ in range(shards)]
    for r in recs:
        whole.add(r)
        parts[data.draw(st.integers(0, shards - 1))].add(r)
    shipped = [PhaseAccumulator.from_state(json.loads(json.dumps(p.to_state()))) for p in parts]
    merged = shipped[0]
    for p in shipped[1:]:
        merged.merge(p)
    conc = to_builtins(merged.finish())["concurrency"]
    assert conc == to_builtins(whole.finish())["concurrency"]
    assert conc["target"] == target
    if target is None or conc["mean"] is None:
        assert conc["mean_over_target"] is None
    else:
        assert conc["mean_over_target"] == pytest.approx(conc["mean"] / target)


def test_mean_in_flight_against_target_exact_figures() -> None:
    # two requests in flight over [0, 4) and one more over [2, 4): mean 2.5 over 4 s, C = 4
    acc = PhaseAccumulator("main", target_concurrency=4)
    for i, (sent, end) in enumerate([(0.0, 4.0), (0.0, 4.0), (2.0, 4.0)]):
        acc.add(make(i, intended=sent, sent=sent, end=end, completion=1, prompt=1))
    conc = to_builtins(acc.finish())["concurrency"]
    assert conc == {"peak": 3, "mean": 2.5, "target": 4, "mean_over_target": 0.625}
    with pytest.raises(ValueError):  # shards of one phase share its target
        acc.merge(PhaseAccumulator("main", target_concurrency=8))
