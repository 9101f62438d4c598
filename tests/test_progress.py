"""The progress line: its figures from injected readings and times, and the shards' counts."""

from __future__ import annotations

import io

import anyio
import pytest

from loadgen.config import LoadConfig
from loadgen.records import Outcome, RequestRecord
from loadgen.results.console import Progress
from loadgen.runner import StopControl
from loadgen.shard import BookkeepingSink, LiveTokens, ShardProgress, streamed_tokens
from loadgen.stream import StreamParser


def counts(done: int = 0, errors: int = 0, tokens: int = 0, in_flight: int = 0) -> ShardProgress:
    return ShardProgress("main", done, errors, tokens, in_flight)


def progress(mode: str = "plain", interval: float = 5.0) -> Progress:
    return Progress(
        lambda: [counts()],
        StopControl(),
        mode=mode,  # type: ignore[arg-type]
        origin=0.0,
        interval=interval,
        out=io.StringIO(),
    )


def test_request_bounded_phase_shows_done_of_total_rate_and_eta() -> None:
    p = progress()
    p.begin_phase("main", LoadConfig(concurrency=10, requests=100), start=10.0)
    # 2 s in, no request has ended yet but tokens are streaming: the rate already shows them
    p.observe(12.0, [counts(tokens=500, in_flight=10)])
    line = p.line(12.0)
    assert line == "[main]    2.0 s  0/100 done  10 in flight  0 errors  500 tok  250 tok/s  ETA -"
    # 10 s in, 50 done: 5 requests/s, 50 left -> 10 s; the rate over the readings of the last
    # 5 s or more (base: the newest reading at least 5 s old, at 12 s): 4500 tokens in 8 s
    p.observe(20.0, [counts(done=50, errors=2, tokens=5000, in_flight=10)])
    line = p.line(20.0)
    assert "50/100 done" in line and "2 errors" in line and "5,000 tok" in line
    assert p.rate() == pytest.approx(4500 / 8)
    assert line.endswith("ETA 0:10")


def test_rate_is_over_the_last_seconds_only() -> None:
    p = progress()
    p.begin_phase("main", LoadConfig(requests=10), start=0.0)
    for t in range(1, 21):  # 100 tokens/s for 10 s, then 1000 tokens/s
        p.observe(float(t), [counts(tokens=100 * min(t, 10) + 1000 * max(t - 10, 0))])
    assert p.rate() == pytest.approx(1000.0)


def test_time_bounded_phase_counts_down_then_drains() -> None:
    p = progress()
    p.begin_phase("main", LoadConfig(duration=30.0), start=5.0)
    p.observe(15.0, [counts(done=7, tokens=70, in_flight=3)])
    line = p.line(15.0)
    assert "  7 done  " in line and line.endswith("ETA 0:20")
    p.observe(40.0, [counts(done=9, tokens=90, in_flight=1)])
    assert p.line(40.0).endswith("draining")
    p.begin_phase("b", LoadConfig(duration=30.0, drain_timeout=10.0), start=0.0)
    p.observe(34.0, [ShardProgress("b", done=9, in_flight=1)])
    assert p.line(34.0).endswith("draining, cut in 0:06")
    # bounded by both: the nearer end
    p.begin_phase("c", LoadConfig(requests=1000, duration=60.0), start=0.0)
    p.observe(10.0, [ShardProgress("c", done=500)])
    assert p.line(10.0).endswith("ETA 0:10")


def test_plain_lines_every_interval_live_line_every_tick() -> None:
    plain = progress("plain", interval=5.0)
    assert plain.render(1.0) is None  # no phase yet
    plain.begin_phase("main", LoadConfig(requests=4), start=1.0)
    plain.observe(2.0, [counts()])
    assert plain.render(2.0) is None
    plain.observe(6.0, [counts(tokens=10)])
    text = plain.render(6.0)
    assert text is not None and text.endswith("\n") and "\x1b" not in text and "\r" not in text
    assert text.count("\n") == 1
    assert plain.render(7.0) is None
    assert plain.render(11.0) is not None
    live = progress("live")
    live.begin_phase("main", LoadConfig(requests=4), start=0.0)
    live.observe(0.5, [counts()])
    text = live.render(0.5)
    assert text is not None and text.startswith("\r\x1b[2K") and "\n" not in text
    off = progress("off")
    off.begin_phase("main", LoadConfig(requests=4), start=0.0)
    assert off.render(100.0) is None


