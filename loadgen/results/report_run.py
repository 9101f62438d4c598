"""`report.html` of one run, rendered from its results folder alone (summary.json and the
histogram logs), with the plots also saved as `plots/*.png` beside it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen import __version__
from loadgen.metrics.selfcheck import verdict_line
from loadgen.results import html as h
from loadgen.results.html import num, pct
from loadgen.results.rundir import Run, load_run

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
        plots.PhaseSpan(name, float(p.get("started") or 0.0), float(p.get("ended") or 0.0))
        for name, p in run.phases.items()
    ]


def time_plots(run: Run) -> list[Plot]:
    from loadgen.results import plots

    spans = _spans(run)
    windows = [p.get("windows", {}).get("series", []) for p in run.phases.values()]
    window_s = next(
        (float(p["windows"]["window_s"]) for p in run.phases.values() if p.get("windows")), 10.0
    )
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
    server = run.summary.get("server", {}).get("timeseries") or []
    png = plots.load_over_time(spans, windows, server)
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
    server = run.summary.get("server", {}).get("phases", {})
    rates = {
        name: {
            "prefix": s["delta"].get("prefix_cache", {}).get("hit_rate"),
            "mm": s["delta"].get("mm_cache", {}).get("hit_rate"),
        }
        for name, s in server.items()
        if s.get("delta")
    }
    png = plots.cache_hit_rates(rates) if rates else None
    if png:
        out.append(Plot("cache-hit-rates", png, "cache hit rates per phase"))
    for key, c in run.summary.get("phase_comparisons", {}).items():
        png = plots.ratio_bars(
            f"{c.get('candidate')} / {c.get('baseline')}: below 1 faster (latency), above 1 more per second",
            comparison_ratios(c),
            higher_is_better=frozenset(("requests/s", "prompt tokens/s", "generation tokens/s")),
        )
        if png:
            out.append(Plot(f"compare-{_slug(key)}", png, f"phase comparison {key}"))
    return out


def comparison_ratios(c: dict[str, Any]) -> dict[str, float | None]:
    labels = {
        "ttft_p50_ratio": "TTFT p50",
        "ttft_p99_ratio": "TTFT p99",
        "itl_p50_ratio": "ITL p50",
        "itl_p99_ratio": "ITL p99",
        "tpot_p50_ratio": "TPOT p50",
        "tpot_p99_ratio": "TPOT p99",
        "e2e_p50_ratio": "E2E p50",
        "e2e_p99_ratio": "E2E p99",
        "requests_per_s_ratio": "requests/s",
        "prompt_tokens_per_s_ratio": "prompt tokens/s",
        "generation_tokens_per_s_ratio": "generation tokens/s",
    }
    return {label: c.get(key) for key, label in labels.items()}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")


def run_plots(run: Run) -> list[Plot]:
    if matplotlib_missing():
        return []
    return [*spectrum_plots(run), *time_plots(run), *cache_plots(run)]


# ---- the page -------------------------------------------------------------------------------


def latency_table(phase: dict[str, Any], open_loop: bool) -> str:
    rows = []
    for key, label, open_only in _LATENCY_ROWS:
        lat = phase.get("latency_ms", {}).get(key)
        if not lat or not lat.get("count") or (open_only and not open_loop):
            continue
        rows.append([label, *(num(lat.get(q), 2) for q in _PERCENTILES), num(lat.get("count"))])
    if not rows:
        return "<p>No latency samples.</p>"
    return h.table(["latency (ms)", *_PERCENTILES, "samples"], rows)


def headline_cards(phase: dict[str, Any]) -> str:
    req = phase["requests"]
    thr = phase["throughput"]
    good = phase.get("goodput")
    items = [
        ("requests", num(req["total"])),
        ("succeeded", num(req["succeeded"])),
        ("failed", num(req["failed"])),
        ("requests/s", num(thr.get("requests_per_s"), 2)),
        ("prompt tokens/s", num(thr.get("prompt_tokens_per_s"))),
        ("generation tokens/s", num(thr.get("generation_tokens_per_s"))),
    ]
    if good:
        items.append(("goodput", f"{num(good.get('requests_per_s'), 2)} req/s"))
        items.append(("requests meeting the SLOs", pct(good.get("fraction"))))
    items.append(("peak concurrency", num(phase.get("concurrency", {}).get("peak"))))
    return h.cards(items)


def errors_table(phase: dict[str, Any]) -> str:
    failures = {k: v for k, v in phase.get("outcomes", {}).items() if v and k != "ok"}
    if not failures:
        return h.note("No errors: every request completed.", "good")
    rows: list[list[h.Cell]] = []
    for kind, count in sorted(failures.items(), key=lambda kv: -kv[1]):
        examples = phase.get("errors", {}).get(kind) or []
        rows.append([kind, num(count), examples[0]["error"] if examples else ""])
    return h.table(["outcome", "requests", "first message"], rows, text_columns=(2,))


def goodput_line(phase: dict[str, Any]) -> str:
    good = phase.get("goodput")
    if not good:
        return "<p>No SLO set in the scenario ([slo]), so no goodput.</p>"
    slo = ", ".join(
        f"{k.removesuffix('_ms').upper()} &le; {good['slo'][k]:g} ms"
        for k in ("ttft_ms", "tpot_ms", "e2e_ms")
        if good["slo"].get(k)
    )
    return (
        f"<p>Goodput ({slo}; TTFT and E2E from the intended send time): "
        f"{num(good['count'])} requests ({pct(good['fraction'])}), "
        f"{num(good['requests_per_s'], 2)} requests/s.</p>"
    )


def tokens_line(phase: dict[str, Any]) -> str:
    tok = phase["tokens"]
    cached = ""
    if tok.get("cached_reported_requests"):
        cached = f", cached {num(tok['cached'])} ({pct(tok.get('cached_fraction'))})"
    elif phase.get("requests", {}).get("succeeded"):  # no usage at all: nothing to say
        cached = ", cached tokens not reported by the server"
    conc = phase.get("concurrency", {})
    against = ""
    if conc.get("target"):  # closed-loop streams, or an open loop's cap
        against = f" of {num(conc['target'])} asked ({pct(conc.get('mean_over_target'))} in flight)"
    text = (
        f"Tokens (server usage): prompt {num(tok['prompt'])}, generation {num(tok['generation'])}"
        f"{cached}. Measured span {num(phase['span'].get('duration_s'), 2)} s; mean concurrency "
        f"{num(conc.get('mean'), 2)}{against}."
    )
    out = f"<p>{h.esc(text)}</p>"
    if tok.get("missing_usage_requests"):
        out += h.note(
            f"{tok['missing_usage_requests']} requests completed without usage: their tokens are "
            "not counted (is stream_options.include_usage dropped by a proxy?)"
        )
    return out


def server_section(server: dict[str, Any] | None) -> str:
    if not server:
        return ""
    delta = server["delta"]
    cmp_ = server.get("comparison", {})
    rows: list[list[h.Cell]] = []
    for key, label in (
        ("prompt_tokens", "prompt tokens"),
        ("generation_tokens", "generation tokens"),
        ("requests", "requests with usage / finished"),
    ):
        c = cmp_.get(key) or {}
        match = c.get("match")
        rows.append(
            [
                label,
                num(c.get("client")),
                num(c.get("server")),
                "-" if match is None else ("yes" if match else "NO"),
            ]
        )
    table = h.table(["server /metrics vs client", "client", "server", "equal"], rows)
    caches = h.table(
        ["server figure", "value"],
        [
            ["prefix cache hit rate (tokens)", pct(delta.get("prefix_cache", {}).get("hit_rate"))],
            ["MM cache hit rate (items)", pct(delta.get("mm_cache", {}).get("hit_rate"))],
            ["preemptions", num(delta.get("preemptions"))],
        ],
    )
    means = [(k, v) for k, v in (delta.get("mean_ms") or {}).items() if v is not None]
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
    targets = server.get("targets") or {}
    out = (
        "<h3>Server side (/metrics over the phase"
        + (f", total of {len(targets)} servers" if len(targets) > 1 else "")
        + ")</h3>"
        + f'<div class="row">{table}{caches}</div>'
        + server_means
    )
    if len(targets) > 1:
        out += targets_table(targets)
    if cmp_.get("mismatch"):
        out += h.note(
            "Client and server token totals differ. " + str(cmp_.get("note") or ""), "warn"
        )
    for n in delta.get("notes") or []:
        out += h.note(str(n))
    return out


def targets_table(targets: dict[str, Any]) -> str:
    """One row per server: the client's totals for it beside its /metrics, and its own means."""

    def pair(c: dict[str, Any], key: str) -> str:
        v = c.get(key) or {}
        return f"{num(v.get('client'))} / {num(v.get('server'))}"

    rows: list[list[h.Cell]] = []
    for url, t in targets.items():
        c, means = t.get("comparison") or {}, (t.get("delta") or {}).get("mean_ms") or {}
        known = [v.get("match") for v in c.values() if isinstance(v, dict)]
        equal = "NO" if c.get("mismatch") else ("-" if all(m is None for m in known) else "yes")
        rows.append(
            [
                url,
                pair(c, "prompt_tokens"),
                pair(c, "generation_tokens"),
                pair(c, "requests"),
                equal,
                *(num(means.get(k), 2) for k in ("ttft", "itl", "e2e")),
            ]
        )
    headers = ["server", "prompt tokens client / server", "generation tokens", "requests", "equal"]
    out = h.table([*headers, "mean TTFT ms", "mean ITL ms", "mean E2E ms"], rows)
    off = [url for url, t in targets.items() if (t.get("comparison") or {}).get("mismatch")]
    if off:
        out += h.note("Client and server totals differ at " + ", ".join(off) + ".", "warn")
    return out


