"""The console summary of a run, rendered from summary.json alone (so any saved run re-renders)."""

from __future__ import annotations

from collections.abc import Mapping

from loadgen.metrics.selfcheck import verdict_line
from loadgen.results.console import table
from loadgen.results.html import num, pct
from loadgen.results.schema import Comparison, Phase, PhaseServer, PhaseTarget, RunSummary

_PERCENTILES = ("p50", "p90", "p95", "p99", "p99.9", "max")
_LATENCY_ROWS = (
    ("ttft", "TTFT"),
    ("ttft_intended", "TTFT from intended send"),
    ("itl", "ITL"),
    ("itl_chunk", "ITL per chunk (vLLM bench)"),
    ("tpot", "TPOT"),
    ("e2e", "E2E"),
    ("e2e_intended", "E2E from intended send"),
    ("schedule_lag", "schedule lag"),
)


def render_phase(name: str, p: Phase, open_loop: bool) -> str:
    req = p.requests
    out = [
        f"== phase {name}: {req.total} requests, {req.succeeded} succeeded, "
        f"{req.failed} failed, over {num(p.span.duration_s, 2)} s"
    ]
    rows = []
    for key, label in _LATENCY_ROWS:
        lat = p.latency_ms.get(key)
        if not lat or not lat.count:
            continue
        if key in ("ttft_intended", "e2e_intended", "schedule_lag") and not open_loop:
            continue  # in closed loop these equal the plain figures (lag is zero)
        rows.append([label, *(num(lat.quantile(q), 2) for q in _PERCENTILES), num(lat.count)])
    if rows:
        out.append(table(["latency (ms)", *_PERCENTILES, "samples"], rows))
    thr = p.throughput
    out.append(
        "throughput: "
        f"{num(thr.requests_per_s, 2)} req/s, "
        f"prompt {num(thr.prompt_tokens_per_s)} tok/s, "
        f"generation {num(thr.generation_tokens_per_s)} tok/s"
    )
    out += _tokens_lines(p)
    out += _load_lines(p)
    out += _outcome_lines(p)
    out += _window_lines(p)
    return "\n".join(out)


def _tokens_lines(p: Phase) -> list[str]:
    tok = p.tokens
    if tok.cached_reported_requests:
        cached = f", cached {num(tok.cached)} ({pct(tok.cached_fraction)})"
    elif p.requests.succeeded:  # no usage at all says nothing about the server's flags
        cached = ", cached not reported (vLLM: --enable-prompt-tokens-details)"
    else:
        cached = ""
    out = [
        f"tokens (server usage): prompt {num(tok.prompt)}, generation {num(tok.generation)}{cached}"
    ]
    if tok.missing_usage_requests:
        out.append(
            f"WARNING: {tok.missing_usage_requests} requests completed without usage: their tokens are "
            "not counted (is stream_options.include_usage dropped by a proxy?)"
        )
    return out


def _load_lines(p: Phase) -> list[str]:
    conc = p.concurrency
    against = ""
    if conc.target:  # closed-loop streams, or an open loop's cap
        against = f" of {num(conc.target)} asked ({pct(conc.mean_over_target)} in flight)"
    out = [f"concurrency: peak {num(conc.peak)}, mean {num(conc.mean)}{against}"]
    work = p.workload
    if work is not None and work.distinct_bodies is not None:
        out.append(
            f"workload: {num(work.distinct_images)} distinct images, "
            f"{num(work.distinct_bodies)} distinct bodies in {num(p.requests.total)} requests"
        )
    if work is not None and work.waited_for_body:
        out.append(
            f"WARNING: {num(work.waited_for_body)} requests waited for their images to be built "
            f"({work.body_wait_s:.1f} s in all, counted as schedule lag): the client's image "
            "builder, not the server, limited the load (use a pool_size, or fewer streams)"
        )
    good = p.goodput
    if good:
        slo = ", ".join(f"{k} <= {v:g}" for k, v in good.slo.items())
        out.append(
            f"goodput ({slo}): {good.count} requests ({pct(good.fraction)}), {num(good.requests_per_s, 2)} req/s"
        )
    return out


def _outcome_lines(p: Phase) -> list[str]:
    out = []
    failures = {k: v for k, v in p.outcomes.items() if v and k != "ok"}
    if failures:
        out.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
        for kind, examples in p.errors.items():
            if examples:
                out.append(f"  {kind}: {examples[0].error}")
    return out


def _window_lines(p: Phase) -> list[str]:
    windows = p.windows.series
    if not windows:
        return []
    out = [
        f"windows of {p.windows.window_s:g} s (prompt tokens counted at first token, "
        "as vLLM's log):"
    ]
    # vLLM 0.32's log line counts only the computed part of the prompt (prompt - cached).
    has_cached = any(w.cached_prompt_tokens for w in windows)
    headers = ["window", "prompt tok/s", "gen tok/s", "requests", "concurrency"]
    if has_cached:
        headers.insert(2, "computed prompt tok/s")
    wrows = []
    for w in windows:
        row = [
            window_label(w.start, w.end),
            num(w.prompt_tokens_per_s),
            num(w.generation_tokens_per_s),
            num(w.requests),
            num(w.mean_concurrency),
        ]
        if has_cached:
            row.insert(2, num(w.computed_prompt_tokens_per_s))
        wrows.append(row)
    out.append(table(headers, wrows))
    return out


