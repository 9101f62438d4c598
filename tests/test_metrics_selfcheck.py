"""The client's self-check: event-loop lag, the loop's CPU and its wait for a CPU, and the causes."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from loadgen.config import LoadConfig
from loadgen.metrics.selfcheck import (
    LOOP_LAG_P99_LIMIT_MS,
    Reading,
    SelfCheck,
    available_cores,
    combine_verdicts,
    cpu_pressure_seconds,
    in_flight_check,
    phase_in_flight,
    process_cpu_seconds,
    run_queue_wait_seconds,
    verdict_line,
)
from loadgen.metrics.summary import PhaseAccumulator
from loadgen.records import RequestRecord
from loadgen.results.schema import to_builtins


def reading(
    wall: float, loop_cpu: float, wait: float | None = 0.0, process_cpu: float | None = None
) -> Reading:
    return Reading(
        wall=wall,
        process_cpu=loop_cpu if process_cpu is None else process_cpu,
        loop_cpu=loop_cpu,
        run_queue_wait=wait,
        pressure=None,
    )


def check(cores: int = 2) -> SelfCheck:
    return SelfCheck(cores=cores, load=lambda: 0.1)


def on_time(c: SelfCheck, probes: int, late: float = 0.0005) -> None:
    for k in range(probes):
        c.tick(deadline=k * 0.05, now=k * 0.05 + late)


def test_on_time_probe_and_idle_loop_is_clean() -> None:
    c = check()
    on_time(c, 200, late=0.001)
    c.sample(reading(100.0, 10.0, wait=1.0))
    c.sample(reading(110.0, 11.0, wait=1.01, process_cpu=12.0))
    v = c.verdict()
    assert v["causes"] == {}
    assert v["loop_lag_ms"]["count"] == 200
    assert v["loop_lag_ms"]["p50"] == v["loop_lag_ms"]["p99"] == 1.0
    assert v["loop_lag_ms"]["late_share"] == pytest.approx(0.2 / 10.0)
    assert v["cpu"]["loop_cores"] == pytest.approx(0.1)
    assert v["cpu"]["cores_used"] == pytest.approx(0.2)  # other threads count for the process
    assert v["cpu"]["fraction_of_available"] == pytest.approx(0.1)
    assert v["host"]["run_queue_wait_share"] == pytest.approx(0.001)
    assert to_builtins(combine_verdicts([v])) == {
        "client_bound": False,
        "causes": [],
        "shards": [{**v, "node": ""}],  # "": on the driver's host
        "nodes": [],  # no cluster
    }


def test_on_a_cluster_causes_name_their_node_and_each_node_is_judged() -> None:
    quiet = {"cpu": {"cores_used": 0.25}, "loop_lag_ms": {"p99": 1.5}, "causes": {}}
    starved = {
        "cpu": {"cores_used": 0.5},
        "loop_lag_ms": {"p99": 9.0},
        "causes": {"host_contention": {"evidence": "waited 30%"}},
    }
    client = combine_verdicts([quiet, starved, quiet], nodes=["10.0.0.1", "10.0.0.2", "10.0.0.1"])
    assert [c.where for c in client.causes] == ["shard 1 on node 10.0.0.2"]
    assert [s.node for s in client.shards] == ["10.0.0.1", "10.0.0.2", "10.0.0.1"]
    nodes = {n.node: n for n in client.nodes}
    assert nodes["10.0.0.1"].shards == [0, 2] and nodes["10.0.0.1"].causes == []
    assert nodes["10.0.0.1"].cores_used == 0.5 and nodes["10.0.0.1"].loop_lag_p99_ms == 1.5
    assert nodes["10.0.0.2"].causes == ["host_contention"]
    assert not client.client_bound


def test_late_share_is_a_share_of_wall_time() -> None:
    """One 2.4 s freeze in a 65 s run is 3.7 % of the time late, not half of it."""
    c = check()
    on_time(c, 1300, late=0.0)
    c.tick(deadline=30.0, now=32.4)
    c.sample(reading(0.0, 0.0))
    c.sample(reading(65.0, 3.0))
    v = c.verdict()
    assert v["loop_lag_ms"]["late_share"] == pytest.approx(2.4 / 65.0)
    assert v["loop_lag_ms"]["max"] == pytest.approx(2400.0, rel=0.001)


def test_a_late_loop_that_did_not_wait_for_a_cpu_is_client_bound() -> None:
    c = check(cores=8)
    on_time(c, 190)
    for k in range(190, 200):  # 5 % of wake-ups 20 ms late
        c.tick(k * 0.05, k * 0.05 + 0.020)
    c.sample(reading(0.0, 0.0, wait=0.0))
    c.sample(reading(10.0, 3.0, wait=0.0))
    v = c.verdict()
    assert v["loop_lag_ms"]["p99"] > LOOP_LAG_P99_LIMIT_MS
    assert set(v["causes"]) == {"client_cpu_bound"}
    assert "own work" in v["causes"]["client_cpu_bound"]["evidence"]


def test_a_late_loop_that_waited_for_a_cpu_is_host_contention_only() -> None:
    """The busy machine: loadgen uses 5 % of a core, but the loop waits on the run queue."""
    c = check()
    on_time(c, 150)
    for k in range(150, 200):
        c.tick(k * 0.05, k * 0.05 + 0.030)
    c.sample(reading(0.0, 0.0, wait=0.0))
    c.sample(reading(10.0, 0.5, wait=2.0))  # 5 % of a core; waited 20 % of the time
    v = c.verdict()
    assert set(v["causes"]) == {"host_contention"}
    assert "20%" in v["causes"]["host_contention"]["evidence"]
    combined = combine_verdicts([v])
    assert combined.client_bound is False
    assert "HOST CONTENTION" in verdict_line(combined)


def test_a_loop_busy_a_whole_core_is_client_bound() -> None:
    c = check(cores=8)
    c.sample(reading(0.0, 0.0))
    c.sample(reading(1.0, 0.95))
    v = c.verdict()
    assert set(v["causes"]) == {"client_cpu_bound"}
    assert "0.95 of a core" in v["causes"]["client_cpu_bound"]["evidence"]
    half = check(cores=8)
    half.sample(reading(0.0, 0.0))
    half.sample(reading(1.0, 0.5))
    assert half.verdict()["causes"] == {}


def test_a_busy_loop_on_a_shared_core_is_both() -> None:
    """Always runnable (60 % running + 35 % waiting): the client cannot keep up, and the host
    gives it only part of a core."""
    c = check()
    c.sample(reading(0.0, 0.0, wait=0.0))
    c.sample(reading(10.0, 6.0, wait=3.5))
    v = c.verdict()
    assert set(v["causes"]) == {"client_cpu_bound", "host_contention"}
    assert combine_verdicts([v]).client_bound is True


def test_no_data_is_no_verdict_against_the_client() -> None:
    v = check(cores=1).verdict()
    assert v["causes"] == {}
    assert v["loop_lag_ms"]["count"] == 0 and v["loop_lag_ms"]["p99"] is None
    assert v["cpu"]["cores_used"] is None


def test_one_hiccup_in_a_short_run_is_clean() -> None:
    c = check()
    for k in range(20):  # one second of probes, one of them 9 ms late
        c.tick(k * 0.05, k * 0.05 + (0.009 if k == 3 else 0.0003))
    c.sample(reading(0.0, 0.0))
    c.sample(reading(1.0, 0.05))
    v = c.verdict()
    assert v["loop_lag_ms"]["p99"] > LOOP_LAG_P99_LIMIT_MS  # the p99 of 20 probes is their max
    assert v["causes"] == {}


def test_next_deadline_never_builds_a_backlog() -> None:
    c = check()
    assert c.next_deadline(1.0, 1.001) == pytest.approx(1.051)
    assert c.next_deadline(1.0, 3.4) == pytest.approx(3.45)  # after a freeze: from the wake-up


def test_a_frozen_loop_is_one_late_probe_not_a_backlog() -> None:
    """Block the loop 0.3 s once: one probe is 0.3 s late; the next ones are on time again, and
    the late share is about 0.3 s over the run's wall time."""
    probe = SelfCheck(interval=0.01)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe.run)
            await anyio.sleep(0.2)
            time.sleep(0.3)  # noqa: ASYNC251 (the point: the loop's thread is held)
            await anyio.sleep(0.5)
            tg.cancel_scope.cancel()

    anyio.run(main)
    v = probe.verdict()
    lag = v["loop_lag_ms"]
    assert lag["max"] >= 250.0
    late_probes = sum(
        count
        for value, count in ((x.value_iterated_to, x.count_at_value_iterated_to) for x in probe.lag.get_recorded_iterator())
        if value >= 100_000
    )  # fmt: skip
    assert late_probes == 1
    wall = v["cpu"]["wall_seconds"]
    assert 0.25 / wall <= lag["late_share"] <= 0.45 / wall


