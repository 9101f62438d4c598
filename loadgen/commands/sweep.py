"""`loadgen sweep SCENARIO --concurrency 1,2,4,8` (or `--rate ...`): one run per level, each a
normal results folder inside the sweep folder, then sweep.json and report.html with the
throughput-latency curve and its knee."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadgen.commands.flags import MAX_WORKERS, integer, number


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", help="scenario file (TOML)")
    axis = parser.add_mutually_exclusive_group(required=True)
    axis.add_argument(
        "--concurrency",
        metavar="LIST",
        help="closed-loop streams per level, e.g. 1,2,4,8,16 (open loop: the in-flight cap)",
    )
    axis.add_argument(
        "--rate",
        metavar="LIST",
        help="open-loop requests/s per level, e.g. 1,2,4 (a closed scenario becomes poisson)",
    )
    target = parser.add_argument_group("target (as loadgen run)")
    target.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help="server base URL (repeatable); default: the scenario's, then OPENAI_BASE_URL, then "
        "one built-in simulator for the whole sweep",
    )
    target.add_argument("--model", help="model name")
    target.add_argument("--api-key-file", metavar="FILE", help="read the API key from FILE")
    target.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    target.add_argument("--transport", choices=("native", "aiohttp", "httpx"), default="native")
    load = parser.add_argument_group("each level (as loadgen run)")
    load.add_argument("--requests", type=integer(), help="requests per phase")
    load.add_argument("--duration", type=number(), help="seconds per phase")
    load.add_argument("--seed", type=integer(), help="seed for every random choice")
    load.add_argument("--max-tokens", type=integer(), help="output tokens per request")
    load.add_argument("--window", type=number(), help="throughput window in seconds")
    load.add_argument(
        "--workers",
        type=integer(0, MAX_WORKERS),
        default=0,
        metavar="N",
        help="worker processes per level (default: one per core, one left to a local simulator)",
    )
    load.add_argument(
        "--sim-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the built-in simulator (e.g. --sim-arg=--profile=fast)",
    )
    out = parser.add_argument_group("sweep")
    out.add_argument(
        "--output", metavar="DIR", help="parent folder of the sweep folder (default: results)"
    )
    out.add_argument("--sweep-dir", metavar="DIR", help="exact folder for this sweep")
    out.add_argument(
        "--phase", help="the phase whose figures make the curve (default: the scenario's first)"
    )
    out.add_argument(
        "--slo-attainment",
        type=number(0.0, 1.0, low_open=True),
        default=0.99,
        metavar="FRACTION",
        help="share of good requests for a level to meet the SLOs (default 0.99)",
    )
    out.add_argument(
        "--min-gain",
        type=number(0.0, 1.0),
        default=0.05,
        metavar="FRACTION",
        help="without SLOs: the throughput gain below which the curve has bent (default 0.05)",
    )


def execute(args: argparse.Namespace) -> int:
    from loadgen.errors import LoadgenError, user_error

    try:
        return _sweep(args)
    except (LoadgenError, BaseExceptionGroup) as exc:
        error = user_error(exc)
        if error is None:
            raise
        print(f"loadgen: {error}", file=sys.stderr)
        return 2


def _say(message: str) -> None:
    from loadgen.safetext import for_terminal

    print(for_terminal(message), file=sys.stderr, flush=True)


def _sweep(args: argparse.Namespace) -> int:
    import dataclasses
    import time
    from datetime import UTC, datetime

    import anyio

    from loadgen import lifeline
    from loadgen.commands.observe import ConsoleObserver
    from loadgen.errors import LoadgenError
    from loadgen.orchestrator import RunOptions, local_simulator, run_scenario
    from loadgen.results.files import new_run_dir, write_json
    from loadgen.results.html import num
    from loadgen.results.report_sweep import SWEEP_FILE, levels_text, write_sweep_report
    from loadgen.results.schema import Level, Sweep
    from loadgen.safetext import for_terminal
    from loadgen.scenario import Overrides, apply_overrides, load_scenario, scenario_to_json
    from loadgen.shards import worker_count
    from loadgen.sweep import (
        Axis,
        find_knee,
        level_dir_name,
        level_from_summary,
        level_text,
        parse_levels,
        sweep_document,
    )
    from loadgen.target import urls_from_environment

    # `--concurrency ""` is given (and empty): test for None, not for truth.
    axis: Axis = "concurrency" if args.concurrency is not None else "rate"
    try:
        levels = parse_levels(args.concurrency if axis == "concurrency" else args.rate, axis)
    except ValueError as exc:
        raise LoadgenError(str(exc)) from None
    base = load_scenario(
        args.scenario,
        Overrides(
            urls=tuple(args.url) if args.url else None,
            model=args.model,
            requests=args.requests,
            duration=args.duration,
            seed=args.seed,
            max_tokens=args.max_tokens,
            output=args.output,
            api_key_file=args.api_key_file,
            insecure=args.insecure,
            window=args.window,
            progress=False,
        ),
    )
    phase = args.phase or base.phases[0].name
    if phase not in {p.name for p in base.phases}:
        raise LoadgenError(f"--phase: the scenario has no phase {phase!r}")
    folder = (
        Path(args.sweep_dir)
        if args.sweep_dir
        else new_run_dir(base.output.directory, f"{base.name}-sweep")
    )
    folder.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC).isoformat()
    t0 = time.monotonic()
    slo = {k: v for k, v in dataclasses.asdict(base.slo).items() if v}
    done: list[Level] = []
    status = "completed"
    simulator = None
    urls = urls_from_environment(base.target)
    if not urls:
        # One simulator for every level: levels differ only in load, never in server start-up.
        simulator = local_simulator(args.sim_arg, folder)
        urls = (simulator.start(),)
        _say(f"no URL given: started the built-in vLLM simulator at {urls[0]} for the sweep")
        base = apply_overrides(base, Overrides(urls=urls))

    def save() -> Sweep:
        knee = find_knee(done, axis, slo, attainment=args.slo_attainment, min_gain=args.min_gain)
        doc = sweep_document(
            scenario=scenario_to_json(base),
            axis=axis,
            phase=phase,
            levels=done,
            knee=knee,
            attainment=args.slo_attainment,
            min_gain=args.min_gain,
            simulator=simulator is not None,
            urls=urls,
            started_at=started_at,
            duration_s=time.monotonic() - t0,
            status=status,
        )
        write_json(folder / SWEEP_FILE, doc)
        return doc

    backend_options = lifeline.backend_options()
    try:
        for level in levels:
            over = (
                Overrides(concurrency=int(level))
                if axis == "concurrency"
                else Overrides(rate=level)
            )
            scenario = apply_overrides(base, over)
            name = level_dir_name(axis, level)
            _say(f"== {axis} {level_text(level)} -> {folder / name}")
            # The run cannot tell our simulator is local: leave it its core as `run` would.
            workers = args.workers or (worker_count(scenario, 0, True) if simulator else 0)
            options = RunOptions(
                run_dir=str(folder / name), transport=args.transport, workers=workers
            )
            result = anyio.run(
                run_scenario,
                scenario,
                options,
                _say,
                ConsoleObserver(_say),
                backend_options=backend_options,
            )
            if phase in result.summary.phases:
                lv = level_from_summary(level, name, result.summary, phase)
                done.append(lv)
                _say(
                    f"   {num(lv.generation_tokens_per_s)} generation tokens/s, "
                    f"TTFT p99 {num(lv.ttft_ms.p99)} ms, {lv.failed} failed"
                )
            if result.status != "completed":
                status = result.status
                _say(f"stopping the sweep: level {level_text(level)} was {result.status}")
                break
            save()
    finally:
        if simulator is not None:
            simulator.stop()
    doc = save()
    try:
        report = write_sweep_report(folder)
    except Exception as exc:  # the levels' results are saved; the page can be made later
        _say(f"warning: no sweep report ({type(exc).__name__}: {exc})")
    else:
        _say(f"report: {report}")
    if doc.levels:
        print(for_terminal(levels_text(doc)))
    print(for_terminal(doc.knee.sentence))
    print(f"sweep: {folder}")
    return 0 if status == "completed" else 130
