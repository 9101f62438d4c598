"""The reports' plots, drawn with matplotlib's Agg backend straight to PNG bytes.

Figures are built with `matplotlib.figure.Figure`, never pyplot: no global state, no GUI, safe to
call from any thread. Every function takes plain data and returns PNG bytes, or None when there
is nothing to draw.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

from loadgen.results.schema import Quantiles, ServerSample, Window
from loadgen.results.spectra import Spectrum

WIDTH, HEIGHT, DPI = 8.0, 4.2, 110
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _figure(
    rows: int = 1, height: float = HEIGHT, *, fit: bool = False
) -> tuple[Figure, list[Axes]]:
    """A figure of `rows` stacked axes. Fixed margins unless `fit` (labels of unknown width):
    constrained layout costs about as much as drawing the figure."""
    fig = Figure(figsize=(WIDTH, height), layout="constrained" if fit else None)
    if not fit:
        inch = 1.0 / height  # margins in inches, whatever the height
        fig.subplots_adjust(
            left=0.085, right=0.975, bottom=0.5 * inch, top=1.0 - 0.42 * inch, hspace=0.7 * inch
        )
    axes = [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]
    for ax in axes:
        ax.grid(True, which="major", color="#dddddd", linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


# ---- latency spectra ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Curve:
    label: str
    spectrum: Spectrum
    color: str
    dashed: bool = False


def percentile_label(x: float) -> str:
    """The tick label of x = 1 / (1 - p): 1 -> 0%, 10 -> 90%, 1000 -> 99.9%."""
    p = 100.0 * (1.0 - 1.0 / x)
    text = f"{p:.6f}".rstrip("0").rstrip(".")
    return f"{text}%"


def latency_spectra(title: str, curves: Sequence[Curve]) -> bytes | None:
    """HdrHistogram's percentile view: latency against 1 / (1 - p) on a log axis."""
    drawn = [c for c in curves if c.spectrum.count]
    if not drawn:
        return None
    fig, (ax,) = _figure()
    x_max = 10.0
    for c in drawn:
        xs, ys = c.spectrum.step_points()
        x_max = max(x_max, xs[-1])
        ax.step(
            xs,
            ys,
            where="post",
            color=c.color,
            linestyle="--" if c.dashed else "-",
            linewidth=1.6,
            label=f"{c.label} ({c.spectrum.count:,} samples)",
        )
    decades = math.ceil(math.log10(x_max))
    ax.set_xscale("log")
    ax.set_xlim(1.0, 10.0**decades)
    ticks = [1.0, 2.0, *(10.0**k for k in range(1, decades + 1))]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: percentile_label(x)))
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


# ---- series over the run clock --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhaseSpan:
    name: str
    start: float
    end: float


def _shade_phases(ax: Axes, phases: Sequence[PhaseSpan]) -> None:
    if len(phases) < 2:
        return
    for i, p in enumerate(phases):
        ax.axvspan(p.start, p.end, color=color(i), alpha=0.06, linewidth=0)
        ax.text(
            (p.start + p.end) / 2,
            1.0,
            p.name,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
            color="#555555",
        )


def _window_steps(rows: Sequence[Window], key: str) -> tuple[list[float], list[float]]:
    """A window series as post-step coordinates: each value held over its window."""
    xs: list[float] = []
    ys: list[float] = []
    for row in rows:
        value: float | None = getattr(row, key)
        xs.append(float(row.start))
        ys.append(math.nan if value is None else float(value))
    if rows:
        xs.append(float(rows[-1].end))
        ys.append(ys[-1])
    return xs, ys


