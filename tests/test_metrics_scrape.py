"""vLLM /metrics: parsing realistic pages, differencing, the client/server comparison, scraping."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import anyio
import httpx
import pytest
from msgspec.structs import replace

from loadgen.metrics.scrape import (
    ClientTotals,
    MetricsScraper,
    ServerComparison,
    ServerScrapes,
    ServerSnapshot,
    combine_deltas,
    combine_snapshots,
    compare_tokens,
    diff,
    fetch_snapshot,
    parse_metrics,
    reconcile,
)
from loadgen.results.schema import CacheRate, Phase, ServerDelta, decode, to_builtins

FIXTURE = Path(__file__).resolve().parent / "data" / "summary_run.json"


def _delta(
    prompt_tokens: int | None = None,
    generation_tokens: int | None = None,
    requests_completed: int | None = None,
) -> ServerDelta:
    """A server's delta with only the counters a comparison reads."""
    nothing = CacheRate(queries=None, hits=None, hit_rate=None)
    return ServerDelta(
        start=0.0, end=1.0, duration_s=1.0, prompt_tokens=prompt_tokens,
        generation_tokens=generation_tokens, requests_finished=requests_completed,
        requests_completed=requests_completed, requests_by_reason=None, preemptions=None,
        prefix_cache=nothing, mm_cache=nothing, mean_ms={},
    )  # fmt: skip


def _phase(prompt: int, generation: int, with_usage: int) -> Phase:
    """A phase summary whose usage totals are these (the rest: a real run's)."""
    base = decode(FIXTURE.read_bytes()).phases["cold"]
    return replace(
        base,
        tokens=replace(base.tokens, prompt=prompt, generation=generation),
        requests=replace(base.requests, with_usage=with_usage),
    )


# Modelled on a V1 vLLM server's page (prometheus_client text format 0.0.4): two engines, the
# `_created` samples prometheus_client emits beside counters and histograms, other exporters'
# metrics, and a counter by source that must not be mistaken for the plain one.
PAGE = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-vlm"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny-vlm"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny-vlm"} 7.0
vllm:num_requests_waiting{engine="1",model_name="tiny-vlm"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny-vlm"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="tiny-vlm"} 0.75
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="tiny-vlm"} 1000.0
vllm:prefix_cache_queries_total{engine="1",model_name="tiny-vlm"} 500.0
vllm:prefix_cache_queries_created{engine="0",model_name="tiny-vlm"} 1.7646e+09
vllm:prefix_cache_queries_created{engine="1",model_name="tiny-vlm"} 1.7646e+09
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny-vlm"} 256.0
vllm:prefix_cache_hits_total{engine="1",model_name="tiny-vlm"} 128.0
vllm:prefix_cache_hits_created{engine="0",model_name="tiny-vlm"} 1.7646e+09
vllm:prefix_cache_hits_created{engine="1",model_name="tiny-vlm"} 1.7646e+09
# HELP vllm:mm_cache_queries_total Multi-modal cache queries, in terms of number of queried items.
# TYPE vllm:mm_cache_queries_total counter
vllm:mm_cache_queries_total{engine="0",model_name="tiny-vlm"} 30.0
vllm:mm_cache_queries_created{engine="0",model_name="tiny-vlm"} 1.7646e+09
# HELP vllm:mm_cache_hits_total Multi-modal cache hits, in terms of number of cached items.
# TYPE vllm:mm_cache_hits_total counter
vllm:mm_cache_hits_total{engine="0",model_name="tiny-vlm"} 12.0
vllm:mm_cache_hits_created{engine="0",model_name="tiny-vlm"} 1.7646e+09
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="tiny-vlm"} 1.0
vllm:num_preemptions_created{engine="0",model_name="tiny-vlm"} 1.7646e+09
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="tiny-vlm"} 3060.0
vllm:prompt_tokens_total{engine="1",model_name="tiny-vlm"} 1020.0
vllm:prompt_tokens_created{engine="0",model_name="tiny-vlm"} 1.7646e+09
vllm:prompt_tokens_created{engine="1",model_name="tiny-vlm"} 1.7646e+09
# HELP vllm:prompt_tokens_by_source_total Number of prompt tokens by source.
# TYPE vllm:prompt_tokens_by_source_total counter
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny-vlm",source="local_compute"} 2800.0
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny-vlm",source="local_cache_hit"} 260.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="tiny-vlm"} 3840.0
vllm:generation_tokens_total{engine="1",model_name="tiny-vlm"} 0.0
vllm:generation_tokens_created{engine="0",model_name="tiny-vlm"} 1.7646e+09
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny-vlm"} 10.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny-vlm"} 20.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="tiny-vlm"} 2.0
vllm:request_success_total{engine="0",finished_reason="error",model_name="tiny-vlm"} 0.0
vllm:request_success_created{engine="0",finished_reason="stop",model_name="tiny-vlm"} 1.7646e+09
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="tiny-vlm"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="tiny-vlm"} 20.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny-vlm"} 30.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny-vlm"} 30.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny-vlm"} 33.0
vllm:time_to_first_token_seconds_created{engine="0",model_name="tiny-vlm"} 1.7646e+09
# HELP vllm:request_queue_time_seconds Histogram of time spent in WAITING phase for request.
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf",model_name="tiny-vlm"} 30.0
vllm:request_queue_time_seconds_count{engine="0",model_name="tiny-vlm"} 30.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="tiny-vlm"} 3.0
"""

# An older server: deprecated cache names, no multimodal cache, no queue histogram.
OLD_PAGE = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.5
# TYPE vllm:gpu_prefix_cache_queries_total counter
vllm:gpu_prefix_cache_queries_total{engine="0",model_name="m"} 200.0
# TYPE vllm:gpu_prefix_cache_hits_total counter
vllm:gpu_prefix_cache_hits_total{engine="0",model_name="m"} 50.0
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 7.0
"""


