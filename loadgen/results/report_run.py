"""`report.html` of one run, rendered from its results folder alone (summary.json and the
histogram logs), with the plots also saved as `plots/*.png` beside it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from loadgen import __version__
from loadgen.metrics.selfcheck import verdict_line
from loadgen.results import html as h
from loadgen.results.html import num, pct
from loadgen.results.report_text import equal_text, unstreamed_note
from loadgen.results.rundir import Run, load_run
from loadgen.results.schema import (
    ClientCheck,
    Phase,
    PhaseComparison,
    PhaseServer,
    PhaseTarget,
    RunSummary,
    ShardCheck,
)

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from loadgen.results.plots import PhaseSpan

REPORT_FILE = "report.html"
PLOTS_DIR = "plots"

# (metric, title, coordinated-omission-corrected twin drawn beside it in open loop)
SPECTRUM_METRICS: tuple[tuple[str, str, str | None], ...] = (
    ("ttft", "TTFT", "ttft_intended"),
    ("itl", "ITL", None),
    ("tpot", "TPOT", None),
    ("e2e", "E2E", "e2e_intended"),
)
_LATENCY_ROWS = (
    ("ttft", "TTFT", False),
    ("ttft_intended", "TTFT from intended send", True),
    ("itl", "ITL", False),
    ("itl_chunk", "ITL per chunk (vLLM bench)", False),
    ("tpot", "TPOT", False),
    ("e2e", "E2E", False),
    ("e2e_intended", "E2E from intended send", True),
    ("schedule_lag", "schedule lag", True),
)
_SERVER_MEANS = {
    "queue": "queue",
    "prefill": "prefill",
    "decode": "decode",
    "ttft": "TTFT",
    "itl": "ITL",
    "tpot": "TPOT",
    "e2e": "E2E",
}
_PERCENTILES = ("p50", "p90", "p95", "p99", "p99.9", "max", "mean")


@dataclass(frozen=True, slots=True)
class Plot:
    name: str  # file stem under plots/
    png: bytes
    alt: str
    caption: str = ""

    def html(self) -> str:
        return h.image(self.png, self.alt, self.caption)


def matplotlib_missing() -> str | None:
    """Why plots cannot be drawn here (None when they can)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "no plots: matplotlib is not installed (pip install 'loadgen[report]')"
    return None


# ---- plots ----------------------------------------------------------------------------------


def spectrum_plots(run: Run) -> list[Plot]:
    from loadgen.results import plots

    out: list[Plot] = []
    phases = list(run.phases)
    for metric, title, twin in SPECTRUM_METRICS:
        curves: list[plots.Curve] = []
        for i, phase in enumerate(phases):
            prefix = f"{phase}: " if len(phases) > 1 else ""
            log = run.metric_log(phase, metric)
            if log is None:
                continue
            corrected = run.metric_log(phase, twin) if twin and run.open_loop(phase) else None
            label = f"{prefix}{title}" + (" from send" if corrected else "")
            curves.append(plots.Curve(label, log.spectrum, plots.color(i)))
            if corrected is not None:
                curves.append(
                    plots.Curve(
                        f"{prefix}{title} from intended send (corrected)",
                        corrected.spectrum,
                        plots.color(i),
                        dashed=True,
                    )
                )
        png = plots.latency_spectra(f"{title} percentile spectrum", curves)
        if png:
            caption = (
                "x = 1/(1-p): the tail spreads to the right. Dashed: measured from the intended "
                "send time (coordinated omission corrected)."
                if any(c.dashed for c in curves)
                else "x = 1/(1-p): the tail spreads to the right."
            )
            out.append(Plot(f"latency-{metric}", png, f"{title} percentile spectrum", caption))
    return out


def _spans(run: Run) -> list[PhaseSpan]:
    from loadgen.results import plots

    return [
        plots.PhaseSpan(name, float(p.started or 0.0), float(p.ended or 0.0))
        for name, p in run.phases.items()
    ]


def time_plots(run: Run) -> list[Plot]:
    from loadgen.results import plots

    spans = _spans(run)
    windows = [p.windows.series for p in run.phases.values()]
    window_s = next((p.windows.window_s for p in run.phases.values()), 10.0)
    out: list[Plot] = []
    png = plots.throughput_over_time(spans, windows, window_s)
    if png:
        out.append(
            Plot(
                "throughput",
                png,
                "tokens/s over time",
                "Prompt tokens count at a request's first token, generation tokens as they stream "
                "(vLLM's log-line rule).",
            )
        )
    png = plots.load_over_time(spans, windows, run.summary.server.timeseries)
    if png:
        out.append(
            Plot(
                "concurrency",
                png,
                "concurrency and server state over time",
                "Client: time-weighted mean requests in flight per window. Server: gauges at each "
                "/metrics scrape.",
            )
        )
    return out