def throughput_over_time(
    phases: Sequence[PhaseSpan], windows: Sequence[Sequence[Window]], window_s: float
) -> bytes | None:
    """Prompt and generation tokens/s per throughput window, counted the way vLLM's log does."""
    if not any(windows):
        return None
    fig, (ax,) = _figure()
    for i, rows in enumerate(windows):
        if not rows:
            continue
        for key, label, style in (
            ("prompt_tokens_per_s", "prompt tokens/s", "--"),
            ("generation_tokens_per_s", "generation tokens/s", "-"),
        ):
            xs, ys = _window_steps(rows, key)
            ax.step(
                xs,
                ys,
                where="post",
                color=color(0 if key.startswith("prompt") else 1),
                linestyle=style,
                linewidth=1.6,
                label=label if i == 0 else None,
            )
    _shade_phases(ax, phases)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("run time (s)")
    ax.set_ylabel("tokens/s")
    ax.set_title(f"Throughput per {window_s:g} s window (server usage)", pad=14)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def load_over_time(
    phases: Sequence[PhaseSpan],
    windows: Sequence[Sequence[Window]],
    server: Sequence[ServerSample],
) -> bytes | None:
    """Client concurrency per window; the server's running / waiting requests and KV-cache use
    at each /metrics scrape."""
    if not any(windows) and not server:
        return None
    has_kv = any(s.kv_cache_usage_perc is not None for s in server)
    fig, axes = _figure(rows=2 if has_kv else 1, height=HEIGHT * (1.5 if has_kv else 1.0))
    ax = axes[0]
    for i, rows in enumerate(windows):
        if rows:
            xs, ys = _window_steps(rows, "mean_concurrency")
            ax.step(
                xs,
                ys,
                where="post",
                color=color(0),
                linewidth=1.8,
                label="client: mean requests in flight" if i == 0 else None,
            )
    times = [float(s.time) for s in server]
    for key, label, c in (
        ("running", "server: running", color(2)),
        ("waiting", "server: waiting", color(1)),
    ):
        values = [math.nan if (v := getattr(s, key)) is None else float(v) for s in server]
        if any(not math.isnan(v) for v in values):
            ax.plot(times, values, marker=".", color=c, linewidth=1.2, label=label)
    _shade_phases(ax, phases)
    ax.set_ylim(bottom=0.0)
    ax.set_ylabel("requests")
    ax.set_title("Concurrency" + (" and server queue (/metrics)" if server else ""), pad=14)
    ax.legend(loc="best", fontsize=8)
    if has_kv:
        kv_ax = axes[1]
        kv = [
            math.nan if s.kv_cache_usage_perc is None else 100.0 * s.kv_cache_usage_perc
            for s in server
        ]
        kv_ax.plot(times, kv, marker=".", color=color(4), linewidth=1.2)
        kv_ax.set_ylim(0.0, max(5.0, min(100.0, 1.2 * max(v for v in kv if not math.isnan(v)))))
        kv_ax.set_ylabel("KV cache used (%)")
        kv_ax.set_xlim(ax.get_xlim())
    axes[-1].set_xlabel("run time (s)")
    return _png(fig)


# ---- bars -------------------------------------------------------------------------------------


def cache_hit_rates(rates: dict[str, dict[str, float | None]]) -> bytes | None:
    """Per phase: prefix-cache (tokens) and MM-cache (items) hit rates over the phase."""
    kinds = (("prefix", "prefix cache (tokens)"), ("mm", "multimodal cache (items)"))
    if not any(v is not None for r in rates.values() for v in r.values()):
        return None
    fig, (ax,) = _figure(height=3.4)
    names = list(rates)
    width = 0.38
    for k, (key, label) in enumerate(kinds):
        xs = [i + (k - 0.5) * width for i in range(len(names))]
        values = [rates[n].get(key) for n in names]
        bars = ax.bar(
            xs, [100.0 * (v or 0.0) for v in values], width, color=color(k + 2), label=label
        )
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                "n/a" if v is None else f"{100.0 * v:.1f}%",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0.0, 110.0)
    ax.set_ylabel("hit rate (%)")
    ax.set_title("Server cache hit rates per phase (/metrics)")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def ratio_bars(
    title: str, ratios: dict[str, float | None], higher_is_better: frozenset[str] = frozenset()
) -> bytes | None:
    """Horizontal bars of candidate / baseline ratios around 1: green where the candidate is
    better (lower, or higher for the labels in `higher_is_better`), red where worse."""
    items = [(k, v) for k, v in ratios.items() if v is not None]
    if not items:
        return None
    fig, (ax,) = _figure(height=max(2.4, 0.32 * len(items) + 1.0), fit=True)
    labels = [k for k, _ in items]
    values = [v for _, v in items]
    ys = range(len(items))
    ax.barh(
        ys,
        [v - 1.0 for v in values],
        left=1.0,
        color=[
            color(2) if (v >= 1.0) == (k in higher_is_better) or v == 1.0 else color(1)
            for k, v in items
        ],
        height=0.6,
    )
    for y, v in zip(ys, values, strict=True):
        ax.annotate(
            f"x{v:.2f}",
            (v, y),
            xytext=(4 if v >= 1.0 else -4, 0),
            textcoords="offset points",
            ha="left" if v >= 1.0 else "right",
            va="center",
            fontsize=8,
        )
    ax.axvline(1.0, color="#333333", linewidth=1.0)
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    hi = max(*values, 1.0)
    lo = min(*values, 1.0)
    pad = 0.15 * (hi - lo) + 0.05
    ax.set_xlim(max(0.0, lo - pad), hi + pad)
    ax.set_xlabel("candidate / baseline")
    ax.set_title(title)
    return _png(fig)


# ---- sweep ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepPoint:
    level: float
    generation_tokens_per_s: float | None
    goodput_per_s: float | None  # requests/s meeting every SLO (None without SLOs)
    ttft_ms: Quantiles
    tpot_ms: Quantiles