def test_parse_a_v1_page() -> None:
    s = parse_metrics(PAGE, 12.5)
    assert s.time == 12.5
    assert s.prompt_tokens_total == 4080.0  # summed over engines, `_created` and by-source ignored
    assert s.generation_tokens_total == 3840.0
    assert s.request_success_total == 32.0
    assert s.request_success_by_reason == {"stop": 10.0, "length": 20.0, "abort": 2.0, "error": 0.0}
    assert (s.prefix_cache_queries, s.prefix_cache_hits) == (1500.0, 384.0)
    assert (s.mm_cache_queries, s.mm_cache_hits) == (30.0, 12.0)
    assert s.num_preemptions == 1.0
    assert (s.running, s.waiting) == (5.0, 7.0)
    assert s.kv_cache_usage_perc == 0.5  # a fraction per engine: averaged, not summed
    assert s.histograms["ttft"] == (33.0, 30.0)
    assert s.histograms["queue"] == (3.0, 30.0)
    assert "e2e" not in s.histograms
    assert s.parse_error is None
    assert s.vllm_samples == 25  # the samples of the families read; buckets, `_created` are not


def test_deprecated_names_are_read_and_missing_metrics_are_none() -> None:
    s = parse_metrics(OLD_PAGE, 0.0)
    assert s.kv_cache_usage_perc == 0.5
    assert (s.prefix_cache_queries, s.prefix_cache_hits) == (200.0, 50.0)
    assert s.prompt_tokens_total == 7.0
    assert s.generation_tokens_total is None and s.mm_cache_queries is None
    assert s.running is None and s.request_success_by_reason == {}


def test_garbage_never_raises_and_keeps_what_parsed() -> None:
    bad = (
        "vllm:prompt_tokens_total{{{ not a number\n",
        'vllm:num_requests_running{engine="0} 1\n',  # unterminated quote
        'vllm:num_requests_running{engine="0" model_name="m"} 1\n',  # no comma
        'vllm:num_requests_running{engine="0",engine="1"} 1\n',  # a label twice
        "vllm:num_requests_running 1 2 3 x\n",  # a timestamp that is not a number
        "vllm:num_requests_running 1_000\n",
        "vllm:num_requests_running\n",
    )
    for line in bad:
        s = parse_metrics(line + OLD_PAGE + line, 1.0)
        assert s.parse_error is not None, line
        assert s.prompt_tokens_total == 7.0 and s.kv_cache_usage_perc == 0.5
        assert s.running is None
    # Lines of families loadgen does not read are not parsed, so not checked either.
    other = parse_metrics(
        "vllm:broken{{{ x\nvllm:prompt_tokens_total_bad 1 2 3 x\n" + OLD_PAGE, 1.0
    )
    assert other.parse_error is None and other.prompt_tokens_total == 7.0
    empty = parse_metrics("", 2.0)
    assert empty.vllm_samples == 0 and empty.prompt_tokens_total is None


def test_model_filter() -> None:
    other = 'vllm:prompt_tokens_total{engine="0",model_name="other"} 1000.0\n'
    assert parse_metrics(PAGE + other, 0.0).prompt_tokens_total == 5080.0
    assert parse_metrics(PAGE + other, 0.0, model="tiny-vlm").prompt_tokens_total == 4080.0


