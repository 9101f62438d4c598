"""A sweep's report.html: the throughput-latency curve with its knee, and a table of the levels,
rendered from sweep.json and the levels' results folders."""

from __future__ import annotations

from pathlib import Path

from loadgen import __version__
from loadgen.errors import LoadgenError
from loadgen.results import html as h
from loadgen.results.html import num, pct
from loadgen.results.report_run import (
    PLOTS_DIR,
    REPORT_FILE,
    Plot,
    matplotlib_missing,
    save_plots,
)
from loadgen.results.rundir import ResultsError, load_run
from loadgen.results.schema import SchemaError, Sweep, decode
from loadgen.sweep import level_text

SWEEP_FILE = "sweep.json"


def read_sweep(sweep_dir: str | Path) -> Sweep:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise ResultsError(f"{sweep_dir}: not a sweep folder (no {SWEEP_FILE})")
    try:
        return decode(path.read_bytes(), Sweep)
    except (OSError, SchemaError) as exc:
        raise ResultsError(f"{path}: {exc}") from None


def sweep_plots(sweep_dir: Path, doc: Sweep) -> list[Plot]:
    from loadgen.results import plots

    levels = doc.levels
    knee = doc.knee.level
    points = [
        plots.SweepPoint(
            lv.level,
            lv.generation_tokens_per_s,
            lv.goodput_per_s,
            lv.ttft_ms,
            lv.tpot_ms,
        )
        for lv in levels
    ]
    out = []
    png = plots.sweep_curves(doc.axis, points, knee, doc.slo)
    if png:
        out.append(
            Plot(
                "sweep",
                png,
                "throughput against latency per level",
                f"Each point is a level ({doc.axis}); the ring and the vertical line mark the "
                "knee; dotted: the SLO.",
            )
        )
    curves = []
    for i, lv in enumerate(levels):
        try:
            log = load_run(sweep_dir / lv.run_dir).metric_log(doc.phase, "ttft")
        except LoadgenError:
            continue
        if log is not None:
            curves.append(
                plots.Curve(f"{doc.axis} {level_text(lv.level)}", log.spectrum, plots.color(i))
            )
    png = plots.latency_spectra("TTFT percentile spectrum per level", curves)
    if png:
        out.append(Plot("sweep-ttft", png, "TTFT spectra per level"))
    return out


def _levels_table(sweep_dir: Path, doc: Sweep) -> str:
    knee = doc.knee.level
    has_slo = bool(doc.slo)
    show_status = any(lv.status != "completed" for lv in doc.levels)
    headers = [
        doc.axis,
        *(["status"] if show_status else []),
        "requests",
        "failed",
        "req/s",
        "prompt tok/s",
        "gen tok/s",
        *(["goodput req/s", "good"] if has_slo else []),
        "mean conc.",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "E2E p99",
        "client-bound",
    ]
    rows: list[list[h.Cell]] = []
    classes = []
    for lv in doc.levels:
        report = sweep_dir / lv.run_dir / REPORT_FILE
        name = level_text(lv.level)
        cell: h.Cell = (
            h.Raw(f'<a href="{h.esc(lv.run_dir)}/{REPORT_FILE}">{h.esc(name)}</a>')
            if report.is_file()
            else name
        )
        rows.append(
            [
                cell,
                *([lv.status] if show_status else []),
                num(lv.requests),
                num(lv.failed),
                num(lv.requests_per_s, 2),
                num(lv.prompt_tokens_per_s),
                num(lv.generation_tokens_per_s),
                *([num(lv.goodput_per_s, 2), pct(lv.goodput_fraction)] if has_slo else []),
                num(lv.mean_concurrency, 2),
                num(lv.ttft_ms.p50, 1),
                num(lv.ttft_ms.p99, 1),
                num(lv.tpot_ms.p50, 2),
                num(lv.tpot_ms.p99, 2),
                num(lv.e2e_ms.p99, 1),
                "yes" if lv.client_saturated else "no",
            ]
        )
        classes.append("sig-better" if knee is not None and lv.level == knee else "")
    return h.table(headers, rows, row_classes=classes, css="compact")