def phase_section(run: Run, name: str, phase: dict[str, Any]) -> str:
    server = run.summary.get("server", {}).get("phases", {}).get(name)
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


def comparisons_section(run: Run) -> str:
    comps = run.summary.get("phase_comparisons") or {}
    if not comps:
        return ""
    out = ["<h2>Phase comparisons (cold vs warm)</h2>"]
    for key, c in comps.items():
        base, cand = run.phases.get(c.get("baseline"), {}), run.phases.get(c.get("candidate"), {})
        rows: list[list[h.Cell]] = []
        for metric, label in (("ttft", "TTFT"), ("itl", "ITL"), ("tpot", "TPOT"), ("e2e", "E2E")):
            for q in ("p50", "p99"):
                ratio = c.get(f"{metric}_{q}_ratio")
                rows.append(
                    [
                        f"{label} {q} (ms)",
                        num(base.get("latency_ms", {}).get(metric, {}).get(q), 2),
                        num(cand.get("latency_ms", {}).get(metric, {}).get(q), 2),
                        "-" if ratio is None else f"x{ratio:.2f}",
                    ]
                )
        for metric, label in (
            ("requests_per_s", "requests/s"),
            ("prompt_tokens_per_s", "prompt tokens/s"),
            ("generation_tokens_per_s", "generation tokens/s"),
        ):
            ratio = c.get(f"{metric}_ratio")
            rows.append(
                [
                    label,
                    num(base.get("throughput", {}).get(metric), 2),
                    num(cand.get("throughput", {}).get(metric), 2),
                    "-" if ratio is None else f"x{ratio:.2f}",
                ]
            )
        cached = c.get("cached_tokens", {})
        frac = c.get("cached_fraction", {})
        rows.append(
            [
                "cached prompt tokens",
                f"{num(cached.get('baseline'))} ({pct(frac.get('baseline'))})",
                f"{num(cached.get('candidate'))} ({pct(frac.get('candidate'))})",
                "",
            ]
        )
        out.append(f"<h3>{h.esc(key)}</h3>")
        out.append(
            h.table(
                ["", str(c.get("baseline")), str(c.get("candidate")), "candidate / baseline"], rows
            )
        )
    return "".join(out)


