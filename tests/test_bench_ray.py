"""scripts/bench_ray.py's pure parts: the shards' pids from the placement lines, CPU between two
instants from samples, the rows and ratios, the table, the scenario. No Ray, no timings."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_ray

from loadgen.scenario import load_scenario


def test_pids_come_from_the_placement_lines_of_every_node() -> None:
    said = [
        "workload ready in 3 Ray actors in 1.2 s: no images\n",
        "node 127.0.0.1/0a1b2c3d (box): shard 0 (pid 4242) clock +0.012 ms ±0.150, "
        "shard 2 (pid 4250) clock -0.003 ms ±0.101\n",
        "node 127.0.0.1/9f8e7d6c (box): shard 1 (pid 77) clock +0.000 ms ±0.090\n",
        "warning: the shard 9 (pid 1) in a line that is no placement line\n",
    ]
    assert bench_ray.placement_pids(said) == {0: 4242, 1: 77, 2: 4250}
    assert bench_ray.placement_pids(["workload ready\n"]) == {}


def test_cpu_is_interpolated_between_the_samples_around_each_instant() -> None:
    samples = [(10.0, 1.0), (10.5, 1.5), (11.0, 1.5), (12.0, 3.5)]
    assert bench_ray.cpu_at(samples, 10.25) == pytest.approx(1.25)
    assert bench_ray.cpu_at(samples, 11.5) == pytest.approx(2.5)
    assert bench_ray.cpu_between(samples, 10.25, 11.5) == pytest.approx(1.25)
    with pytest.raises(ValueError, match="no CPU samples"):
        bench_ray.cpu_at(samples, 9.9)  # a process first seen after the phase began
    with pytest.raises(ValueError):
        bench_ray.cpu_at(samples, 12.1)


def _run(kind: str, shards: int, rep: int, shard_cpu: float, driver_cpu: float) -> dict[str, Any]:
    return {
        "kind": kind,
        "shards": shards,
        "rep": rep,
        "load": "tokens",
        "wall_s": 2.0,
        "tokens": 1_000_000,
        "records": 4000,
        "shard_cpu_s": shard_cpu,
        "driver_cpu_s": driver_cpu,
        "ray_other_cpu_s": 0.1 if kind == "ray" else 0.0,
        "target_cpu_s": 1.0,
    }


def test_rows_are_medians_with_ray_over_processes_at_the_same_n() -> None:
    runs = [
        _run("process", 1, 0, 4.0, 0.2),
        _run("process", 1, 1, 5.0, 0.2),
        _run("process", 1, 2, 6.0, 0.2),
        _run("ray", 1, 0, 5.5, 0.4),
        _run("ray", 1, 1, 5.5, 0.4),
        _run("process", 2, 0, 4.0, 0.2),
        _run("ray", 2, 0, 4.8, 0.8),
    ]
    rows = bench_ray.summarize(runs)
    assert [(r["shards"], r["kind"], r["reps"]) for r in rows] == [
        (1, "process", 3),
        (1, "ray", 2),
        (2, "process", 1),
        (2, "ray", 1),
    ]
    one = rows[0]
    assert one["us_per_token"] == pytest.approx(5.0)  # median of 4, 5, 6 s over 1e6 tokens
    assert one["per_rep_us_per_token"] == pytest.approx([4.0, 5.0, 6.0])
    assert one["tokens_per_s"] == pytest.approx(500_000)
    assert one["shard_cores"] == pytest.approx(2.5)
    assert one["driver_us_per_record"] == pytest.approx(50.0)
    assert rows[1]["x_process_cpu_per_token"] == pytest.approx(1.1)
    assert rows[1]["x_process_driver"] == pytest.approx(2.0)
    assert rows[3]["x_process_cpu_per_token"] == pytest.approx(1.2)
    assert rows[3]["driver_x_fewest"] == pytest.approx(2.0)  # Ray's driver at N=2 over N=1
    assert rows[2]["x_process_cpu_per_token"] == pytest.approx(1.0)
    # Paired by repetition: 5.5/4 and 5.5/5 (rep 2 has no Ray run).
    assert rows[1]["per_rep_x_process"] == pytest.approx([1.375, 1.1])
    assert rows[1]["x_process_paired"] == pytest.approx(1.2375)
    v = bench_ray.verdicts(rows)
    assert v["ray_overhead"] == {"1": pytest.approx(1.1), "2": pytest.approx(1.2)}
    assert v["ray_overhead_within"] is False
    assert v["ray_overhead_paired"] == {"1": pytest.approx(1.2375), "2": pytest.approx(1.2)}
    assert v["driver_max_over_min"] == {"process": pytest.approx(1.0), "ray": pytest.approx(2.0)}


def test_the_table_has_a_line_per_row_and_says_the_ratios() -> None:
    runs = [_run("process", 1, 0, 4.0, 0.2), _run("ray", 1, 0, 4.2, 0.2)]
    ceiling = {**_run("ray", 1, 0, 1.0, 0.4), "load": "ceiling"}
    rows = bench_ray.summarize([*runs, ceiling])
    table = bench_ray.render(rows).splitlines()
    assert "us/token" in table[0] and "driver us/rec" in table[0]
    assert len(table) == 2 + 3
    assert table[3].split()[:3] == ["tokens", "1", "ray"]
    assert "1.05" in table[3].split()  # Ray's CPU per token over the processes'
    assert table[4].split()[:3] == ["ceiling", "1", "ray"]
    said = bench_ray.render_verdicts(bench_ray.verdicts(rows), rows)
    assert "N=1: 1.05 (within 1.10); median of the ratios paired by repetition: N=1: 1.05" in said
    assert "100.0 us/record -> 10,000 records/s per driver core" in said


def test_the_scenario_is_one_loadgen_reads(tmp_path: Path) -> None:
    text = bench_ray.scenario_toml(shards=4, streams=128, requests=6000, tokens=256)
    doc = tomllib.loads(text)
    assert [p["name"] for p in doc["phases"]] == ["warm", bench_ray.PHASE, "tail"]
    path = tmp_path / "bench.toml"
    path.write_text(text)
    scenario = load_scenario(path)
    assert scenario.distributed.workers == 4
    assert scenario.workload.images_per_request == 0
    assert scenario.target.scrape_metrics is False
    measured = scenario.phases[1].load
    assert (measured.mode, measured.concurrency, measured.requests) == ("closed", 128, 6000)


def test_the_rate_scenario_sends_the_same_arrivals_for_every_n(tmp_path: Path) -> None:
    for shards in (1, 4):
        path = tmp_path / f"rate-{shards}.toml"
        path.write_text(
            bench_ray.scenario_toml(
                shards=shards, streams=32 * shards, requests=4800, tokens=256, rate=400.0
            )
        )
        measured = load_scenario(path).phases[1].load
        assert (measured.mode, measured.rate, measured.requests) == ("constant", 400.0, 4800)
        assert measured.max_concurrency == 32 * shards
