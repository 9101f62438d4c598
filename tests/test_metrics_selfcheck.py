"""The client's self-check: event-loop lag and CPU, and the saturation verdict."""

from __future__ import annotations

import time

import anyio

from loadgen.metrics.selfcheck import (
    CPU_AVAILABLE_LIMIT,
    LOOP_LAG_P99_LIMIT_MS,
    SelfCheck,
    available_cores,
    combine_verdicts,
    process_cpu_seconds,
)


def test_on_time_probe_and_idle_cpu_is_not_saturated() -> None:
    c = SelfCheck(cores=2)
    for k in range(200):
        c.tick(deadline=k * 0.05, now=k * 0.05 + 0.001)  # 1 ms late each time
    c.cpu_sample(10.0, 100.0)
    c.cpu_sample(12.0, 110.0)  # 0.2 cores of 2
    v = c.verdict()
    assert v["saturated"] is False and v["reasons"] == []
    assert v["loop_lag_ms"]["count"] == 200
    assert v["loop_lag_ms"]["p50"] == v["loop_lag_ms"]["p99"] == 1.0
    assert v["cpu"] == {
        "seconds": 2.0,
        "wall_seconds": 10.0,
        "cores_used": 0.2,
        "cores_available": 2,
        "fraction_of_available": 0.1,
    }


def test_late_probe_is_saturation() -> None:
    c = SelfCheck(cores=8)
    for k in range(190):
        c.tick(k * 0.05, k * 0.05 + 0.0005)
    for k in range(190, 200):  # 5 % of wake-ups 20 ms late
        c.tick(k * 0.05, k * 0.05 + 0.020)
    v = c.verdict()
    assert v["loop_lag_ms"]["p99"] > LOOP_LAG_P99_LIMIT_MS
    assert v["saturated"] is True
    assert len(v["reasons"]) == 1 and "event-loop lag p99" in v["reasons"][0]


def test_cpu_near_the_available_cores_is_saturation() -> None:
    c = SelfCheck(cores=2)
    c.cpu_sample(0.0, 0.0)
    c.cpu_sample(1.9, 1.0)  # 95 % of two cores
    v = c.verdict()
    assert v["cpu"]["fraction_of_available"] > CPU_AVAILABLE_LIMIT
    assert v["saturated"] and "available cores" in v["reasons"][0]


def test_one_full_core_is_saturation_even_with_cores_to_spare() -> None:
    c = SelfCheck(cores=8)
    c.cpu_sample(0.0, 0.0)
    c.cpu_sample(0.95, 1.0)
    v = c.verdict()
    assert v["saturated"] and "one event loop" in v["reasons"][0]
    c2 = SelfCheck(cores=8)
    c2.cpu_sample(0.0, 0.0)
    c2.cpu_sample(0.5, 1.0)
    assert c2.verdict()["saturated"] is False


def test_no_data_is_no_verdict_against_the_client() -> None:
    v = SelfCheck(cores=1).verdict()
    assert v["saturated"] is False
    assert v["loop_lag_ms"] == {"p50": None, "p99": None, "max": None, "count": 0}
    assert v["cpu"]["cores_used"] is None


def test_host_readings() -> None:
    assert available_cores() >= 1
    assert process_cpu_seconds() > 0.0


def test_a_starved_event_loop_is_seen_as_saturated() -> None:
    check = SelfCheck(interval=0.01)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(check.run)
            await anyio.sleep(0.05)
            for _ in range(3):  # block the loop: nothing else can run for 0.2 s at a time
                until = time.perf_counter() + 0.2
                while time.perf_counter() < until:
                    pass
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    v = check.verdict()
    assert v["saturated"] is True
    assert v["loop_lag_ms"]["max"] >= 150.0
    assert any("event loop late" in r for r in v["reasons"])
    assert v["cpu"]["seconds"] is not None and v["cpu"]["seconds"] > 0.0


def test_combined_verdicts_name_the_saturated_shard() -> None:
    idle = SelfCheck(cores=4).verdict()
    busy = SelfCheck(cores=4)
    busy.cpu_sample(0.0, 0.0)
    busy.cpu_sample(3.9, 1.0)
    combined = combine_verdicts([idle, busy.verdict()])
    assert combined["saturated"] is True
    assert combined["reasons"][0].startswith("shard 1: CPU")
    assert combine_verdicts([idle, idle])["saturated"] is False


def test_one_hiccup_in_a_short_run_is_not_saturation() -> None:
    c = SelfCheck(cores=2)
    for k in range(20):  # one second of probes, one of them 9 ms late
        c.tick(k * 0.05, k * 0.05 + (0.009 if k == 3 else 0.0003))
    v = c.verdict()
    assert v["loop_lag_ms"]["p99"] > LOOP_LAG_P99_LIMIT_MS  # the p99 of 20 probes is their max
    assert v["saturated"] is False
