"""The X-Sim-Fault header grammar and the stall schedule."""

from __future__ import annotations

import random

import pytest

from loadgen.sim.faults import (
    FaultConfig,
    FaultHeaderError,
    RequestFaults,
    StallSchedule,
    merge,
    parse_fault_header,
)


def test_every_item_parses() -> None:
    faults = parse_fault_header(
        "http_503, drop_after=4, stream_error_after=2, malformed_after=1, no_usage, "
        "slow_headers=0.5, stall=2"
    )
    assert faults == RequestFaults(
        http_status=503, drop_after=4, stream_error_after=2, malformed_after=1, no_usage=True,
        slow_headers=0.5, stall=2.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    "value", ["http_404", "drop_after", "drop_after=x", "stall=-1", "no_usage=1", "bogus"]
)
def test_bad_items_are_rejected(value: str) -> None:
    with pytest.raises(FaultHeaderError):
        parse_fault_header(value)


def test_header_wins_over_flags() -> None:
    drawn = RequestFaults(http_status=429, drop_after=9)
    merged = merge(drawn, parse_fault_header("http_500, drop_after=1"))
    assert merged.http_status == 500 and merged.drop_after == 1


def test_rates_draw_faults_at_their_rate() -> None:
    config = FaultConfig(rate_503=0.25, missing_usage_rate=1.0)
    rng = random.Random(1)
    draws = [config.draw(rng) for _ in range(4000)]
    share = sum(d.http_status == 503 for d in draws) / len(draws)
    assert 0.2 < share < 0.3
    assert all(d.no_usage for d in draws)
    assert FaultConfig().draw(rng) == RequestFaults()


def test_stall_schedule_pushes_steps_past_windows() -> None:
    stalls = StallSchedule(origin=0.0, every=10.0, duration=2.0)
    assert stalls.resume_time(5.0) == 5.0
    assert stalls.resume_time(10.5) == 12.0
    assert stalls.resume_time(21.0) == 22.0
    stalls.add(30.0, 1.0)
    assert stalls.resume_time(30.2) == 32.0  # ad-hoc window, then the periodic one


def test_periodic_stalls_count_from_the_first_request() -> None:
    stalls = StallSchedule(origin=None, every=3.0, duration=1.0)
    assert stalls.resume_time(3.5) == 3.5  # no request yet: no periodic stall
    stalls.begin(100.0)
    stalls.begin(101.0)  # only the first request sets the origin
    assert stalls.resume_time(102.0) == 102.0
    assert stalls.resume_time(103.2) == 104.0
    assert stalls.resume_time(106.9) == 107.0