def test_a_loop_held_by_its_own_work_is_client_bound() -> None:
    probe = SelfCheck(interval=0.01)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe.run)
            await anyio.sleep(0.05)
            for _ in range(4):  # busy in the loop's own thread 0.2 s at a time
                until = time.perf_counter() + 0.2
                while time.perf_counter() < until:
                    pass
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    v = probe.verdict()
    assert "client_cpu_bound" in v["causes"]
    # The loop was always runnable: running, or waiting for a CPU on a shared machine.
    wait = v["host"]["run_queue_wait_share"] or 0.0
    assert v["cpu"]["loop_cores"] is not None and v["cpu"]["loop_cores"] + wait > 0.5


def test_host_readings(tmp_path: Path) -> None:
    assert available_cores() >= 1
    assert process_cpu_seconds() > 0.0
    if Path("/proc/thread-self/schedstat").exists():
        wait = run_queue_wait_seconds()
        assert wait is not None and wait >= 0.0
    schedstat = tmp_path / "schedstat"
    schedstat.write_text("123456789 2500000000 77\n")
    assert run_queue_wait_seconds(str(schedstat)) == pytest.approx(2.5)
    assert run_queue_wait_seconds(str(tmp_path / "absent")) is None
    pressure = tmp_path / "cpu"
    pressure.write_text(
        "some avg10=1.00 avg60=0.50 avg300=0.10 total=4500000\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    assert cpu_pressure_seconds(str(pressure)) == pytest.approx(4.5)
    assert cpu_pressure_seconds(str(tmp_path / "absent")) is None


def test_in_flight_check_closed_and_open() -> None:
    assert in_flight_check("closed", 30, 0, 30, 29.0, None, None) is None
    short = in_flight_check("closed", 30, 0, 30, 20.0, None, None)
    assert (
        short is not None
        and "20.0 while every stream offered load < 95% of the 30 streams" in short["evidence"]
    )
    assert in_flight_check("constant", 0, 8, 5, 3.0, 1.0, 2.0) is None
    capped = in_flight_check("constant", 0, 8, 8, 7.0, 1.0, 2.0)
    assert capped is not None and "cap of 8" in capped["evidence"]
    behind = in_flight_check("poisson", 0, 0, 50, 40.0, 2.0, 900.0)
    assert behind is not None and "fell behind" in behind["evidence"]


def _record(i: int, sent: float, end: float) -> RequestRecord:
    return RequestRecord(
        index=i, phase="main", shard=0, target="t", intended=sent, sent=sent, end=end
    )


def test_phase_in_flight_counts_only_while_every_stream_offered_load() -> None:
    """4 streams busy for 10 s, then a drain where one request runs alone for 5 s: not short.
    With one stream idle half of the time: short."""
    load = LoadConfig(mode="closed", concurrency=4, requests=16)
    acc = PhaseAccumulator("main")
    for s in range(4):
        for k in range(4):
            end = (k + 1) * 2.5 + (5.0 if (s, k) == (0, 3) else 0.0)
            acc.add(_record(s * 4 + k, k * 2.5, end))
    assert phase_in_flight(acc, load) is None
    gappy = PhaseAccumulator("main")
    for s in range(4):
        for k in range(4):
            start = k * 2.5
            gappy.add(_record(s * 4 + k, start, start + (1.25 if s == 0 else 2.5)))
    found = phase_in_flight(gappy, load)
    assert found is not None
    combined = combine_verdicts([], {"main": found, "other": None})
    assert to_builtins(combined)["causes"] == [
        {"cause": "in_flight_short", "where": "phase main", "evidence": found["evidence"]}
    ]
    assert combined.client_bound is False
