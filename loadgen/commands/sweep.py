"""`loadgen sweep SCENARIO --concurrency 1,2,4,8` (or `--rate ...`): one run per level, each a
normal results folder inside the sweep folder, then sweep.json and report.html with the
throughput-latency curve and its knee."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
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
    from loadgen.results.schema import Level, Sweep
    from loadgen.sim.process import SimulatorProcess


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scenario",
        nargs="?",
        help="scenario file (TOML); without one, the built-in defaults and the flags (as loadgen "
        "run)",
    )
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
    add_target_flags(
        parser, "target (as loadgen run)", "one built-in simulator for the whole sweep"
    )
    load = parser.add_argument_group("each level (as loadgen run)")
    load.add_argument(
        "--requests", "--num-prompts", dest="requests", type=integer(), help="requests per phase"
    )
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
    add_workload_flags(parser)
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
        return _Sweep(args).execute()
    except (LoadgenError, BaseExceptionGroup) as exc:
        error = user_error(exc)
        if error is None:
            raise
        print(f"loadgen: {error}", file=sys.stderr)
        return 2


class _Sweep:
    """One run per level, in order, against one target; sweep.json saved after each level."""

    def __init__(self, args: argparse.Namespace) -> None:
        import time
        from datetime import UTC, datetime

        from loadgen.errors import LoadgenError
        from loadgen.results.files import new_run_dir
        from loadgen.sweep import Axis, parse_levels

        self.args = args
        # `--concurrency ""` is given (and empty): test for None, not for truth.
        self.axis: Axis = "concurrency" if args.concurrency is not None else "rate"
        try:
            spec = args.concurrency if self.axis == "concurrency" else args.rate
            self.levels = parse_levels(spec, self.axis)
        except ValueError as exc:
            raise LoadgenError(str(exc)) from None
        # --concurrency and --rate list the levels: each level's run sets its own.
        overrides = scenario_overrides(args, concurrency=None, rate=None, progress=False)
        self.base = command_scenario(args.scenario, overrides)
        self.phase = args.phase or self.base.phases[0].name
        if self.phase not in {p.name for p in self.base.phases}:
            raise LoadgenError(f"--phase: the scenario has no phase {self.phase!r}")
        self.folder = (
            Path(args.sweep_dir)
            if args.sweep_dir
            else new_run_dir(self.base.output.directory, f"{self.base.name}-sweep")
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.started_at = datetime.now(UTC).isoformat()
        self.t0 = time.monotonic()
        self.done: list[Level] = []
        self.status = "completed"
        self.simulator: SimulatorProcess | None = None
        self.urls: tuple[str, ...] = ()

    def execute(self) -> int:
        from loadgen.orchestrator import local_simulator
        from loadgen.scenario import Overrides, apply_overrides
        from loadgen.target import urls_from_environment

        self.urls = urls_from_environment(self.base.target)
        if not self.urls:
            # One simulator for every level: levels differ only in load, never in start-up.
            self.simulator = local_simulator(self.args.sim_arg, self.folder)
            self.urls = (self.simulator.start(),)
            say(
                f"no URL given: started the built-in vLLM simulator at {self.urls[0]} for the sweep"
            )
            self.base = apply_overrides(self.base, Overrides(urls=self.urls))
        try:
            for level in self.levels:
                if not self.run_level(level):
                    break
                self.save()
        finally:
            if self.simulator is not None:
                self.simulator.stop()
        return self.finish(self.save())

    def run_level(self, level: float) -> bool:
        """One level's run; False when it did not complete (the sweep stops there)."""
        import anyio

        from loadgen import lifeline
        from loadgen.commands.observe import ConsoleObserver
        from loadgen.orchestrator import RunOptions, run_scenario
        from loadgen.results.html import num
        from loadgen.scenario import Overrides, apply_overrides
        from loadgen.shards import worker_count
        from loadgen.sweep import level_dir_name, level_from_summary, level_text

        over = (
            Overrides(concurrency=int(level))
            if self.axis == "concurrency"
            else Overrides(rate=level)
        )
        scenario = apply_overrides(self.base, over)
        name = level_dir_name(self.axis, level)
        say(f"== {self.axis} {level_text(level)} -> {self.folder / name}")
        # The run cannot tell our simulator is local: leave it its core as `run` would.
        workers = self.args.workers or (worker_count(scenario, 0, True) if self.simulator else 0)
        options = RunOptions(
            run_dir=str(self.folder / name), transport=self.args.transport, workers=workers
        )
        result = anyio.run(
            run_scenario, scenario, options, say, ConsoleObserver(say),
            backend_options=lifeline.backend_options(),
        )  # fmt: skip
        if self.phase in result.summary.phases:
            lv = level_from_summary(level, name, result.summary, self.phase)
            self.done.append(lv)
            say(
                f"   {num(lv.generation_tokens_per_s)} generation tokens/s, "
                f"TTFT p99 {num(lv.ttft_ms.p99)} ms, {lv.failed} failed"
            )
        if result.status != "completed":
            self.status = result.status
            say(f"stopping the sweep: level {level_text(level)} was {result.status}")
            return False
        return True

    def save(self) -> Sweep:
        import dataclasses
        import time

        from loadgen.results.files import write_json
        from loadgen.results.report_sweep import SWEEP_FILE
        from loadgen.scenario import scenario_to_json
        from loadgen.sweep import find_knee, sweep_document

        args = self.args
        slo = {k: v for k, v in dataclasses.asdict(self.base.slo).items() if v}
        knee = find_knee(
            self.done, self.axis, slo, attainment=args.slo_attainment, min_gain=args.min_gain
        )
        doc = sweep_document(
            scenario=scenario_to_json(self.base),
            axis=self.axis,
            phase=self.phase,
            levels=self.done,
            knee=knee,
            attainment=args.slo_attainment,
            min_gain=args.min_gain,
            simulator=self.simulator is not None,
            urls=self.urls,
            started_at=self.started_at,
            duration_s=time.monotonic() - self.t0,
            status=self.status,
        )
        write_json(self.folder / SWEEP_FILE, doc)
        return doc

    def finish(self, doc: Sweep) -> int:
        from loadgen.results.report_sweep import levels_text, write_sweep_report
        from loadgen.safetext import for_terminal

        try:
            report = write_sweep_report(self.folder)
        except Exception as exc:  # the levels' results are saved; the page can be made later
            say(f"warning: no sweep report ({type(exc).__name__}: {exc})")
        else:
            say(f"report: {report}")
        if doc.levels:
            print(for_terminal(levels_text(doc)))
        print(for_terminal(doc.knee.sentence))
        print(f"sweep: {self.folder}")
        return 0 if self.status == "completed" else 130