def client_section(client: dict[str, Any]) -> str:
    """The verdict with each cause's evidence, and every shard's figures (summary.json keeps them
    under `client.shards[i]`)."""
    if not client:
        return ""
    causes = client.get("causes") or []
    line = verdict_line(client).removeprefix("client self-check: ")
    if client.get("client_bound"):
        verdict = h.note("The client itself was the bottleneck: " + line)
    elif causes:
        verdict = h.note(line)
    else:
        verdict = h.note("The client kept up: its timestamps can be trusted.", "good")
    shards = client.get("shards") or []
    headers = ["figure", *(f"shard {i}" for i in range(len(shards)))]

    def row(label: str, get: Callable[[dict[str, Any]], str]) -> list[str]:
        return [label, *(get(v) for v in shards)]

    def lag(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda v: num((v.get("loop_lag_ms") or {}).get(key), 2)

    rows = [
        row("event-loop lag p50 (ms)", lag("p50")),
        row("event-loop lag p99 (ms)", lag("p99")),
        row("event-loop lag max (ms)", lag("max")),
        row("event loop late, share of the time", lambda v: pct((v.get("loop_lag_ms") or {}).get("late_share"))),
        row("event-loop thread CPU (cores)", lambda v: num((v.get("cpu") or {}).get("loop_cores"), 2)),
        row("process CPU (cores)", lambda v: num((v.get("cpu") or {}).get("cores_used"), 2)),
        row("process CPU, share of available cores", lambda v: pct((v.get("cpu") or {}).get("fraction_of_available"))),
        row("waited for a CPU (run queue), share of the time", lambda v: pct((v.get("host") or {}).get("run_queue_wait_share"))),
        row("host CPU pressure, share of the time", lambda v: pct((v.get("host") or {}).get("cpu_pressure_share"))),
        row("host load per core", lambda v: num((v.get("host") or {}).get("load_per_core"), 2)),
    ]  # fmt: skip
    found = "".join(
        f"<li><b>{h.esc(c.get('cause', ''))}</b> ({h.esc(c.get('where', ''))}): "
        f"{h.esc(c.get('evidence', ''))}</li>"
        for c in causes
    )
    return (
        "<h2>Client self-check</h2>"
        + verdict
        + (f"<ul>{found}</ul>" if found else "")
        + h.table(headers, rows)
    )


def environment_section(summary: dict[str, Any]) -> str:
    env = summary.get("environment") or {}
    versions = env.get("versions") or {}
    host = env.get("host") or {}
    out = "<h2>Versions and host</h2>"
    out += h.table(["package", "version"], [[k, str(v)] for k, v in sorted(versions.items())])
    out += h.table(["host", ""], [[k, str(v)] for k, v in host.items()], text_columns=(1,))
    if env.get("argv"):
        out += f"<p>Command: <code>{h.esc(' '.join(map(str, env['argv'])))}</code></p>"
    return out


def run_notes(summary: dict[str, Any]) -> str:
    notes = []
    if summary.get("status") != "completed":
        notes.append(f"Run status: {summary.get('status')} {summary.get('reason') or ''}".strip())
    notes.extend(f"warning: {w}" for w in summary.get("warnings") or [])
    if (summary.get("client") or {}).get("client_bound"):
        notes.append("The client itself was the bottleneck: see the client self-check.")
    return "".join(h.note(n) for n in notes)


def render_run_report(run: Run, plots: list[Plot], plot_note: str | None = None) -> str:
    s = run.summary
    info = s.get("run", {})
    sub = (
        f"{s.get('status')}; started {info.get('started_at')}, {num(info.get('duration_s'), 1)} s; "
        f"model {info.get('model')} at {', '.join(info.get('urls') or [])}"
        + (" (built-in simulator)" if info.get("simulator") else "")
        + f"; seed {info.get('seed')}, transport {info.get('transport')}"
    )
    desc = s.get("scenario", {}).get("description") or ""
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
        client_section(s.get("client") or {}),
        "<h2>Scenario as run</h2>",
        h.pre_json(s.get("scenario", {})),
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