def _plain_log_ticks(ax: Axes) -> None:
    """Log-axis ticks labelled 2, 5, 10, 20 ... instead of powers of ten."""
    plain = FuncFormatter(lambda x, _pos: f"{x:g}")
    ax.xaxis.set_minor_locator(LogLocator(base=10.0, subs=(2.0, 5.0)))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)


def _level_text(level: float) -> str:
    return f"{level:g}"


def sweep_curves(
    axis: str,
    points: Sequence[SweepPoint],
    knee: float | None,
    slo: dict[str, float],
) -> bytes | None:
    """Generation tokens/s against TTFT and TPOT percentiles (one point per level, labelled),
    and throughput / goodput against the level; the knee is ringed."""
    if not points:
        return None
    fig = Figure(figsize=(WIDTH, HEIGHT * 2.1), layout="constrained")
    grid = fig.add_gridspec(2, 2)
    panels = [
        fig.add_subplot(grid[0, 0]),
        fig.add_subplot(grid[0, 1]),
        fig.add_subplot(grid[1, :]),
    ]
    for ax in panels:
        ax.grid(True, color="#dddddd", linewidth=0.8)
        ax.set_axisbelow(True)
    gen = [
        math.nan if p.generation_tokens_per_s is None else p.generation_tokens_per_s for p in points
    ]
    _latency_panel(panels[0], "ttft", "TTFT", axis, points, gen, knee, slo.get("ttft_ms"))
    _latency_panel(panels[1], "tpot", "TPOT", axis, points, gen, knee, slo.get("tpot_ms"))
    _levels_panel(panels[2], axis, points, gen, knee)
    return _png(fig)


def _latency_panel(
    ax: Axes,
    metric: str,
    name: str,
    axis: str,
    points: Sequence[SweepPoint],
    gen: list[float],
    knee: float | None,
    slo: float | None,
) -> None:
    """Generation tokens/s against one latency's p50 and p99, each level labelled."""
    for k, (q, style) in enumerate((("p50", "o-"), ("p99", "s--"))):
        xs = [
            math.nan if (v := getattr(getattr(p, f"{metric}_ms"), q)) is None else v for p in points
        ]
        ax.plot(xs, gen, style, color=color(k), label=f"{name} {q}", markersize=4)
        if q == "p99":
            _label_levels(ax, axis, points, xs, gen, knee)
    if slo:
        ax.axvline(slo, color="#555555", linestyle=":", label=f"SLO {slo:g} ms")
    ax.set_xscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel(f"{name} (ms, log scale)")
    ax.set_ylabel("generation tokens/s")
    ax.set_ylim(bottom=0.0)
    ax.set_title(f"Throughput vs {name}")
    ax.legend(fontsize=7, loc="lower right")


def _label_levels(
    ax: Axes,
    axis: str,
    points: Sequence[SweepPoint],
    xs: list[float],
    gen: list[float],
    knee: float | None,
) -> None:
    for p, x, y in zip(points, xs, gen, strict=True):
        if math.isnan(x) or math.isnan(y):
            continue
        ax.annotate(
            _level_text(p.level), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7
        )
        if knee is not None and p.level == knee:
            ax.plot(
                [x],
                [y],
                "o",
                markersize=13,
                markerfacecolor="none",
                markeredgecolor=color(3),
                markeredgewidth=2,
                label=f"knee ({axis} {_level_text(knee)})",
            )


def _levels_panel(
    ax: Axes, axis: str, points: Sequence[SweepPoint], gen: list[float], knee: float | None
) -> None:
    """Throughput, and goodput when there are SLOs, against the level."""
    levels = [p.level for p in points]
    ax.plot(levels, gen, "o-", color=color(1), label="generation tokens/s")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(levels))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _level_text(x)))
    ax.set_xlabel(axis)
    ax.set_ylabel("generation tokens/s")
    ax.set_ylim(bottom=0.0)
    if any(p.goodput_per_s is not None for p in points):
        right = ax.twinx()
        rates = [math.nan if p.goodput_per_s is None else p.goodput_per_s for p in points]
        right.plot(
            levels, rates, "s--", color=color(2), label="goodput (requests/s meeting the SLOs)"
        )
        right.set_ylabel("goodput (requests/s)")
        right.set_ylim(bottom=0.0)
        extra = right.get_legend_handles_labels()
    else:
        extra = ([], [])
    if knee is not None:
        ax.axvline(
            knee, color=color(3), linewidth=2, alpha=0.7, label=f"knee: {axis} {_level_text(knee)}"
        )
    handles = ax.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="lower right")
    ax.set_title(
        f"Throughput and goodput by {axis}"
        if extra[0]
        else f"Throughput by {axis} (no SLOs: no goodput)"
    )
