"""Runs side by side: the same figures, absolute and relative differences, and whether each
difference is larger than the runs' own noise.

The noise rule (docs/reports.md): a figure's noise in one run is the sample standard deviation of
its per-window values (throughput windows for rates; the per-window histograms of the interval
logs for latency percentiles), over windows that cover at least half a window length (rates) or
hold at least one sample (latencies). A difference is flagged when it exceeds twice the larger
noise of the two runs. With fewer than two windows in both runs the noise is unknown and nothing
is flagged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from loadgen.errors import LoadgenError
from loadgen.results.rundir import Run
from loadgen.results.schema import Goodput, Phase, ServerDelta

Better = Literal["lower", "higher", ""]
NOISE_FACTOR = 2.0
# Keys of the scenario that never change what a run measures.
IGNORED_SCENARIO_KEYS = frozenset({"source", "output.directory", "output.progress"})


class CompareError(LoadgenError):
    pass


# ---- figures --------------------------------------------------------------------------------


def _window_rates(key: str) -> Callable[[Run, str], list[float]]:
    def values(run: Run, phase: str) -> list[float]:
        win = run.phases[phase].windows
        return [
            float(v)
            for row in win.series
            if (v := getattr(row, key)) is not None and row.duration >= win.window_s / 2
        ]

    return values


def _window_percentiles(metric: str, q: float) -> Callable[[Run, str], list[float]]:
    def values(run: Run, phase: str) -> list[float]:
        log = run.metric_log(phase, metric)
        return log.window_values(q) if log else []

    return values


@dataclass(frozen=True, slots=True)
class Figure:
    label: str
    better: Better
    digits: int
    value: Callable[[Run, str], float | None]
    windows: Callable[[Run, str], list[float]] | None = None
    open_loop_only: bool = False


def _phase_value(get: Callable[[Phase], float | None]) -> Callable[[Run, str], float | None]:
    def value(run: Run, phase: str) -> float | None:
        v = get(run.phases[phase])
        return None if v is None else float(v)

    return value


def _goodput(get: Callable[[Goodput], float | None]) -> Callable[[Run, str], float | None]:
    return _phase_value(lambda p: None if p.goodput is None else get(p.goodput))


def _server_value(get: Callable[[ServerDelta], float | None]) -> Callable[[Run, str], float | None]:
    def value(run: Run, phase: str) -> float | None:
        server = run.summary.server.phases.get(phase)
        v = None if server is None else get(server.delta)
        return None if v is None else float(v)

    return value


def _latency_value(metric: str, q: str) -> Callable[[Run, str], float | None]:
    return _phase_value(lambda p: p.latency(metric, q))


def _latency(metric: str, label: str, qs: Sequence[str], open_only: bool = False) -> list[Figure]:
    return [
        Figure(
            f"{label} {q} (ms)",
            "lower",
            2,
            _latency_value(metric, q),
            _window_percentiles(metric, float(q[1:])),
            open_only,
        )
        for q in qs
    ]


FIGURES: tuple[Figure, ...] = (
    Figure("requests", "", 0, _phase_value(lambda p: p.requests.total)),
    Figure("failed requests", "lower", 0, _phase_value(lambda p: p.requests.failed)),
    Figure(
        "requests/s",
        "higher",
        2,
        _phase_value(lambda p: p.throughput.requests_per_s),
        _window_rates("requests_per_s"),
    ),
    Figure(
        "prompt tokens/s",
        "higher",
        1,
        _phase_value(lambda p: p.throughput.prompt_tokens_per_s),
        _window_rates("prompt_tokens_per_s"),
    ),
    Figure(
        "generation tokens/s",
        "higher",
        1,
        _phase_value(lambda p: p.throughput.generation_tokens_per_s),
        _window_rates("generation_tokens_per_s"),
    ),
    Figure("goodput (requests/s)", "higher", 2, _goodput(lambda g: g.requests_per_s)),
    Figure("goodput (share of requests)", "higher", 3, _goodput(lambda g: g.fraction)),
    Figure(
        "mean concurrency",
        "",
        2,
        _phase_value(lambda p: p.concurrency.mean),
        _window_rates("mean_concurrency"),
    ),
    *_latency("ttft", "TTFT", ("p50", "p90", "p99")),
    *_latency("ttft_intended", "TTFT from intended send", ("p50", "p99"), open_only=True),
    *_latency("itl", "ITL", ("p50", "p99")),
    *_latency("itl_chunk", "ITL per chunk (vLLM bench)", ("p50", "p99")),
    *_latency("tpot", "TPOT", ("p50", "p99")),
    *_latency("e2e", "E2E", ("p50", "p99")),
    *_latency("e2e_intended", "E2E from intended send", ("p50", "p99"), open_only=True),
    Figure(
        "prefix cache hit rate (server)", "", 3, _server_value(lambda d: d.prefix_cache.hit_rate)
    ),
    Figure("MM cache hit rate (server)", "", 3, _server_value(lambda d: d.mm_cache.hit_rate)),
)


# ---- noise and differences -------------------------------------------------------------------


def window_noise(values: Sequence[float]) -> float | None:
    """Sample standard deviation of per-window values; None with fewer than two windows."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.stdev(finite) if len(finite) >= 2 else None


