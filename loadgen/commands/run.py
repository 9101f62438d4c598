"""`loadgen run [SCENARIO] [flags]`: replay a scenario file, or a scenario made of flags alone,
against an endpoint (or the built-in simulator)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from loadgen.commands.flags import (
    MAX_WORKERS,
    add_target_flags,
    add_workload_flags,
    command_scenario,
    integer,
    number,
    say,
    scenario_overrides,
)

if TYPE_CHECKING:
    from loadgen.config import Scenario


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scenario",
        nargs="?",
        help="scenario file (TOML), e.g. scenarios/caption-30.toml; without one, the run is the "
        "built-in defaults and the flags, named 'flags' (--requests or --duration required)",
    )
    add_target_flags(parser, "target", "the built-in simulator")
    load = parser.add_argument_group("load")
    load.add_argument(
        "--mode", choices=("closed", "constant", "poisson", "gamma"), help="load mode"
    )
    load.add_argument(
        "--concurrency",
        "--max-concurrency",
        dest="concurrency",
        type=integer(),
        help="closed loop: number of streams; open loop: the cap on requests in flight "
        "(--max-concurrency: vLLM bench's spelling, the same cap)",
    )
    load.add_argument(
        "--rate",
        "--request-rate",
        dest="rate",
        type=number(),
        help="open loop: requests per second (switches a closed scenario to poisson)",
    )
    load.add_argument(
        "--requests", "--num-prompts", dest="requests", type=integer(), help="requests per phase"
    )
    load.add_argument("--duration", type=number(), help="seconds per phase")
    load.add_argument("--seed", type=integer(), help="seed for every random choice")
    load.add_argument(
        "--workers",
        type=integer(0, MAX_WORKERS),
        default=0,
        help="worker processes sharing the load (default: one per core, less one for a local "
        "simulator, at most 8; 1 = run in this process)",
    )
    load.add_argument("--max-tokens", type=integer(), help="output tokens per request")
    add_workload_flags(parser)
    out = parser.add_argument_group("output")
    out.add_argument(
        "--name",
        help="the scenario's name, which names the results folder (default: 'flags' "
        "without a scenario file)",
    )
    out.add_argument(
        "--save-scenario",
        metavar="FILE",
        help="write the run's scenario, every key, as a new TOML file before it starts (to replay "
        "or diff it; an existing FILE is refused)",
    )
    out.add_argument(
        "--output", metavar="DIR", help="parent folder of the results folder (default: results)"
    )
    out.add_argument(
        "--run-dir",
        metavar="DIR",
        help="exact results folder for this run; must be empty or new (see --overwrite)",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="let --run-dir hold an earlier run: its files are deleted first (a folder holding "
        "files loadgen did not write is refused)",
    )
    out.add_argument(
        "--window",
        type=number(),
        help="throughput window in seconds (default 10, vLLM's stats interval)",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    out.add_argument(
        "--json", action="store_true", help="print the summary as JSON instead of tables"
    )
    out.add_argument("--no-report", action="store_true", help="do not write report.html and plots/")
    parser.add_argument(
        "--sim-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the built-in simulator when it is started (e.g. --sim-arg=--profile=fast)",
    )
    parser.add_argument(
        "--serve-images",
        action="store_true",
        help="serve the scenario's image folder over HTTP from this host and send the images' "
        "URLs, not data URLs: the target fetches them (docs/workload.md, 'Images by URL')",
    )


def execute(args: argparse.Namespace) -> int:
    import anyio
    import msgspec
    import orjson

    from loadgen import lifeline
    from loadgen.commands.observe import ConsoleObserver
    from loadgen.errors import LoadgenError, user_error
    from loadgen.orchestrator import RunOptions, exit_status, run_scenario
    from loadgen.results.report_text import render_summary
    from loadgen.safetext import for_terminal

    try:
        scenario = command_scenario(args.scenario, scenario_overrides(args))
        if args.save_scenario:
            _save(scenario, args.save_scenario)
        options = RunOptions(
            run_dir=args.run_dir,
            transport=args.transport,
            sim_args=tuple(args.sim_arg),
            workers=args.workers,
            overwrite=args.overwrite,
        )
        observer = ConsoleObserver(say, report=not args.no_report)
        result = anyio.run(
            run_scenario,
            scenario,
            options,
            say,
            observer,
            backend_options=lifeline.backend_options(),
        )
    except (LoadgenError, BaseExceptionGroup) as exc:
        error = user_error(exc)
        if error is None:
            raise
        say(f"loadgen: {error}")
        return 2
    if args.json:
        doc = msgspec.to_builtins(result.summary, enc_hook=str)
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        say(f"results: {result.run_dir}")
    else:
        print(for_terminal(render_summary(result.summary)))
        print(f"results: {result.run_dir}")
    code, why = exit_status(result)
    if why:
        say(f"loadgen: {why}")
    return code


def _save(scenario: Scenario, path: str) -> None:
    from loadgen.errors import LoadgenError
    from loadgen.scenario_toml import save_scenario

    try:
        saved = save_scenario(scenario, path)
    except LoadgenError as exc:
        raise LoadgenError(f"--save-scenario: {exc}") from None
    say(f"scenario saved: {saved}")