def snap(t: float, **kw: object) -> ServerSnapshot:
    return ServerSnapshot(time=t, **kw)  # type: ignore[arg-type]


def test_diff_totals_hit_rates_and_means() -> None:
    a = snap(
        1.0,
        prompt_tokens_total=100.0,
        generation_tokens_total=50.0,
        request_success_total=3.0,
        prefix_cache_queries=1000.0,
        prefix_cache_hits=100.0,
        mm_cache_queries=4.0,
        mm_cache_hits=0.0,
        request_success_by_reason={"stop": 1.0, "length": 2.0},
        histograms={"ttft": (1.0, 3.0)},
    )
    b = snap(
        11.0,
        prompt_tokens_total=4100.0,
        generation_tokens_total=1330.0,
        request_success_total=14.0,
        prefix_cache_queries=3000.0,
        prefix_cache_hits=1100.0,
        mm_cache_queries=14.0,
        mm_cache_hits=5.0,
        request_success_by_reason={"stop": 1.0, "length": 12.0, "abort": 1.0},
        histograms={"ttft": (3.5, 13.0)},
    )
    d = to_builtins(diff(a, b))
    assert d["duration_s"] == 10.0
    assert (d["prompt_tokens"], d["generation_tokens"]) == (4000, 1280)
    assert d["requests_finished"] == 11
    assert d["requests_completed"] == 10  # the aborted one is not a completed request
    assert d["requests_by_reason"] == {"abort": 1, "length": 10, "stop": 0}
    assert d["prefix_cache"] == {"queries": 2000, "hits": 1000, "hit_rate": 0.5}
    assert d["mm_cache"] == {"queries": 10, "hits": 5, "hit_rate": 0.5}
    assert d["mean_ms"]["ttft"] == 250.0
    assert d["mean_ms"]["e2e"] is None
    assert d["preemptions"] is None
    assert d["notes"] == []


def test_diff_notes_a_counter_reset() -> None:
    d = to_builtins(diff(snap(0.0, prompt_tokens_total=500.0), snap(5.0, prompt_tokens_total=20.0)))
    assert d["prompt_tokens"] is None
    assert len(d["notes"]) == 1 and "restarted" in d["notes"][0]


def test_server_comparison_is_exact_and_explains_a_mismatch() -> None:
    server = _delta(prompt_tokens=4000, generation_tokens=1280, requests_completed=10)
    same = ServerComparison.build(
        prompt_tokens=4000, generation_tokens=1280, requests=10, server=server
    )
    assert not same.mismatch and same.result().note == ""
    off = ServerComparison.build(
        prompt_tokens=4000, generation_tokens=1279, requests=10, server=server
    )
    out = to_builtins(off.result())
    assert off.mismatch
    assert out["generation_tokens"] == {"client": 1279, "server": 1280, "match": False}
    assert out["prompt_tokens"]["match"] is True
    assert "other traffic" in out["note"] and "in flight" in out["note"]
    unknown = compare_tokens(_phase(5, 6, 1), _delta())
    assert unknown.mismatch is False and unknown.prompt_tokens.match is None


def test_fetch_snapshot_ok_404_refused_and_not_vllm() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(200, text=PAGE)
        if request.url.path == "/refused/metrics":
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/other/metrics":
            return httpx.Response(200, text="python_gc_objects_collected_total 1.0\n")
        return httpx.Response(404)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        ok, absent, refused, other = (
            fetch_snapshot(client, f"http://127.0.0.1:9{p}/metrics", origin=100.0, clock=lambda: 105.0)[0]
            for p in ("", "/absent", "/refused", "/other")
        )  # fmt: skip
    assert ok is not None and ok.time == 5.0 and ok.generation_tokens_total == 3840.0
    assert absent is None and refused is None and other is None