def test_stopping_is_shown() -> None:
    stop = StopControl()
    p = Progress(lambda: [counts()], stop, mode="live", origin=0.0)
    p.begin_phase("main", LoadConfig(requests=4), start=0.0)
    stop.stop_sending("interrupted")
    assert p.line(1.0).endswith("stopping...")


def test_shard_progress_round_trips_and_other_phases_add_nothing() -> None:
    one = ShardProgress("b", 3, 1, 30, 4, 1.5)
    assert ShardProgress.from_json(one.to_json()) == one
    p = progress()
    p.begin_phase("b", LoadConfig(requests=10), start=0.0)
    p.observe(2.0, [ShardProgress("a", 9, 9, 900, 9, 2.0), ShardProgress("b", 3, 1, 30, 4, 2.0)])
    assert "3/10 done  4 in flight  1 errors  30 tok  15 tok/s" in p.line(2.0)


def test_worker_readings_are_timed_when_taken_and_a_stale_one_is_not_a_new_reading() -> None:
    p = progress()
    p.begin_phase("main", LoadConfig(requests=10), start=0.0)
    p.observe(1.5, [ShardProgress("main", 0, 0, 1000, 2, at=1.0)])
    assert p.rate() == pytest.approx(1000.0)  # 1000 tokens at 1.0 s, not at 1.5 s
    p.observe(2.0, [ShardProgress("main", 0, 0, 1000, 2, at=1.0)])  # no new worker line yet
    assert p.rate() == pytest.approx(1000.0)
    p.observe(2.5, [ShardProgress("main", 0, 0, 2000, 2, at=2.0)])
    assert p.rate() == pytest.approx(1000.0)


def record(index: int = 0, phase: str = "main") -> RequestRecord:
    return RequestRecord(index, phase, 0, "http://127.0.0.1:1", 0.0, 0.0, 0.0)


def test_the_parser_fills_the_records_lists_as_chunks_arrive() -> None:
    rec = record()
    parser = StreamParser(0.0, rec)
    usage = b'"usage":{"prompt_tokens":5,"completion_tokens":%d}'
    chunk = b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}],' + usage + b"}\n\n"
    parser.feed(chunk % 1, 1.0)
    parser.feed(chunk % 3 + chunk % 4, 2.0)
    # in flight: what arrived is on the record already
    assert rec.chunk_times == [1.0, 2.0, 2.0] and rec.chunk_tokens == [1, 2, 1]
    live = LiveTokens()
    assert live.count([rec]) == 4
    parser.feed(chunk % 9, 3.0)
    assert live.count([rec]) == 9  # summed past the last reading only
    other = record(1)
    other.chunk_times.extend([1.0, 2.0])  # no per-chunk counts: one token a chunk
    assert live.count([rec, other]) == 11


def test_finished_requests_count_their_usage_or_their_streamed_chunks() -> None:
    async def main() -> None:
        sink = BookkeepingSink(lambda rec: None)
        ok = record(0, "warmup")
        ok.completion_tokens = 7
        ok.chunk_times = [1.0, 2.0]
        cut = record(1, "warmup")
        cut.outcome = Outcome.CANCELLED
        cut.chunk_times = [1.0, 2.0, 3.0]
        sink.add(ok)
        sink.add(cut)
        assert sink.counts["warmup"] == [2, 1, 10]
        assert streamed_tokens(cut) == 3

    anyio.run(main)


def test_the_rate_of_two_workers_is_the_sum_of_their_own_rates() -> None:
    # each streams 1000 tokens/s; their lines arrive half a second apart
    p = progress()
    p.begin_phase("main", LoadConfig(requests=10), start=0.0)
    for k in range(1, 8):
        now = k + 0.6
        a = ShardProgress("main", 0, 0, 1000 * k, 1, at=float(k))
        b = ShardProgress("main", 0, 0, int(1000 * (k - 0.5)), 1, at=k - 0.5)
        p.observe(now, [a, b])
        assert p.rate() == pytest.approx(2000.0)
