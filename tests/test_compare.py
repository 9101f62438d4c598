"""The comparison's rules on hand-made summaries: noise, verdicts, phase matching, scenario diff."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from loadgen.cli import main
from loadgen.results.compare import (
    NOISE_FACTOR,
    CompareError,
    compare_runs,
    flatten,
    judge,
    pick_phases,
    render_text,
    scenario_differences,
    window_noise,
)
from loadgen.results.rundir import Run
from loadgen.results.schema import (
    Concurrency,
    LatencyStats,
    Phase,
    Server,
    Throughput,
    Window,
    Windows,
    decode,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
noise = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1e4))


@given(finite, finite, noise, noise, st.sampled_from(["lower", "higher", ""]))
def test_flagged_exactly_beyond_twice_the_larger_noise(
    a: float, b: float, na: float | None, nb: float | None, better: Any
) -> None:
    d = judge(a, b, na, nb, better)
    known = [n for n in (na, nb) if n is not None]
    assert d.absolute == b - a
    if not known:
        assert d.noise is None
        assert d.verdict == ("?" if b != a else "")
        return
    assert d.noise == max(known)
    beyond = abs(b - a) > NOISE_FACTOR * max(known)
    assert (d.verdict != "") == beyond
    if beyond and better:
        improved = (b < a) if better == "lower" else (b > a)
        assert d.verdict == ("better" if improved else "worse")
    if beyond and not better:
        assert d.verdict == "changed"


def test_unjudged_figures_are_never_flagged() -> None:
    d = judge(10.0, 1000.0, None, None, "lower", judged=False)
    assert d.verdict == "" and d.relative == pytest.approx(99.0)


def test_missing_values_give_no_difference() -> None:
    assert judge(None, 3.0, 1.0, 1.0, "lower").absolute is None
    assert judge(0.0, 3.0, None, None, "").relative is None  # no ratio to zero


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), max_size=20))
def test_window_noise_is_the_sample_standard_deviation(values: list[float]) -> None:
    got = window_noise(values)
    if len(values) < 2:
        assert got is None
    else:
        assert got == pytest.approx(statistics.stdev(values))


# ---- hand-made runs ---------------------------------------------------------------------------


# A real run's summary, its phases and servers replaced by the hand-made ones below.
BASE = decode((Path(__file__).resolve().parent / "data" / "summary_run.json").read_bytes())


def _phase(gen_windows: list[tuple[float, float]], ttft_p99: float) -> Phase:
    """A phase summary with throughput windows (rate, duration) of 1 s."""
    base = BASE.phases["cold"]
    series = [
        Window(
            index=i, start=float(i), end=i + d, duration=d, prompt_tokens=0,
            generation_tokens=0, requests=0, errors=0, generation_tokens_per_s=r,
            requests_per_s=10.0,
        )
        for i, (r, d) in enumerate(gen_windows)
    ]  # fmt: skip
    return replace(
        base,
        requests=replace(base.requests, total=100, failed=0),
        throughput=Throughput(
            requests_per_s=10.0,
            prompt_tokens_per_s=1000.0,
            generation_tokens_per_s=statistics.fmean(r for r, _ in gen_windows),
            total_tokens_per_s=None,
        ),
        goodput=None,
        concurrency=Concurrency(peak=4, mean=4.0),
        latency_ms={"ttft": LatencyStats(p50=10.0, p90=20.0, p99=ttft_p99, count=100)},
        windows=Windows(window_s=1.0, origin=0.0, series=series),
    )


def _run(name: str, phases: dict[str, Phase], **scenario: Any) -> Run:
    sc = {
        "name": "s",
        "source": f"/somewhere/{name}.toml",
        "output": {"directory": f"/out/{name}"},
        "phases": [{"name": p, "load": {"mode": "closed", "concurrency": 4}} for p in phases],
        **scenario,
    }
    summary = replace(
        BASE,
        run=replace(BASE.run, name=name),
        phases=phases,
        phase_comparisons={},
        server=Server(),
        scenario=sc,
    )
    return Run(Path(f"/nonexistent/{name}"), summary)


def _rows(runs: list[Run]) -> dict[str, Any]:
    (group,) = compare_runs(runs)
    return {r.figure.label: r for r in group.rows}


def test_a_clear_throughput_gain_is_flagged_better() -> None:
    a = _run("a", {"main": _phase([(100, 1), (102, 1), (98, 1), (100, 1)], 50.0)})
    b = _run("b", {"main": _phase([(150, 1), (149, 1), (151, 1), (150, 1)], 50.0)})
    gen = _rows([a, b])["generation tokens/s"]
    assert gen.values == [100.0, 150.0]
    assert gen.deltas[0].verdict == "better"
    assert gen.deltas[0].relative == pytest.approx(0.5)


def test_a_gain_within_the_noise_is_not_flagged() -> None:
    a = _run("a", {"main": _phase([(80, 1), (120, 1), (90, 1), (110, 1)], 50.0)})
    b = _run("b", {"main": _phase([(105, 1), (100, 1), (110, 1), (105, 1)], 50.0)})
    assert _rows([a, b])["generation tokens/s"].deltas[0].verdict == ""


def test_a_short_last_window_is_left_out_of_the_noise() -> None:
    steady = [(100.0, 1.0), (100.0, 1.0), (100.0, 1.0)]
    a = _run("a", {"main": _phase([*steady, (5000.0, 0.1)], 50.0)})
    b = _run("b", {"main": _phase([(110.0, 1.0)] * 3, 50.0)})
    d = _rows([a, b])["generation tokens/s"].deltas[0]
    assert d.noise == 0.0  # the 0.1 s tail window would have made it huge


def test_single_window_runs_have_unknown_noise() -> None:
    a = _run("a", {"main": _phase([(100, 1)], 50.0)})
    b = _run("b", {"main": _phase([(200, 1)], 50.0)})
    assert _rows([a, b])["generation tokens/s"].deltas[0].verdict == "?"


def test_three_runs_are_each_compared_with_the_first() -> None:
    runs = [
        _run(n, {"main": _phase([(v, 1), (v, 1)], 50.0)})
        for n, v in (("a", 100), ("b", 200), ("c", 50))
    ]
    gen = _rows(runs)["generation tokens/s"]
    assert [d.absolute for d in gen.deltas] == [100.0, -50.0]
    text = render_text(runs, compare_runs(runs), [])
    assert "C/A-1" in text and "-50.0%" in text


# ---- phases and scenarios ---------------------------------------------------------------------


def test_phases_are_matched_by_name_then_by_being_alone() -> None:
    p = _phase([(1, 1)], 1.0)
    cold_warm = _run("a", {"cold": p, "warm": p})
    assert pick_phases([cold_warm, _run("b", {"warm": p, "cold": p})], None) == [
        ["cold", "cold"],
        ["warm", "warm"],
    ]
    assert pick_phases([_run("a", {"x": p}), _run("b", {"y": p})], None) == [["x", "y"]]
    with pytest.raises(CompareError, match="share no phase name"):
        pick_phases([cold_warm, _run("b", {"main": p, "other": p})], None)
    with pytest.raises(CompareError, match="no phase 'hot'"):
        pick_phases([cold_warm, cold_warm], "hot")
    with pytest.raises(CompareError, match="at least two"):
        compare_runs([cold_warm])


def test_flatten_keys_phases_by_name() -> None:
    doc = {
        "seed": 1,
        "phases": [{"name": "cold", "load": {"concurrency": 8}}],
        "slo": {"ttft_ms": 0},
    }
    assert flatten(doc) == {"seed": 1, "phases.cold.load.concurrency": 8, "slo.ttft_ms": 0}


def test_scenario_differences_name_the_keys_that_matter() -> None:
    p = _phase([(1, 1)], 1.0)
    a = _run("a", {"main": p}, seed=1, workload={"max_tokens": 64})
    b = _run("b", {"main": p}, seed=2, workload={"max_tokens": 64})
    # output folder and source file differ too, but never change what is measured
    assert scenario_differences([a, b]) == {"seed": [1, 2]}


def test_compare_command_needs_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a results folder" in capsys.readouterr().err