def test_scraper_keeps_a_series_and_notes_failure_once(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        threads.add(threading.get_ident())
        if calls in (2, 3):  # a failing scrape in the middle is not fatal
            return httpx.Response(503)
        page = PAGE.replace("vllm:generation_tokens_total{engine=\"0\",model_name=\"tiny-vlm\"} 3840.0",
                            f"vllm:generation_tokens_total{{engine=\"0\",model_name=\"tiny-vlm\"}} {calls * 10}.0")  # fmt: skip
        return httpx.Response(200, text=page)

    scraper = MetricsScraper(
        "http://127.0.0.1:9/metrics", interval=0.01, transport=httpx.MockTransport(handler)
    )

    async def main() -> None:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                await scraper.start(tg)
                while len(scraper.snapshots) < 3:  # noqa: ASYNC110 - polling a plain list
                    await anyio.sleep(0.005)
                tg.cancel_scope.cancel()
        scraper.close()

    with caplog.at_level(logging.WARNING, logger="loadgen.metrics.scrape"):
        anyio.run(main)
    # Every request (and so every parse) ran in a worker thread, none on the event loop's.
    assert threads and loop_thread not in threads
    assert scraper.available and scraper.failures == 2
    assert scraper.note is not None and "HTTP 503" in scraper.note
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
    series = to_builtins(scraper.series())
    assert [row["running"] for row in series[:3]] == [5.0, 5.0, 5.0]
    times = [row["time"] for row in series]
    assert times == sorted(times)
    summary = to_builtins(scraper.summary())
    assert summary["samples"] == len(scraper.snapshots) and summary["peak_waiting"] == 7.0
    first, last = scraper.snapshots[0], scraper.snapshots[-1]
    assert summary["delta"]["generation_tokens"] == round(
        (last.generation_tokens_total or 0) - (first.generation_tokens_total or 0)
    )
    assert first.generation_tokens_total == 10.0 and last.generation_tokens_total is not None
    assert last.generation_tokens_total >= 40.0


def test_the_simulators_page_parses_with_every_figure_present() -> None:
    from loadgen.sim.stats import PrometheusMetrics

    page = PrometheusMetrics("tiny-vlm", 2048).exposition().decode()
    s = parse_metrics(page, 0.0, model="tiny-vlm")
    for name in (
        "prompt_tokens_total",
        "generation_tokens_total",
        "prefix_cache_queries",
        "prefix_cache_hits",
        "mm_cache_queries",
        "mm_cache_hits",
        "num_preemptions",
        "running",
        "waiting",
        "kv_cache_usage_perc",
    ):
        assert getattr(s, name) == 0.0, name
    assert s.parse_error is None
    assert set(s.histograms) >= {"ttft", "itl", "e2e", "queue"}


def _server(
    t: float, prompt: float, gen: float, ok: float, ttft: tuple[float, float]
) -> ServerSnapshot:
    return snap(
        t,
        prompt_tokens_total=prompt,
        generation_tokens_total=gen,
        request_success_total=ok,
        prefix_cache_queries=prompt,
        prefix_cache_hits=prompt / 2,
        request_success_by_reason={"length": ok},
        histograms={"ttft": ttft},
        running=1.0,
        kv_cache_usage_perc=0.5 if prompt < 1000 else 0.25,
    )


A, B = "http://a:8000", "http://b:8000"


def test_reconcile_per_target_and_in_total() -> None:
    start = {A: _server(1.0, 100, 10, 1, (0.5, 1)), B: _server(1.5, 5000, 500, 50, (10.0, 50))}
    end = {A: _server(9.0, 400, 40, 4, (1.4, 4)), B: _server(9.5, 5600, 560, 56, (10.6, 56))}
    client = {A: ClientTotals(300, 30, 3), B: ClientTotals(600, 60, 6)}
    result = reconcile([A, B], start, end, client)
    assert result is not None
    out = to_builtins(result)
    a, b = out["targets"][A], out["targets"][B]
    assert (a["delta"]["prompt_tokens"], b["delta"]["prompt_tokens"]) == (300, 600)
    assert a["comparison"]["prompt_tokens"] == {"client": 300, "server": 300, "match": True}
    assert not a["comparison"]["mismatch"] and not b["comparison"]["mismatch"]
    assert a["delta"]["mean_ms"]["ttft"] == pytest.approx(300.0)  # 0.9 s over 3 requests
    assert b["delta"]["mean_ms"]["ttft"] == pytest.approx(100.0)  # 0.6 s over 6
    total, cmp_ = out["delta"], out["comparison"]
    assert (total["prompt_tokens"], total["generation_tokens"]) == (900, 90)
    assert total["requests_completed"] == 9 and total["requests_by_reason"] == {"length": 9}
    assert total["prefix_cache"] == {"queries": 900, "hits": 450, "hit_rate": 0.5}
    assert total["mean_ms"]["ttft"] == pytest.approx(1500.0 / 9)  # weighted by observations
    assert total["histogram_counts"]["ttft"] == 9
    assert (total["start"], total["end"]) == (1.0, 9.5)
    assert cmp_["prompt_tokens"] == {"client": 900, "server": 900, "match": True}
    assert not cmp_["mismatch"]
    # The total equals the diff of the servers taken as one, when no counter went down.
    whole = to_builtins(
        diff(combine_snapshots(list(start.values())), combine_snapshots(list(end.values())))
    )
    for key in ("prompt_tokens", "generation_tokens", "requests_completed", "prefix_cache"):
        assert whole[key] == total[key], key
    assert whole["mean_ms"]["ttft"] == pytest.approx(total["mean_ms"]["ttft"])


def test_reconcile_one_target_keeps_the_single_server_layout() -> None:
    start, end = {A: _server(0.0, 10, 1, 0, (0, 0))}, {A: _server(1.0, 30, 5, 2, (1, 2))}
    out = reconcile([A], start, end, {A: ClientTotals(20, 4, 2)})
    assert out is not None
    assert out.delta == diff(start[A], end[A]) == out.targets[A].delta
    assert out.comparison == compare_tokens(_phase(20, 4, 2), out.delta)
    assert set(to_builtins(out)) == {"delta", "comparison", "targets"}


def test_reconcile_blames_no_one_for_a_target_without_metrics() -> None:
    start = {A: _server(0.0, 10, 1, 0, (0, 0)), B: None}
    end = {A: _server(1.0, 30, 5, 2, (1, 2)), B: _server(1.0, 50, 5, 2, (1, 2))}
    client = {A: ClientTotals(20, 4, 2), B: ClientTotals(40, 4, 2)}
    result = reconcile([A, B], start, end, client)
    assert result is not None
    out = to_builtins(result)
    assert set(out["targets"]) == {A}
    assert out["delta"]["prompt_tokens"] == 20  # A alone, compared with A's requests alone
    assert not out["comparison"]["mismatch"]
    assert any(B in n for n in out["delta"]["notes"])
    assert reconcile([A, B], {A: None, B: None}, end, client) is None


def test_a_restarted_target_leaves_its_counts_out_of_the_total() -> None:
    start = {A: _server(0.0, 500, 50, 5, (1, 5)), B: _server(0.0, 10, 1, 0, (0, 0))}
    end = {A: _server(5.0, 20, 5, 1, (0.1, 1)), B: _server(5.0, 30, 5, 2, (1, 2))}
    result = reconcile([A, B], start, end, {A: ClientTotals(), B: ClientTotals(20, 4, 2)})
    assert result is not None
    out = to_builtins(result)
    assert out["targets"][A]["delta"]["prompt_tokens"] is None
    assert out["delta"]["prompt_tokens"] is None  # not B's 20 passed off as the total
    assert out["delta"]["mean_ms"]["ttft"] == pytest.approx(500.0)  # B's mean alone
    assert any(n.startswith(A + ": ") and "restarted" in n for n in out["delta"]["notes"])
    assert combine_deltas({B: result.targets[B].delta}) == result.targets[B].delta


def test_several_servers_are_scraped_in_rounds_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    seen: dict[str, int] = {}
    threads: set[int] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        seen[host] = seen.get(host, 0) + 1
        threads.add(threading.get_ident())
        if host == "b" and seen[host] == 2:
            return httpx.Response(500)  # one failed round is left out of the total series
        return httpx.Response(200, text=PAGE)

    scrapes = ServerScrapes([A, B, A], interval=0.01, transport=httpx.MockTransport(handler))
    assert scrapes.roots == [A, B]  # one scraper per server, however often it is listed

    async def main() -> dict[str, ServerSnapshot | None]:
        with anyio.fail_after(20):
            marks = await scrapes.mark()
            async with anyio.create_task_group() as tg:
                await scrapes.start(tg)
                while len(scrapes.rounds) < 3:  # noqa: ASYNC110 - polling a plain list
                    await anyio.sleep(0.005)
                tg.cancel_scope.cancel()
        scrapes.close()
        return marks

    marks = anyio.run(main)
    assert threads and loop_thread not in threads
    assert set(marks) == {A, B} and all(m is not None for m in marks.values())
    summary = to_builtins(scrapes.summary())
    assert set(summary["targets"]) == {A, B}
    assert summary["targets"][B]["failures"] == 1 and summary["failures"] == 1
    assert summary["samples"] == len(scrapes.rounds)
    series = to_builtins(scrapes.series())
    assert series and all(row["running"] == 10.0 for row in series)  # 5 on each server
    assert all(row["kv_cache_usage_perc"] == 0.5 for row in series)  # a mean, not a sum
    assert summary["peak_waiting"] == 14.0