@dataclass(frozen=True, slots=True)
class Delta:
    absolute: float | None
    relative: float | None  # (candidate - baseline) / baseline
    noise: float | None  # the larger window standard deviation of the two runs
    verdict: str  # "better", "worse", "changed" (beyond noise), "" (within noise), "?" (unknown)


def judge(
    baseline: float | None,
    candidate: float | None,
    noise_a: float | None,
    noise_b: float | None,
    better: Better,
    judged: bool = True,
) -> Delta:
    """The difference of two runs' figure, judged against their noise (see the module doc).
    Figures without per-window values (`judged` false) are shown, never flagged."""
    if baseline is None or candidate is None:
        return Delta(None, None, None, "")
    diff = candidate - baseline
    rel = diff / baseline if baseline else None
    if not judged:
        return Delta(diff, rel, None, "")
    known = [n for n in (noise_a, noise_b) if n is not None]
    noise = max(known) if known else None
    if noise is None:
        verdict = "?" if diff else ""
    elif abs(diff) > NOISE_FACTOR * noise:
        if not better:
            verdict = "changed"
        else:
            verdict = "better" if (diff < 0) == (better == "lower") else "worse"
    else:
        verdict = ""
    return Delta(diff, rel, noise, verdict)


@dataclass(slots=True)
class Row:
    figure: Figure
    values: list[float | None]
    deltas: list[Delta]  # one per run after the first, against the first


@dataclass(slots=True)
class Group:
    """One phase compared across runs (the phase may be named differently in each run)."""

    title: str
    phases: list[str]
    rows: list[Row] = field(default_factory=list)


def pick_phases(runs: Sequence[Run], phase: str | None) -> list[list[str]]:
    """Which phase of each run to compare: `phase` in every run, or `A:B[:C...]`, one name per
    run in order (phases named differently: `main` in one run, `cold` in the other); else every
    phase name all runs share; else, when each run has exactly one phase, those."""
    if phase and ":" in phase:
        names = phase.split(":")
        if len(names) != len(runs):
            raise CompareError(
                f"--phase {phase!r}: one phase name per run, separated by ':' "
                f"({len(runs)} runs, {len(names)} names)"
            )
        for name, run in zip(names, runs, strict=True):
            if name not in run.phases:
                listing = ", ".join(run.phases) or "none"
                raise CompareError(f"no phase {name!r} in {run.label} (it has: {listing})")
        return [names]
    if phase:
        missing = [r.label for r in runs if phase not in r.phases]
        if missing:
            raise CompareError(f"no phase {phase!r} in: {', '.join(missing)}")
        return [[phase] * len(runs)]
    common = [p for p in runs[0].phases if all(p in r.phases for r in runs[1:])]
    if common:
        return [[p] * len(runs) for p in common]
    if all(len(r.phases) == 1 for r in runs):
        return [[next(iter(r.phases)) for r in runs]]
    listing = "; ".join(f"{r.label}: {', '.join(r.phases) or 'none'}" for r in runs)
    raise CompareError(f"the runs share no phase name ({listing}); choose one with --phase")


