"""Sweep levels, folder names and the knee rules (pure), and the command's refusals."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from loadgen.cli import main
from loadgen.results.schema import Level, Quantiles, Sweep, decode
from loadgen.sweep import (
    find_knee,
    level_dir_name,
    level_text,
    parse_levels,
    sweep_document,
)


def test_levels_are_parsed_sorted_and_checked() -> None:
    assert parse_levels("4, 1,2,", "concurrency") == [1.0, 2.0, 4.0]
    assert parse_levels("0.5,2.5", "rate") == [0.5, 2.5]
    for bad, why in (
        ("1.5", "whole numbers"),
        ("0", "greater than 0"),
        ("x", "not a number"),
        ("1,1", "repeated"),
        ("", "at least one"),
        ("nan", "greater than 0"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_levels(bad, "concurrency")


@given(st.sets(st.integers(min_value=1, max_value=9999), min_size=2))
def test_concurrency_folders_sort_in_level_order(levels: set[int]) -> None:
    ordered = sorted(levels)
    names = [level_dir_name("concurrency", float(v)) for v in ordered]
    assert sorted(names) == names


@given(st.sets(st.floats(min_value=0.001, max_value=99999.0), min_size=2))
def test_rate_folders_sort_in_level_order(levels: set[float]) -> None:
    ordered = sorted({round(v, 4) for v in levels})
    names = [level_dir_name("rate", v) for v in ordered]
    assert sorted(names) == names
    assert len(set(names)) == len(names)


def _level(level: float, gen: float | None, ttft_p99: float | None, good: float | None) -> Level:
    return Level(
        level=level,
        run_dir=level_dir_name("concurrency", level),
        status="completed",
        requests=100,
        failed=0,
        requests_per_s=1.0,
        prompt_tokens_per_s=1.0,
        generation_tokens_per_s=gen,
        goodput_per_s=None if good is None else good * 10,
        goodput_fraction=good,
        mean_concurrency=level,
        ttft_ms=Quantiles(p99=ttft_p99),
        tpot_ms=Quantiles(),
        itl_ms=Quantiles(),
        e2e_ms=Quantiles(),
        client_saturated=False,
    )


SLO = {"ttft_ms": 500.0, "tpot_ms": 50.0}


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=8))
def test_slo_knee_is_the_last_level_before_the_first_miss(fractions: list[float]) -> None:
    levels = [_level(2.0**i, 100.0 * (i + 1), 10.0, f) for i, f in enumerate(fractions)]
    knee = find_knee(levels, "concurrency", SLO)
    assert knee.rule == "slo"
    meets = [f >= 0.99 for f in fractions]
    first_miss = meets.index(False) if False in meets else len(meets)
    if first_miss == 0:
        assert knee.level is None
        assert knee.sentence.startswith("No level met the SLOs")
    else:
        assert knee.level == levels[first_miss - 1].level
        assert f"concurrency {level_text(knee.level)}:" in knee.sentence
        assert knee.beyond == (first_miss == len(levels))
        assert "TTFT <= 500 ms, TPOT <= 50 ms" in knee.sentence


def test_attainment_is_a_parameter() -> None:
    levels = [_level(1, 100, 10, 1.0), _level(2, 200, 10, 0.95), _level(4, 300, 10, 0.5)]
    assert find_knee(levels, "concurrency", SLO).level == 1
    assert find_knee(levels, "concurrency", SLO, attainment=0.9).level == 2


def test_throughput_knee_where_gains_stop_and_ttft_grows() -> None:
    gens = [100, 190, 260, 265, 266]
    ttfts = [10, 11, 13, 30, 60]
    levels = [_level(2.0**i, g, t, None) for i, (g, t) in enumerate(zip(gens, ttfts, strict=True))]
    knee = find_knee(levels, "concurrency", {})
    assert (knee.rule, knee.level, knee.beyond) == ("throughput", 4.0, False)
    assert "going to 8 changed generation tokens/s by +1.9%" in knee.sentence
    assert "from 13 to 30 ms" in knee.sentence


def test_a_flat_step_without_latency_growth_is_not_the_knee() -> None:
    levels = [_level(1, 100, 20, None), _level(2, 101, 20, None), _level(4, 150, 25, None)]
    knee = find_knee(levels, "concurrency", {})
    assert knee.level == 4 and knee.beyond
    assert "still grew" in knee.sentence


def test_a_level_that_lost_throughput_bends_the_curve() -> None:
    levels = [_level(1, 100, 20, None), _level(2, 180, 30, None), _level(4, None, 90, None)]
    assert find_knee(levels, "rate", {}).level == 2


def test_level_json_round_trip() -> None:
    lv = replace(_level(3, 12.5, 40.0, 0.75), client_saturated=True)
    knee = find_knee([lv], "concurrency", SLO)
    doc = sweep_document(
        scenario={"name": "s", "slo": SLO},
        axis="concurrency",
        phase="main",
        levels=[lv],
        knee=knee,
        attainment=0.99,
        min_gain=0.05,
        simulator=True,
        urls=["http://127.0.0.1:1"],
        started_at="2026-01-01T00:00:00+00:00",
        duration_s=1.0,
        status="completed",
    )
    back = decode(msgspec.json.encode(doc), Sweep)
    assert back == doc and back.levels == [lv]


def test_sweep_refuses_bad_input_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = Path(__file__).resolve().parent.parent / "scenarios" / "smoke.toml"
    out = tmp_path / "sweep"
    assert main(["sweep", str(scenario), "--concurrency", "1,x", "--sweep-dir", str(out)]) == 2
    assert "'x' is not a number" in capsys.readouterr().err
    args = ["sweep", str(scenario), "--rate", "1", "--phase", "nope", "--sweep-dir", str(out)]
    assert main(args) == 2
    assert "no phase 'nope'" in capsys.readouterr().err
    assert not out.exists()  # nothing was started or written
    with pytest.raises(SystemExit):
        main(["sweep", str(scenario), "--rate", "1", "--concurrency", "2"])
