"""Sweeps: one run per load level, and the knee of the throughput-latency curve. Pure: no I/O.

The knee (docs/reports.md):
- With SLOs in the scenario ([slo]): a level meets them when at least `attainment` (default 99 %)
  of its requests are good (goodput: succeeded and within every threshold). The knee is the
  highest level below the first level that misses, so a lucky level after a miss never counts.
- Without SLOs: walking up the levels, the knee is the first level from which the next level adds
  less than `min_gain` (default 5 %) generation tokens/s while p99 TTFT grows. If no step does,
  throughput was still growing: the knee is at or beyond the highest level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any, Literal

from loadgen.results.schema import Knee, LatencyStats, Level, Quantiles, RunSummary, Sweep

Axis = Literal["concurrency", "rate"]
DEFAULT_ATTAINMENT = 0.99
DEFAULT_MIN_GAIN = 0.05
_QUANTILES = ("mean", "p50", "p90", "p99")  # the mean beside them, as `vllm bench serve` shows


def parse_levels(text: str, axis: Axis) -> list[float]:
    """ "1,2,4" -> [1.0, 2.0, 4.0]: positive, distinct, ascending (whole numbers for concurrency)."""
    levels: list[float] = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"--{axis}: {item!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{axis}: levels must be greater than 0, got {item}")
        if axis == "concurrency" and value != int(value):
            raise ValueError(f"--concurrency: levels must be whole numbers, got {item}")
        levels.append(value)
    if not levels:
        raise ValueError(f"--{axis}: give at least one level, e.g. 1,2,4,8")
    if len(set(levels)) != len(levels):
        raise ValueError(f"--{axis}: a level is repeated")
    return sorted(levels)


def level_text(level: float) -> str:
    return f"{level:g}"


def level_dir_name(axis: Axis, level: float) -> str:
    """A results folder name per level that sorts in level order."""
    if axis == "concurrency":
        return f"concurrency-{int(level):04d}"
    return f"rate-{level:012.4f}".replace(".", "_")


def level_from_summary(level: float, run_dir: str, summary: RunSummary, phase: str) -> Level:
    p = summary.phases[phase]
    thr = p.throughput
    good = p.goodput

    def q(metric: str) -> Quantiles:
        stats = p.latency_ms.get(metric) or LatencyStats()
        return Quantiles(mean=stats.mean, p50=stats.p50, p90=stats.p90, p99=stats.p99)

    return Level(
        level=level,
        run_dir=run_dir,
        status=summary.status,
        requests=p.requests.total,
        failed=p.requests.failed,
        requests_per_s=thr.requests_per_s,
        prompt_tokens_per_s=thr.prompt_tokens_per_s,
        generation_tokens_per_s=thr.generation_tokens_per_s,
        goodput_per_s=good.requests_per_s if good else None,
        goodput_fraction=good.fraction if good else None,
        mean_concurrency=p.concurrency.mean,
        ttft_ms=q("ttft"),
        tpot_ms=q("tpot"),
        itl_ms=q("itl"),
        e2e_ms=q("e2e"),
        client_saturated=summary.client.client_bound,
    )


def _fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _slo_text(slo: Mapping[str, float]) -> str:
    names = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "e2e_ms": "E2E"}
    return ", ".join(f"{names.get(k, k)} <= {v:g} ms" for k, v in slo.items() if v)


def find_knee(
    levels: Sequence[Level],
    axis: Axis,
    slo: Mapping[str, float],
    *,
    attainment: float = DEFAULT_ATTAINMENT,
    min_gain: float = DEFAULT_MIN_GAIN,
) -> Knee:
    """The knee of the sweep by the module's documented rules; `levels` ascending."""
    if not levels:
        rule: Literal["slo", "throughput"] = "slo" if any(slo.values()) else "throughput"
        return Knee(level=None, rule=rule, sentence="No level was run.")
    if any(slo.values()):
        return _slo_knee(levels, axis, slo, attainment)
    return _throughput_knee(levels, axis, min_gain)


def _slo_knee(
    levels: Sequence[Level], axis: Axis, slo: Mapping[str, float], attainment: float
) -> Knee:
    slo_text = _slo_text(slo)
    need = f"{100 * attainment:g}%"
    knee: Level | None = None
    for lv in levels:
        if (lv.goodput_fraction or 0.0) < attainment:
            break
        knee = lv
    if knee is None:
        first = levels[0]
        return Knee(
            level=None,
            rule="slo",
            sentence=f"No level met the SLOs ({slo_text}, {need} of requests): at {axis} "
            f"{level_text(first.level)} only {_fmt(100 * (first.goodput_fraction or 0.0), 1)}% "
            "of requests did.",
        )
    sentence = (
        f"The knee is at {axis} {level_text(knee.level)}: the highest level at which {need} of "
        f"requests met the SLOs ({slo_text}), with {_fmt(knee.generation_tokens_per_s)} "
        f"generation tokens/s and p99 TTFT {_fmt(knee.ttft_ms.p99)} ms."
    )
    beyond = knee is levels[-1]
    if beyond:
        sentence += " Every level met them: the knee may lie beyond; try higher levels."
    return Knee(level=knee.level, rule="slo", sentence=sentence, beyond=beyond)


def _throughput_knee(levels: Sequence[Level], axis: Axis, min_gain: float) -> Knee:
    rule = (
        f"No SLOs in the scenario, so the knee is where throughput stops growing "
        f"(next level adds < {100 * min_gain:g}% generation tokens/s while p99 TTFT grows)"
    )
    for lo, hi in pairwise(levels):
        g0 = lo.generation_tokens_per_s or 0.0
        g1 = hi.generation_tokens_per_s or 0.0
        gain = (g1 / g0 - 1.0) if g0 > 0 else math.inf
        t0, t1 = lo.ttft_ms.p99, hi.ttft_ms.p99
        grew = t0 is not None and t1 is not None and t1 > t0
        if gain < min_gain and grew:
            return Knee(
                level=lo.level,
                rule="throughput",
                sentence=f"{rule}: at {axis} {level_text(lo.level)}; going to {level_text(hi.level)} "
                f"changed generation tokens/s by {100 * gain:+.1f}% ({_fmt(g0)} to {_fmt(g1)}) "
                f"while p99 TTFT grew from {_fmt(t0)} to {_fmt(t1)} ms.",
            )
    top = levels[-1]
    return Knee(
        level=top.level,
        rule="throughput",
        sentence=f"{rule}: throughput still grew at every step, so the knee is at or beyond {axis} "
        f"{level_text(top.level)} ({_fmt(top.generation_tokens_per_s)} generation tokens/s); "
        "try higher levels.",
        beyond=True,
    )


def sweep_document(
    *,
    scenario: Mapping[str, Any],
    axis: Axis,
    phase: str,
    levels: Sequence[Level],
    knee: Knee,
    attainment: float,
    min_gain: float,
    simulator: bool,
    urls: Sequence[str],
    started_at: str,
    duration_s: float,
    status: str,
) -> Sweep:
    """sweep.json."""
    return Sweep(
        status=status,
        name=scenario.get("name"),
        axis=axis,
        phase=phase,
        levels=list(levels),
        slo={k: v for k, v in (scenario.get("slo") or {}).items() if v},
        attainment=attainment,
        min_gain=min_gain,
        knee=knee,
        simulator=simulator,
        urls=list(urls),
        started_at=started_at,
        duration_s=duration_s,
        scenario=dict(scenario),
    )