def levels_text(doc: Sweep) -> str:
    """The console's table of a sweep: one row per level, latency means beside the percentiles
    (as `vllm bench serve` prints them) and whether the client itself was the bottleneck."""
    from loadgen.results.console import table

    headers = [
        doc.axis, "requests", "failed", "req/s", "gen tok/s",
        "TTFT mean", "TTFT p50", "TTFT p99", "TPOT mean", "TPOT p50", "TPOT p99",
        "E2E mean", "E2E p99", "client-bound",
    ]  # fmt: skip
    rows = []
    for lv in doc.levels:
        rows.append(
            [
                level_text(lv.level),
                num(lv.requests),
                num(lv.failed),
                num(lv.requests_per_s, 2),
                num(lv.generation_tokens_per_s),
                num(lv.ttft_ms.mean, 1),
                num(lv.ttft_ms.p50, 1),
                num(lv.ttft_ms.p99, 1),
                num(lv.tpot_ms.mean, 2),
                num(lv.tpot_ms.p50, 2),
                num(lv.tpot_ms.p99, 2),
                num(lv.e2e_ms.mean, 1),
                num(lv.e2e_ms.p99, 1),
                "yes" if lv.client_saturated else "no",
            ]
        )
    return table(headers, rows)


def _slo_note(doc: Sweep) -> str:
    slo = doc.slo
    if not slo:
        return h.note(
            "The scenario has no [slo]: the knee follows the throughput rule above.", "good"
        )
    limits = ", ".join(
        f"{k.removesuffix('_ms').upper()} <= {slo[k]:g} ms"
        for k in ("ttft_ms", "tpot_ms", "e2e_ms")
        if slo.get(k)
    )
    return h.note(
        f"SLOs: {limits}; a level meets them when {100 * doc.attainment:g}% of its requests "
        "are good.",
        "good",
    )


def render_sweep_report(sweep_dir: Path, doc: Sweep, plots: list[Plot]) -> str:
    missing = matplotlib_missing()
    saturated = [level_text(lv.level) for lv in doc.levels if lv.client_saturated]
    where = "built-in simulator" if doc.simulator else h.esc(", ".join(doc.urls))
    body = [
        f"<h1>loadgen sweep: {h.esc(doc.name)} by {h.esc(doc.axis)}</h1>",
        f"<p class='sub'>{h.esc(doc.status)}; started {h.esc(doc.started_at)}, "
        f"{num(doc.duration_s, 0)} s; phase {h.esc(doc.phase)}; {where}</p>",
        f"<p><b>{h.esc(doc.knee.sentence)}</b></p>",
        _slo_note(doc),
        *(
            [
                h.note(
                    f"The client itself was the bottleneck at {', '.join(saturated)}: those latencies "
                    "are inflated."
                )
            ]
            if saturated
            else []
        ),
        _levels_table(sweep_dir, doc),
        "<p>Latencies in ms. Each level is a normal results folder; its link opens its own report.</p>",
        h.note(missing) if missing else "",
        *(p.html() for p in plots),
        "<h2>Scenario (before the level's override)</h2>",
        h.pre_json(doc.scenario),
        f"<footer>loadgen {h.esc(__version__)} &middot; {h.esc(sweep_dir)}</footer>",
    ]
    return h.page(f"loadgen sweep {doc.name}", "".join(body))


def write_sweep_report(sweep_dir: str | Path) -> Path:
    folder = Path(sweep_dir)
    doc = read_sweep(folder)
    plots = [] if matplotlib_missing() else sweep_plots(folder, doc)
    save_plots(folder / PLOTS_DIR, plots)
    path = folder / REPORT_FILE
    path.write_text(render_sweep_report(folder, doc, plots), "utf-8")
    return path