def cache_plots(run: Run) -> list[Plot]:
    from loadgen.results import plots

    out: list[Plot] = []
    rates = {
        name: {"prefix": s.delta.prefix_cache.hit_rate, "mm": s.delta.mm_cache.hit_rate}
        for name, s in run.summary.server.phases.items()
    }
    png = plots.cache_hit_rates(rates) if rates else None
    if png:
        out.append(Plot("cache-hit-rates", png, "cache hit rates per phase"))
    for key, c in run.summary.phase_comparisons.items():
        png = plots.ratio_bars(
            f"{c.candidate} / {c.baseline}: below 1 faster (latency), above 1 more per second",
            comparison_ratios(c),
            higher_is_better=frozenset(("requests/s", "prompt tokens/s", "generation tokens/s")),
        )
        if png:
            out.append(Plot(f"compare-{_slug(key)}", png, f"phase comparison {key}"))
    return out


def comparison_ratios(c: PhaseComparison) -> dict[str, float | None]:
    return {
        "TTFT p50": c.ttft_p50_ratio,
        "TTFT p99": c.ttft_p99_ratio,
        "ITL p50": c.itl_p50_ratio,
        "ITL p99": c.itl_p99_ratio,
        "TPOT p50": c.tpot_p50_ratio,
        "TPOT p99": c.tpot_p99_ratio,
        "E2E p50": c.e2e_p50_ratio,
        "E2E p99": c.e2e_p99_ratio,
        "requests/s": c.requests_per_s_ratio,
        "prompt tokens/s": c.prompt_tokens_per_s_ratio,
        "generation tokens/s": c.generation_tokens_per_s_ratio,
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")


def run_plots(run: Run) -> list[Plot]:
    if matplotlib_missing():
        return []
    return [*spectrum_plots(run), *time_plots(run), *cache_plots(run)]


# ---- the page -------------------------------------------------------------------------------


def latency_table(phase: Phase, open_loop: bool) -> str:
    rows = []
    for key, label, open_only in _LATENCY_ROWS:
        lat = phase.latency_ms.get(key)
        if not lat or not lat.count or (open_only and not open_loop):
            continue
        rows.append([label, *(num(lat.quantile(q), 2) for q in _PERCENTILES), num(lat.count)])
    if not rows:
        return "<p>No latency samples.</p>"
    return h.table(["latency (ms)", *_PERCENTILES, "samples"], rows)


def headline_cards(phase: Phase) -> str:
    req = phase.requests
    thr = phase.throughput
    good = phase.goodput
    items = [
        ("requests", num(req.total)),
        ("succeeded", num(req.succeeded)),
        ("failed", num(req.failed)),
        ("requests/s", num(thr.requests_per_s, 2)),
        ("prompt tokens/s", num(thr.prompt_tokens_per_s)),
        ("generation tokens/s", num(thr.generation_tokens_per_s)),
    ]
    if good:
        items.append(("goodput", f"{num(good.requests_per_s, 2)} req/s"))
        items.append(("requests meeting the SLOs", pct(good.fraction)))
    items.append(("peak concurrency", num(phase.concurrency.peak)))
    return h.cards(items)


def errors_table(phase: Phase) -> str:
    failures = {k: v for k, v in phase.outcomes.items() if v and k != "ok"}
    if not failures:
        return h.note("No errors: every request completed.", "good")
    rows: list[list[h.Cell]] = []
    for kind, count in sorted(failures.items(), key=lambda kv: -kv[1]):
        examples = phase.errors.get(kind) or []
        rows.append([kind, num(count), examples[0].error if examples else ""])
    return h.table(["outcome", "requests", "first message"], rows, text_columns=(2,))


def goodput_line(phase: Phase) -> str:
    good = phase.goodput
    if not good:
        return "<p>No SLO set in the scenario ([slo]), so no goodput.</p>"
    slo = ", ".join(
        f"{k.removesuffix('_ms').upper()} &le; {good.slo[k]:g} ms"
        for k in ("ttft_ms", "tpot_ms", "e2e_ms")
        if good.slo.get(k)
    )
    return (
        f"<p>Goodput ({slo}; TTFT and E2E from the intended send time): "
        f"{num(good.count)} requests ({pct(good.fraction)}), "
        f"{num(good.requests_per_s, 2)} requests/s.</p>"
    )


def tokens_line(phase: Phase) -> str:
    tok = phase.tokens
    cached = ""
    if tok.cached_reported_requests:
        cached = f", cached {num(tok.cached)} ({pct(tok.cached_fraction)})"
    elif phase.requests.succeeded:  # no usage at all: nothing to say
        cached = ", cached tokens not reported by the server"
    conc = phase.concurrency
    against = ""
    if conc.target:  # closed-loop streams, or an open loop's cap
        against = f" of {num(conc.target)} asked ({pct(conc.mean_over_target)} in flight)"
    text = (
        f"Tokens (server usage): prompt {num(tok.prompt)}, generation {num(tok.generation)}"
        f"{cached}. Measured span {num(phase.span.duration_s, 2)} s; mean concurrency "
        f"{num(conc.mean, 2)}{against}."
    )
    out = f"<p>{h.esc(text)}</p>"
    if tok.missing_usage_requests:
        out += h.note(
            f"{tok.missing_usage_requests} requests completed without usage: their tokens are "
            "not counted (is stream_options.include_usage dropped by a proxy?)"
        )
    return out


def server_section(server: PhaseServer | None) -> str:
    if not server:
        return ""
    delta = server.delta
    cmp_ = server.comparison
    rows: list[list[h.Cell]] = []
    labels = {
        "prompt_tokens": "prompt tokens",
        "generation_tokens": "generation tokens",
        "requests": "requests with usage / finished",
    }
    for key, c in cmp_.figures().items():
        match = c.match
        rows.append(
            [
                labels[key],
                num(c.client),
                num(c.server),
                "-" if match is None else ("yes" if match else "NO"),
            ]
        )
    table = h.table(["server /metrics vs client", "client", "server", "equal"], rows)
    caches = h.table(
        ["server figure", "value"],
        [
            ["prefix cache hit rate (tokens)", pct(delta.prefix_cache.hit_rate)],
            ["MM cache hit rate (items)", pct(delta.mm_cache.hit_rate)],
            ["preemptions", num(delta.preemptions)],
        ],
    )
    means = [(k, v) for k, v in delta.mean_ms.items() if v is not None]
    order = {k: i for i, k in enumerate(_SERVER_MEANS)}
    means.sort(key=lambda kv: order.get(kv[0], len(order)))
    server_means = (
        h.table(
            ["server means (ms)", *(_SERVER_MEANS.get(k, k) for k, _ in means)],
            [["per request", *(num(v, 2) for _, v in means)]],
        )
        if means
        else ""
    )
    targets = server.targets
    out = (
        "<h3>Server side (/metrics over the phase"
        + (f", total of {len(targets)} servers" if len(targets) > 1 else "")
        + ")</h3>"
        + f'<div class="row">{table}{caches}</div>'
        + server_means
    )
    if len(targets) > 1:
        out += targets_table(targets)
    if cmp_.mismatch:
        out += h.note("Client and server token totals differ. " + cmp_.note, "warn")
    for n in delta.notes:
        out += h.note(str(n))
    return out


def targets_table(targets: dict[str, PhaseTarget]) -> str:
    """One row per server: the client's totals for it beside its /metrics, and its own means."""
    rows: list[list[h.Cell]] = []
    for url, t in targets.items():
        c, means = t.comparison, t.delta.mean_ms
        rows.append(
            [
                url,
                f"{num(c.prompt_tokens.client)} / {num(c.prompt_tokens.server)}",
                f"{num(c.generation_tokens.client)} / {num(c.generation_tokens.server)}",
                f"{num(c.requests.client)} / {num(c.requests.server)}",
                equal_text(c),
                *(num(means.get(k), 2) for k in ("ttft", "itl", "e2e")),
            ]
        )
    headers = ["server", "prompt tokens client / server", "generation tokens", "requests", "equal"]
    out = h.table([*headers, "mean TTFT ms", "mean ITL ms", "mean E2E ms"], rows)
    off = [url for url, t in targets.items() if t.comparison.mismatch]
    if off:
        out += h.note("Client and server totals differ at " + ", ".join(off) + ".", "warn")
    return out


def phase_section(run: Run, name: str, phase: Phase) -> str:
    server = run.summary.server.phases.get(name)
    load = run.phase_config(name).get("load", {})
    mode = load.get("mode", "closed")
    how = (
        f"closed loop, {load.get('concurrency')} streams"
        if mode == "closed"
        else f"{mode} arrivals at {load.get('rate')} requests/s"
        + (
            f", at most {load.get('max_concurrency')} in flight"
            if load.get("max_concurrency")
            else ""
        )
    )
    return (
        f"<h2>Phase {h.esc(name)}</h2><p class='sub'>{h.esc(how)}</p>"
        + headline_cards(phase)
        + latency_table(phase, run.open_loop(name))
        + goodput_line(phase)
        + tokens_line(phase)
        + "<h3>Errors by kind</h3>"
        + errors_table(phase)
        + server_section(server)
    )


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"x{ratio:.2f}"


def comparison_table(run: Run, c: PhaseComparison) -> str:
    """The baseline's and the candidate's figures side by side, with their ratio."""
    base, cand = run.phases.get(c.baseline or ""), run.phases.get(c.candidate or "")

    def lat(p: Phase | None, metric: str, q: str) -> float | None:
        return None if p is None else p.latency(metric, q)

    def thr(p: Phase | None, key: str) -> float | None:
        return None if p is None else getattr(p.throughput, key)

    rows: list[list[h.Cell]] = []
    for metric, label in (("ttft", "TTFT"), ("itl", "ITL"), ("tpot", "TPOT"), ("e2e", "E2E")):
        for q in ("p50", "p99"):
            rows.append(
                [
                    f"{label} {q} (ms)",
                    num(lat(base, metric, q), 2),
                    num(lat(cand, metric, q), 2),
                    _ratio_text(c.ratio(f"{metric}_{q}")),
                ]
            )
    for metric, label in (
        ("requests_per_s", "requests/s"),
        ("prompt_tokens_per_s", "prompt tokens/s"),
        ("generation_tokens_per_s", "generation tokens/s"),
    ):
        rows.append(
            [
                label,
                num(thr(base, metric), 2),
                num(thr(cand, metric), 2),
                _ratio_text(c.ratio(metric)),
            ]
        )
    cached, frac = c.cached_tokens, c.cached_fraction
    rows.append(
        [
            "cached prompt tokens",
            f"{num(cached.baseline)} ({pct(frac.baseline)})",
            f"{num(cached.candidate)} ({pct(frac.candidate)})",
            "",
        ]
    )
    return h.table(["", str(c.baseline), str(c.candidate), "candidate / baseline"], rows)


def comparisons_section(run: Run) -> str:
    comps = run.summary.phase_comparisons
    if not comps:
        return ""
    out = ["<h2>Phase comparisons (cold vs warm)</h2>"]
    for key, c in comps.items():
        out.append(f"<h3>{h.esc(key)}</h3>")
        out.append(comparison_table(run, c))
    return "".join(out)


# The self-check table: one row per figure, one column per shard (summary.json keeps each
# shard's figures under client.shards[i]).
_SHARD_ROWS: tuple[tuple[str, Callable[[ShardCheck], str]], ...] = (
    ("event-loop lag p50 (ms)", lambda v: num(v.loop_lag_ms.p50, 2)),
    ("event-loop lag p99 (ms)", lambda v: num(v.loop_lag_ms.p99, 2)),
    ("event-loop lag max (ms)", lambda v: num(v.loop_lag_ms.max, 2)),
    ("event loop late, share of the time", lambda v: pct(v.loop_lag_ms.late_share)),
    ("event-loop thread CPU (cores)", lambda v: num(v.cpu.loop_cores, 2)),
    ("process CPU (cores)", lambda v: num(v.cpu.cores_used, 2)),
    ("process CPU, share of available cores", lambda v: pct(v.cpu.fraction_of_available)),
    ("waited for a CPU (run queue), share of the time", lambda v: pct(v.host.run_queue_wait_share)),
    ("host CPU pressure, share of the time", lambda v: pct(v.host.cpu_pressure_share)),
    ("host load per core", lambda v: num(v.host.load_per_core, 2)),
)


def client_section(client: ClientCheck) -> str:
    """The verdict with each cause's evidence, and every shard's figures."""
    if not client.shards:  # a summary of the first version 1 kept no shard figures
        return ""
    line = verdict_line(client).removeprefix("client self-check: ")
    if client.client_bound:
        verdict = h.note("The client itself was the bottleneck: " + line)
    elif client.causes:
        verdict = h.note(line)
    else:
        verdict = h.note("The client kept up: its timestamps can be trusted.", "good")
    shards = client.shards
    headers = ["figure", *(f"shard {i}" for i in range(len(shards)))]
    rows = [[label, *(get(v) for v in shards)] for label, get in _SHARD_ROWS]
    found = "".join(
        f"<li><b>{h.esc(c.cause)}</b> ({h.esc(c.where)}): {h.esc(c.evidence)}</li>"
        for c in client.causes
    )
    return (
        "<h2>Client self-check</h2>"
        + verdict
        + (f"<ul>{found}</ul>" if found else "")
        + h.table(headers, rows)
    )


def environment_section(summary: RunSummary) -> str:
    env = summary.environment
    out = "<h2>Versions and host</h2>"
    out += h.table(["package", "version"], [[k, str(v)] for k, v in sorted(env.versions.items())])
    host = msgspec.structs.asdict(env.host)
    rows: list[list[h.Cell]] = [[k, str(v)] for k, v in sorted(host.items())]
    out += h.table(["host", ""], rows, text_columns=(1,))
    if env.argv:
        out += f"<p>Command: <code>{h.esc(' '.join(map(str, env.argv)))}</code></p>"
    return out


def run_notes(summary: RunSummary) -> str:
    notes = []
    if summary.status != "completed":
        notes.append(f"Run status: {summary.status} {summary.reason or ''}".strip())
    notes.extend(f"warning: {w}" for w in summary.warnings)
    if not summary.run.streamed:
        notes.append(unstreamed_note(summary.run.api))
    if summary.client.client_bound:
        notes.append("The client itself was the bottleneck: see the client self-check.")
    return "".join(h.note(n) for n in notes)


def render_run_report(run: Run, plots: list[Plot], plot_note: str | None = None) -> str:
    s = run.summary
    info = s.run
    sub = (
        f"{s.status}; started {info.started_at}, {num(info.duration_s, 1)} s; "
        f"model {info.model} at {', '.join(info.urls)}"
        + (" (built-in simulator)" if info.simulator else "")
        + f"; seed {info.seed}, transport {info.transport}"
    )
    desc = s.scenario.get("description") or ""
    body = [
        f"<h1>loadgen run: {h.esc(run.name)}</h1>",
        f"<p class='sub'>{h.esc(sub)}</p>",
        f"<p>{h.esc(desc)}</p>" if desc else "",
        run_notes(s),
        *(phase_section(run, name, p) for name, p in run.phases.items()),
        comparisons_section(run),
        "<h2>Plots</h2>",
        h.note(plot_note) if plot_note else "",
        *(p.html() for p in plots),
        client_section(s.client),
        "<h2>Scenario as run</h2>",
        h.pre_json(s.scenario),
        environment_section(s),
        f"<footer>loadgen {h.esc(__version__)} &middot; results folder {h.esc(run.path)} "
        f"&middot; plots also in {PLOTS_DIR}/ as PNG</footer>",
    ]
    return h.page(f"loadgen {run.name} ({run.label})", "".join(body))


def save_plots(folder: Path, plots: list[Plot]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in plots:
        path = folder / f"{p.name}.png"
        path.write_bytes(p.png)
        paths.append(path)
    return paths


def write_run_report(run_dir: str | Path) -> Path:
    """Write `report.html` and `plots/*.png` into a results folder; returns the report's path."""
    run = load_run(run_dir)
    missing = matplotlib_missing()
    plots = run_plots(run)
    save_plots(run.path / PLOTS_DIR, plots)
    path = run.path / REPORT_FILE
    path.write_text(render_run_report(run, plots, missing), "utf-8")
    return path


def report_after_run(run_dir: str | Path, say: Callable[[str], None]) -> Path | None:
    """The end-of-run report: never raises, so a report failure cannot lose a run's results."""
    try:
        path = write_run_report(run_dir)
    except Exception as exc:  # any failure here must only warn
        say(
            f"warning: no HTML report ({type(exc).__name__}: {exc}); try `loadgen report {run_dir}`"
        )
        return None
    missing = matplotlib_missing()  # the HTML says so too, but few open it to find out
    say(f"report: {path}" + (f" ({missing})" if missing else ""))
    return path