def _mismatches(cmp_: Comparison) -> str:
    return ", ".join(
        f"{k}: client {v.client} vs server {v.server}"
        for k, v in cmp_.figures().items()
        if v.match is False
    )


def equal_text(cmp_: Comparison) -> str:
    """ "NO" when a figure differs, "-" when the server reported none, else "yes"."""
    if cmp_.mismatch:
        return "NO"
    known = [v.match for v in cmp_.figures().values()]
    return "-" if all(m is None for m in known) else "yes"


def render_targets(targets: Mapping[str, PhaseTarget]) -> str:
    """One row per server: the client's totals for it beside its /metrics, and its own means."""
    rows = []
    for url, t in targets.items():
        c, means = t.comparison, t.delta.mean_ms
        rows.append(
            [
                url,
                f"{num(c.prompt_tokens.client)} / {num(c.prompt_tokens.server)}",
                f"{num(c.generation_tokens.client)} / {num(c.generation_tokens.server)}",
                f"{num(c.requests.client)} / {num(c.requests.server)}",
                equal_text(c),
                num(means.get("ttft"), 2),
                num(means.get("itl"), 2),
                num(means.get("e2e"), 2),
            ]
        )
    headers = ["server", "prompt client / server", "generation", "requests", "equal"]
    return table([*headers, "mean TTFT ms", "mean ITL ms", "mean E2E ms"], rows)


def render_server(name: str, server: PhaseServer) -> str:
    delta = server.delta
    cmp_ = server.comparison
    targets = server.targets
    over = f" (total of {len(targets)} servers)" if len(targets) > 1 else ""
    lines = [
        f"server /metrics over phase {name}{over}: prompt {num(delta.prompt_tokens)}, "
        f"generation {num(delta.generation_tokens)} tokens, {num(delta.requests_finished)} requests; "
        f"prefix cache hit rate {pct(delta.prefix_cache.hit_rate)}, "
        f"MM cache hit rate {pct(delta.mm_cache.hit_rate)}"
    ]
    if len(targets) > 1:
        lines.append(render_targets(targets))
    off = [url for url, t in targets.items() if t.comparison.mismatch]
    if cmp_.mismatch or off:
        where = f" at {', '.join(off)}" if len(targets) > 1 and off else ""
        pairs = _mismatches(cmp_) or "; ".join(
            f"{url}: {_mismatches(targets[url].comparison)}" for url in off
        )
        note = cmp_.note or next((targets[u].comparison.note for u in off), "")
        lines.append(f"WARNING: client and server token totals differ{where} ({pairs}). {note}")
    else:
        lines.append("client token totals match the server's counters exactly")
    lines.extend(f"note: {n}" for n in delta.notes)
    return "\n".join(lines)


def unstreamed_note(api: str) -> str:
    """What a run of an unstreamed endpoint could not measure, said wherever its figures are."""
    return f"not streamed (api {api}): answers read whole, so TTFT = E2E; no ITL, no TPOT"


def distributed_line(summary: RunSummary) -> str:
    """Where the shards ran on a cluster, each node's self-check, and how well their clocks
    agreed with the driver's."""
    d = summary.distributed
    assert d is not None
    nodes = "; ".join(
        f"{n.node}: shards {', '.join(map(str, n.shards))}"
        + (f" ({', '.join(n.causes)})" if n.causes else " (clean)")
        for n in summary.client.nodes
    )
    worst = d.worst_clock_uncertainty_s
    clocks = f", clocks within ±{worst * 1e3:.2f} ms of the driver's" if worst is not None else ""
    return f"{d.backend} shards on {d.nodes} node(s){clocks}: {nodes}"


def render_summary(summary: RunSummary) -> str:
    run = summary.run
    out = [
        f"loadgen run {run.name}: {summary.status}"
        + (f" ({summary.reason})" if summary.reason else "")
        + f", model {run.model} at {', '.join(run.urls)}"
        + (" (built-in simulator)" if run.simulator else "")
    ]
    if not run.streamed:
        out.append(unstreamed_note(run.api))
    for name, phase in summary.phases.items():
        load = summary.phase_config(name).get("load", {})
        open_loop = load.get("mode", "closed") != "closed"
        out.append("")
        out.append(render_phase(name, phase, open_loop))
        server = summary.server.phases.get(name)
        if server:
            out.append(render_server(name, server))
    for key, c in summary.phase_comparisons.items():
        out.append("")
        out.append(
            f"{key}: TTFT p50 {num(c.ttft_p50_ms.baseline, 2)} -> {num(c.ttft_p50_ms.candidate, 2)} ms "
            f"(x{num(c.ttft_p50_ratio, 2)}), cached tokens {num(c.cached_tokens.baseline)} -> "
            f"{num(c.cached_tokens.candidate)}"
        )
    if summary.client.shards:  # every run has one; a summary of the first version 1 had none
        out.append("")
        out.append(verdict_line(summary.client))
    if summary.distributed is not None:
        out.append(distributed_line(summary))
    out.extend(f"warning: {warning}" for warning in summary.warnings)
    return "\n".join(out)


def window_label(start: float, end: float) -> str:
    """The span a window measured: whole seconds when it starts and ends on them, else tenths
    (the phase's windows start at its start instant; the last is cut at the last end), so a cut
    window never reads "23-23 s" and "58-60 s" is not a 10 s window."""
    if all(abs(t - round(t)) < 0.05 for t in (start, end)) and round(end) > round(start):
        return f"{start:.0f}-{end:.0f} s"
    return f"{start:.1f}-{end:.1f} s"
