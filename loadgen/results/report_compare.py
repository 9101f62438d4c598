"""The comparison of runs as a self-contained HTML page, with overlaid latency spectra."""

from __future__ import annotations

from collections.abc import Sequence

from loadgen import __version__
from loadgen.results import html as h
from loadgen.results.compare import (
    NOISE_FACTOR,
    Group,
    headers,
    row_cells,
    run_letter,
)
from loadgen.results.report_run import SPECTRUM_METRICS, Plot, matplotlib_missing
from loadgen.results.rundir import Run

_VERDICT_CLASS = {"better": "sig-better", "worse": "sig-worse", "changed": "sig-worse"}


def overlay_plots(runs: Sequence[Run], group: Group) -> list[Plot]:
    """One spectrum per latency metric, every run on it (dashed: corrected, open loop only)."""
    from loadgen.results import plots

    out = []
    for metric, title, twin in SPECTRUM_METRICS:
        curves = []
        for i, (run, phase) in enumerate(zip(runs, group.phases, strict=True)):
            log = run.metric_log(phase, metric)
            if log is None:
                continue
            name = f"{run_letter(i)}: {run.label}"
            curves.append(plots.Curve(name, log.spectrum, plots.color(i)))
            corrected = run.metric_log(phase, twin) if twin and run.open_loop(phase) else None
            if corrected is not None:
                curves.append(
                    plots.Curve(
                        f"{run_letter(i)}: from intended send",
                        corrected.spectrum,
                        plots.color(i),
                        True,
                    )
                )
        png = plots.latency_spectra(f"{title} percentile spectrum, phase {group.title}", curves)
        if png:
            out.append(Plot(f"compare-{group.title}-{metric}", png, f"{title} spectra"))
    return out


def _group_table(runs: Sequence[Run], group: Group) -> str:
    rows: list[list[h.Cell]] = []
    for row in group.rows:
        cells: list[h.Cell] = list(row_cells(row))
        # Every 5th cell after the first two is a verdict: colour it.
        for k, d in enumerate(row.deltas):
            idx = 2 + 5 * k + 4
            css = _VERDICT_CLASS.get(d.verdict)
            if css:
                cells[idx] = h.Raw(f'<span class="{css}">{h.esc(d.verdict)}</span>')
        rows.append(cells)
    return h.table(headers(runs), rows)


def render_compare_html(
    runs: Sequence[Run], groups: Sequence[Group], warnings: Sequence[str]
) -> str:
    missing = matplotlib_missing()
    legend = h.table(
        ["run", "results folder", "scenario", "started", "model"],
        [
            [
                run_letter(i),
                str(r.path),
                r.name,
                r.summary.run.started_at,
                r.summary.run.model,
            ]
            for i, r in enumerate(runs)
        ],
        text_columns=(1, 2, 3, 4),
    )
    body = [
        "<h1>loadgen compare</h1>",
        legend,
        *(h.note(w) for w in warnings),
        h.note(
            f"Noise: {NOISE_FACTOR:g} x the larger standard deviation of the figure's per-window "
            "values in the two runs. 'better', 'worse' and 'changed' mark differences beyond it; "
            "'?' marks figures whose runs have fewer than two windows (use a shorter --window).",
            "good",
        ),
    ]
    for g in groups:
        body.append(f"<h2>Phase {h.esc(g.title)}</h2>")
        body.append(_group_table(runs, g))
        if missing:
            body.append(h.note(missing))
        else:
            body.extend(p.html() for p in overlay_plots(runs, g))
    body.append(f"<footer>loadgen {h.esc(__version__)}</footer>")
    return h.page("loadgen compare: " + " vs ".join(r.label for r in runs), "".join(body))