def compare_runs(runs: Sequence[Run], phase: str | None = None) -> list[Group]:
    if len(runs) < 2:
        raise CompareError("compare needs at least two runs")
    groups = []
    for phases in pick_phases(runs, phase):
        title = phases[0] if len(set(phases)) == 1 else " / ".join(phases)
        group = Group(title, phases)
        open_loop = any(r.open_loop(p) for r, p in zip(runs, phases, strict=True))
        for fig in FIGURES:
            if fig.open_loop_only and not open_loop:
                continue
            values = [fig.value(r, p) for r, p in zip(runs, phases, strict=True)]
            if all(v is None for v in values):
                continue
            noises = [
                window_noise(fig.windows(r, p)) if fig.windows else None
                for r, p in zip(runs, phases, strict=True)
            ]
            deltas = [
                judge(
                    values[0], values[i], noises[0], noises[i], fig.better, fig.windows is not None
                )
                for i in range(1, len(runs))
            ]
            group.rows.append(Row(fig, values, deltas))
        groups.append(group)
    return groups


# ---- what else differs ------------------------------------------------------------------------


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; the phases list is keyed by phase name."""
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif (
        isinstance(doc, list)
        and doc
        and prefix == "phases."
        and all(isinstance(p, dict) and "name" in p for p in doc)
    ):
        for p in doc:
            out.update(flatten({k: v for k, v in p.items() if k != "name"}, f"phases.{p['name']}."))
    else:
        out[prefix.rstrip(".")] = doc
    return out


def scenario_differences(runs: Sequence[Run]) -> dict[str, list[Any]]:
    """Scenario keys whose values differ between the runs -> each run's value (None if absent)."""
    flat = [flatten(r.summary.scenario) for r in runs]
    keys = sorted({k for f in flat for k in f} - IGNORED_SCENARIO_KEYS)
    return {
        k: [f.get(k) for f in flat] for k in keys if any(f.get(k) != flat[0].get(k) for f in flat)
    }


def version_differences(runs: Sequence[Run]) -> dict[str, list[Any]]:
    vers = [r.summary.environment.versions for r in runs]
    keys = sorted({k for v in vers for k in v})
    return {
        k: [v.get(k) for v in vers] for k in keys if any(v.get(k) != vers[0].get(k) for v in vers)
    }


def difference_warning(diffs: dict[str, list[Any]]) -> str:
    parts = [f"{k} ({' vs '.join(_short(v) for v in values)})" for k, values in diffs.items()]
    return "the runs' scenarios differ: " + "; ".join(parts)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- text -----------------------------------------------------------------------------------


def fmt_value(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def fmt_delta(d: Delta, digits: int) -> tuple[str, str, str]:
    """(absolute, relative, noise) as text."""
    absolute = "-" if d.absolute is None else f"{d.absolute:+,.{digits}f}"
    relative = "-" if d.relative is None else f"{100.0 * d.relative:+.1f}%"
    noise = "-" if d.noise is None else f"±{NOISE_FACTOR * d.noise:,.{digits}f}"
    return absolute, relative, noise


def headers(runs: Sequence[Run]) -> list[str]:
    letters = [run_letter(i) for i in range(len(runs))]
    out = ["figure", letters[0]]
    for letter in letters[1:]:
        out += [letter, f"{letter}-A", f"{letter}/A-1", "noise (2σ)", f"{letter} vs A"]
    return out


def run_letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"R{i + 1}"


def row_cells(row: Row) -> list[str]:
    fig = row.figure
    cells = [fig.label, fmt_value(row.values[0], fig.digits)]
    for value, d in zip(row.values[1:], row.deltas, strict=True):
        absolute, relative, noise = fmt_delta(d, fig.digits)
        cells += [fmt_value(value, fig.digits), absolute, relative, noise, d.verdict]
    return cells


def render_text(runs: Sequence[Run], groups: Sequence[Group], warnings: Sequence[str]) -> str:
    from loadgen.results.console import table

    out = [f"{run_letter(i)} = {r.path} ({r.name})" for i, r in enumerate(runs)]
    out += [f"warning: {w}" for w in warnings]
    for g in groups:
        out.append("")
        out.append(f"== phase {g.title}")
        out.append(table(headers(runs), [row_cells(r) for r in g.rows]))
    out.append("")
    out.append(
        "noise: 2 x the larger standard deviation of the figure's per-window values in the two "
        "runs; 'better'/'worse'/'changed' mark differences beyond it, '?' where the runs have "
        "fewer than 2 windows (shorten --window)."
    )
    return "\n".join(out)
