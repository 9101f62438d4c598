"""One whole run, in stages: target, results folder, shards, phases, server scrape, summary.

`Run.execute` resolves the target and the model (`resolve`), then measures (`measure`): it sets up
the results folder, the request log and the server scrape (`set_up`), makes the shards
(`prepare_shards`, placed by `loadgen.shards`), runs the phases (`run_phases`, each `run_phase`),
and writes the final summary and the histogram logs (`finish`). Each stage's output is a small
frozen value (`Resolved`, `SetUp`, `Measured`); what the phases add up (timings, accumulators,
server marks, verdicts, losses) is kept on the `Run`.

The order matters for honest numbers: everything expensive (the simulator's start, model
discovery, worker start-up, image synthesis and base64 encoding) happens before the first phase
starts; while it runs only streaming, timestamping and per-request bookkeeping remain.

Shards are known only through the `Shard` protocol: with several, each runs its exact share and
the run merges their records and histograms exactly, writing one results folder as if one
process had run. Nothing here renders: a `RunObserver` (`loadgen.observer`) gets the run's events.

A shard lost in the middle of a phase (a worker killed, or failed) is a stated loss, not the end
of the run: the other shards finish the phase, the lost shard's records already delivered stay in
requests.jsonl and are counted in the phase (rebuilt from that file), its requests in flight are
named in summary.json's `losses`, no further phase starts, and the run's status is "incomplete".
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import orjson

from loadgen import lifeline
from loadgen.client import ClientSettings, TransportName, endpoint_url, server_root
from loadgen.config import WARMUP, PhaseConfig, Scenario
from loadgen.errors import LoadgenError
from loadgen.metrics.scrape import ServerScrapes, ServerSnapshot
from loadgen.metrics.selfcheck import combine_verdicts, phase_in_flight
from loadgen.metrics.summary import PhaseAccumulator
from loadgen.observer import PROGRESS_TICK, LiveRun, RunObserver, Unobserved
from loadgen.results.files import (
    RequestLog,
    new_run_dir,
    prepare_run_dir,
    read_requests,
    write_json,
)
from loadgen.results.run_summary import SummaryInputs, build_summary
from loadgen.results.schema import ClientCheck, Distributed, Loss, RunSummary
from loadgen.runner import PhaseTiming, StopControl
from loadgen.serving import serving_images
from loadgen.shard import (
    PhaseResult,
    Shard,
    ShardFailed,
    ShardJob,
    ShardLost,
    phases_with_warmup,
    target_concurrency,
)
from loadgen.shards import (
    clock_warnings,
    cluster_placement,
    make_shards,
    placement,
    placement_lines,
    pool_size,
    where_text,
)
from loadgen.target import read_api_key, resolve_model, urls_from_environment
from loadgen.workload.workload import describe_built

if TYPE_CHECKING:
    from loadgen.sim.process import SimulatorProcess

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class RunOptions:
    run_dir: str | None = None  # exact results folder (default: a new one under output.directory)
    transport: TransportName = "native"
    sim_args: tuple[str, ...] = ()  # extra `loadgen sim` arguments when the simulator is started
    handle_signals: bool = True
    workers: int = 0  # 0 = one per available core (less one for a local simulator), capped
    overwrite: bool = False  # a `run_dir` holding an earlier run's files: delete them first
    shard_kind: str = ""  # a key of loadgen.shards.SHARD_KINDS; "" = local or worker processes


# Exit statuses of `loadgen run` (README "Exit statuses and signals").
EXIT_INCOMPLETE = 3  # a worker was lost: the results stop at the phase it was lost in


@dataclass(slots=True)
class RunResult:
    run_dir: Path
    summary: RunSummary
    status: str  # "completed", "interrupted" or "incomplete" (a worker lost)
    reason: str = ""
    signal: int = 0  # the signal that interrupted the run (SIGINT or SIGTERM), if any
    write_failed: bool = False  # the results files could not all be written


def local_simulator(sim_args: Sequence[str], folder: Path) -> SimulatorProcess:
    """The built-in simulator of a run or a sweep that names no URL, not started yet: with
    cached-token details on, as a captioning benchmark server would run, and its log in `folder`."""
    from loadgen.sim.process import SimulatorProcess

    log = str(folder / "simulator.log")
    return SimulatorProcess(args=["--enable-prompt-tokens-details", *sim_args], log_path=log)


def _merge(results: Sequence[PhaseResult]) -> PhaseResult:
    timings = [r.timing for r in results]
    timing = PhaseTiming(
        name=timings[0].name,
        started=min(t.started for t in timings),
        ended=max(t.ended for t in timings),
        sent=sum(t.sent for t in timings),
        interrupted=any(t.interrupted for t in timings),
    )
    accs = [r.accumulator for r in results if r.accumulator is not None]
    if not accs:
        return PhaseResult(timing, None)
    merged = PhaseAccumulator.from_state(accs[0].to_state()) if len(accs) > 1 else accs[0]
    for acc in accs[1:]:
        merged.merge(acc)
    return PhaseResult(timing, merged)


async def run_scenario(
    scenario: Scenario, opts: RunOptions, say: Say, observer: RunObserver | None = None
) -> RunResult:
    """Run `scenario` and write its results folder. Nothing is rendered unless an `observer`
    is given (`loadgen.commands.observe.ConsoleObserver`: progress line, HTML report)."""
    run_dir = (
        Path(opts.run_dir)
        if opts.run_dir
        else new_run_dir(scenario.output.directory, scenario.name)
    )
    created = not run_dir.exists()
    prepare_run_dir(run_dir, overwrite=opts.overwrite)  # never appends to an earlier run
    urls = urls_from_environment(scenario.target)
    watcher = observer if observer is not None else Unobserved()
    # A signal before the run's own watcher is up (or after it) ends the run here, in one line,
    # with the simulator stopped: not a traceback, not an orphan.
    with lifeline.cancel_on_signals():
        async with serving_images(scenario, run_dir, say) as sent:
            return await _run_with_simulator(sent, opts, say, watcher, run_dir, urls, created)
    raise AssertionError("unreachable")  # cancel_on_signals raises when it was cancelled


async def _run_with_simulator(
    scenario: Scenario,
    opts: RunOptions,
    say: Say,
    observer: RunObserver,
    run_dir: Path,
    urls: tuple[str, ...],
    created: bool,  # the run made its results folder (removed again when refused while empty)
) -> RunResult:
    simulator = None
    try:
        if not urls:
            simulator = local_simulator(opts.sim_args, run_dir)
            base = await simulator.astart()
            urls = (base,)
            say(
                f"no URL given: started the built-in vLLM simulator at {base} "
                f"(log: {run_dir / 'simulator.log'})"
            )
        run = Run(scenario, opts, say, observer, run_dir, urls, simulator is not None)
        return await run.execute()
    except LoadgenError:
        # Refused before any request (the target did not answer, an unknown model): leave no
        # empty results folder behind.
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # noqa: ASYNC240 (once, before any request; only when empty)
        raise
    finally:
        if simulator is not None:
            await simulator.astop()  # shielded: a cancelled run still stops its simulator


@dataclass(frozen=True, slots=True)
class Resolved:
    """The target as the run will use it."""

    urls: tuple[str, ...]
    model: str
    settings: ClientSettings  # for the whole run (the shards share its pool)
    api_key: str | None
    warnings: list[str]  # about the target (a server down, a model it does not list)


@dataclass(frozen=True, slots=True)
class RunClock:
    origin: float  # perf_counter() at the run clock's 0.0
    origin_epoch: float  # time.time() at the same instant
    started_at: datetime

    @classmethod
    def start(cls) -> RunClock:
        return cls(perf_counter(), time.time(), datetime.now(UTC))

    def now(self) -> float:
        return perf_counter() - self.origin


@dataclass(frozen=True, slots=True)
class SetUp:
    """The results side of a run, open before its shards are made."""

    clock: RunClock
    log: RequestLog  # requests.jsonl
    write_failed: anyio.Event  # results that cannot be written (a full disk) stop the run
    scraper: ServerScrapes | None  # every target's /metrics, when scraped


@dataclass(frozen=True, slots=True)
class Measured:
    """How the phases ended."""

    status: str  # "completed", "interrupted" or "incomplete"
    reason: str = ""


class Run:
    """One run's stages, in order: `execute` -> `resolve` -> `measure` (`set_up`,
    `prepare_shards`, `run_phases`, `finish`)."""

    def __init__(
        self,
        scenario: Scenario,
        opts: RunOptions,
        say: Say,
        observer: RunObserver,
        run_dir: Path,
        urls: tuple[str, ...],
        simulated: bool,
    ) -> None:
        self.scenario = scenario
        self.opts = opts
        self.say = say
        self.observer = observer
        self.run_dir = run_dir
        self.urls = urls
        self.simulated = simulated
        self.phases = phases_with_warmup(scenario)
        self.stop = StopControl()
        # What the phases add up, for the summary:
        self.timings: list[PhaseTiming] = []
        self.accumulators: dict[str, PhaseAccumulator] = {}
        self.server_marks: dict[str, dict[str, ServerSnapshot | None]] = {}
        self.verdicts: list[dict[str, Any]] = []
        self.losses: list[Loss] = []
        self.summary_errors: list[str] = []
        self.received: list[int] = []  # signals received by the watcher
        # Shards on a cluster: where each runs (in shard order), and their clocks.
        self.distributed: Distributed | None = None
        self.nodes: list[str] | None = None
        self.cluster_warnings: list[str] = []

    async def execute(self) -> RunResult:
        return await self.measure(await self.resolve())

    async def resolve(self) -> Resolved:
        """The target's settings, and the model to request (asked of the servers when needed)."""
        target = self.scenario.target
        api_key = read_api_key(target)
        settings = ClientSettings(
            pool_size=pool_size(self.scenario),
            connect_timeout=target.connect_timeout,
            read_timeout=target.read_timeout,
            request_timeout=target.request_timeout,
            verify_tls=target.verify_tls,
            headers=target.headers,
            api_key=api_key,
            api=target.api,
        )
        model, warnings = await resolve_model(target, self.urls, settings)
        for w in warnings:
            self.say(f"warning: {w}")
        return Resolved(self.urls, model, settings, api_key, warnings)

    async def measure(self, resolved: Resolved) -> RunResult:
        setup = self.set_up()
        shards = self.prepare_shards(resolved, setup)
        failed: ShardFailed | None = None
        outcome = Measured("completed")
        async with contextlib.AsyncExitStack() as cleanup:
            if setup.scraper is not None:
                cleanup.callback(setup.scraper.close)
            try:
                async with anyio.create_task_group() as tg:
                    try:
                        await self.start_shards(tg, shards)
                    except ShardFailed as exc:  # raised after the task group, in one line
                        failed = exc
                    else:
                        outcome = await self.run_phases(tg, resolved, setup, shards)
                    for shard in shards:
                        self.verdicts.append(await shard.close())
                    tg.cancel_scope.cancel()
            finally:
                setup.log.close()
                self.observer.phases_ended()
        if failed is not None:
            raise failed
        return self.finish(resolved, setup, len(shards), outcome)

    def set_up(self) -> SetUp:
        """requests.jsonl, the run's clock and the server scrape, before any shard exists."""
        write_failed = anyio.Event()
        log = RequestLog(self.run_dir / "requests.jsonl", on_error=lambda _: write_failed.set())
        clock = RunClock.start()
        target = self.scenario.target
        # Every target's /metrics, fetched and parsed in worker threads, off the measuring loop.
        scraper = (
            ServerScrapes(
                [server_root(u) for u in self.urls],
                interval=target.scrape_interval,
                origin=clock.origin,
                verify=target.verify_tls,
            )
            if target.scrape_metrics
            else None
        )
        return SetUp(clock, log, write_failed, scraper)

    def prepare_shards(self, resolved: Resolved, setup: SetUp) -> list[Shard]:
        """The shards, placed by `loadgen.shards`; their records go straight to requests.jsonl."""
        opts = self.opts
        where = placement(self.scenario, opts.workers, self.simulated, opts.shard_kind)
        job = ShardJob(
            scenario=self.scenario,
            model=resolved.model,
            endpoints=tuple(endpoint_url(u, self.scenario.target.endpoint) for u in self.urls),
            settings=resolved.settings,
            transport=opts.transport,
            shard=0,
            shards=where.count,
            origin=setup.clock.origin,
            phases=self.phases,
        )
        return make_shards(where, job, setup.log.write_raw, resolved.api_key)

    async def start_shards(self, tg: anyio.abc.TaskGroup, shards: Sequence[Shard]) -> None:
        """Payloads first: images are synthesised and encoded before any phase starts."""
        built = perf_counter()
        for shard in shards:
            await shard.start(tg)
        descriptions = [await shard.prepare() for shard in shards]
        what = describe_built(self.scenario.workload, [orjson.loads(d) for d in descriptions])
        self.say(f"workload ready{where_text(shards)} in {perf_counter() - built:.1f} s: {what}")
        self.distributed = cluster_placement(self.scenario.distributed, shards)
        if self.distributed is not None:
            self.nodes = [p.node for p in self.distributed.shards]
            for line in placement_lines(self.distributed):
                self.say(line)
            self.cluster_warnings = clock_warnings(self.distributed)
            for warning in self.cluster_warnings:
                self.say(f"warning: {warning}")

    async def run_phases(
        self, tg: anyio.abc.TaskGroup, resolved: Resolved, setup: SetUp, shards: list[Shard]
    ) -> Measured:
        """Every phase in order, until the last, a stop or a lost shard."""
        clock, scraper = setup.clock, setup.scraper
        tg.start_soon(self.stop_on_write_failure, setup, shards)
        if self.opts.handle_signals:
            tg.start_soon(_watch_signals, self.stop, self.say, shards, self.received)
        if scraper is not None:
            await scraper.start(tg)
        live = LiveRun(
            self.scenario,
            self.run_dir,
            clock.origin,
            self.stop,
            lambda: [shard.progress() for shard in shards],
        )
        self.observer.run_started(live)
        tg.start_soon(self._tick, clock)
        margin = max(shard.start_margin for shard in shards)
        for phase in self.phases:
            if self.stop.stopping.is_set() or self.losses:
                break
            if scraper is not None:
                self.server_marks[f"{phase.name}:start"] = await scraper.mark()
            start = clock.now() + margin
            self.observer.phase_started(phase, start)
            await self.run_phase(phase, start, setup, shards)
            if scraper is not None:
                self.server_marks[f"{phase.name}:end"] = await scraper.mark()
            if phase.name != WARMUP:
                self.save_summary(resolved, setup, len(shards), Measured("completed"), final=False)
        return self.outcome(setup)

    def outcome(self, setup: SetUp) -> Measured:
        if self.losses:
            return Measured(
                "incomplete",
                "; ".join(
                    f"worker {x.shard} lost in phase {x.phase}: {x.cause}" for x in self.losses
                ),
            )
        if setup.write_failed.is_set():
            return Measured("incomplete", self._write_failure(setup.log))
        if self.stop.stopping.is_set():
            return Measured("interrupted", self.stop.reason)
        return Measured("completed")

    async def _tick(self, clock: RunClock) -> None:
        while True:
            await anyio.sleep(PROGRESS_TICK)
            self.observer.progress(clock.now())

    async def run_phase(
        self, phase: PhaseConfig, start: float, setup: SetUp, shards: Sequence[Shard]
    ) -> None:
        """One phase on every shard, from `start` (run clock); their results merged."""
        results: list[PhaseResult | None] = [None] * len(shards)
        async with anyio.create_task_group() as phase_tg:
            for k, shard in enumerate(shards):
                phase_tg.start_soon(self._shard_phase, shard, phase, start, setup, results, k)
        merged = _merge([r for r in results if r is not None])
        self.timings.append(merged.timing)
        if merged.accumulator is not None:
            self.accumulators[phase.name] = merged.accumulator
        self.observer.phase_finished(merged.timing)

    async def _shard_phase(
        self,
        shard: Shard,
        phase: PhaseConfig,
        start: float,
        setup: SetUp,
        results: list[PhaseResult | None],
        k: int,
    ) -> None:
        try:
            results[k] = await shard.run_phase(phase.name, start)
        except ShardLost as lost:  # the other shards go on with their share
            results[k] = self.lost_shard(lost, phase, start, setup)

    def lost_shard(
        self, lost: ShardLost, phase: PhaseConfig, start: float, setup: SetUp
    ) -> PhaseResult:
        """The lost shard's part of the phase: what it delivered, rebuilt from requests.jsonl
        (each record was flushed there as it arrived), and a statement of what it took along."""
        mine = [
            r
            for r in read_requests(setup.log.path)
            if r.shard == lost.shard and r.phase == phase.name
        ]
        now = setup.clock.now()
        acc = None
        if phase.name != WARMUP:
            acc = PhaseAccumulator(
                phase.name,
                window=self.scenario.output.window,
                slo=self.scenario.slo,
                origin=start,
                target_concurrency=target_concurrency(phase.load),
            )
            for rec in mine:
                acc.add(rec)
        ended = max((r.end for r in mine), default=start)
        in_flight = lost.progress.in_flight if lost.progress.phase == phase.name else 0
        self.losses.append(
            Loss(
                shard=lost.shard,
                phase=phase.name,
                cause=lost.cause,
                exit_status=lost.exit_status,
                noticed_at=round(now, 3),  # run clock, s
                records=len(mine),  # delivered, kept in requests.jsonl and counted
                in_flight=in_flight,  # lost with it, as of its last progress line ...
                in_flight_at=round(lost.progress.at, 3),  # ... read at this run-clock time
            )
        )
        self.say(
            f"worker {lost.shard} lost in phase {phase.name} at {now:.1f} s ({lost.cause}): "
            f"{len(mine)} of its requests kept, {in_flight} in flight at "
            f"{lost.progress.at:.1f} s lost; the other shards finish the phase"
        )
        return PhaseResult(PhaseTiming(phase.name, start, ended, len(mine), True), acc)

    async def stop_on_write_failure(self, setup: SetUp, shards: Sequence[Shard]) -> None:
        await setup.write_failed.wait()
        why = "the results cannot be written"
        self.stop.stop_sending(why)
        for shard in shards:  # what is in flight could not be recorded either
            await shard.stop_sending(why)
            await shard.cancel()

    def save_summary(
        self, resolved: Resolved, setup: SetUp, workers: int, outcome: Measured, *, final: bool
    ) -> RunSummary:
        clock = setup.clock
        doc = _summary(
            self.scenario,
            self.opts,
            self.run_dir,
            clock.started_at,
            clock.origin,
            clock.origin_epoch,
            resolved.urls,
            resolved.model,
            self.simulated,
            workers,
            self.timings,
            self.accumulators,
            self.server_marks,
            setup.scraper,
            combine_verdicts(
                self.verdicts,
                {
                    p.name: phase_in_flight(self.accumulators[p.name], p.load)
                    for p in self.scenario.phases
                    if p.name in self.accumulators
                },
                nodes=self.nodes,
            ),
            outcome.status,
            outcome.reason,
            self.losses,
            [*resolved.warnings, *self.cluster_warnings],
            final,
            self.distributed,
        )
        try:
            write_json(self.run_dir / "summary.json", doc)
        except OSError as exc:
            where = self.run_dir / "summary.json"
            self.summary_errors.append(f"cannot write {where}: {exc.strerror or exc}")
            setup.write_failed.set()
        return doc

    def finish(
        self, resolved: Resolved, setup: SetUp, workers: int, outcome: Measured
    ) -> RunResult:
        """The final summary and the histogram logs; then the observer hears of the result."""
        summary = self.save_summary(resolved, setup, workers, outcome, final=True)
        write_failed = setup.write_failed.is_set()
        if write_failed:
            if outcome.status == "completed":  # only the final summary failed
                outcome = Measured("incomplete", self._write_failure(setup.log))
            self.say(f"warning: {self._write_failure(setup.log)}")
        try:
            for name, acc in self.accumulators.items():
                if acc.histograms.windows:
                    acc.histograms.write_interval_logs(
                        self.run_dir / "histograms", setup.clock.origin_epoch, prefix=f"{name}."
                    )
        except OSError as exc:
            self.say(f"warning: no histogram logs: {exc.strerror or exc}")
        signum = self.received[0] if self.received and outcome.status == "interrupted" else 0
        result = RunResult(
            self.run_dir, summary, outcome.status, outcome.reason, signum, write_failed
        )
        self.observer.run_finished(result)
        return result

    def _write_failure(self, log: RequestLog) -> str:
        return _write_failure(log, self.summary_errors)


def _write_failure(log: RequestLog, summary_errors: list[str]) -> str:
    """What could not be written, and what was lost with it."""
    parts = [e for e in (log.error, *summary_errors[:1]) if e]
    lost = f"; {log.lost} finished requests not recorded" if log.lost else ""
    kept = f"; requests.jsonl keeps the first {log.count}" if log.error else ""
    return "; ".join(parts) + lost + kept


# After the first Ctrl-C or SIGTERM the requests in flight get this long to finish before they are
# cancelled: a stream that never ends must not hold the run, and `docker stop` sends SIGKILL 10 s
# after its SIGTERM (the results must be written before that).
INTERRUPT_GRACE_S = 30.0
TERMINATE_GRACE_S = 5.0


async def _watch_signals(
    stop: StopControl, say: Say, shards: Sequence[Shard], received: list[int]
) -> None:
    """Ctrl-C: the first press stops sending and lets requests in flight finish, for at most
    INTERRUPT_GRACE_S; the second (or the grace's end) cancels them (they are recorded as
    cancelled). SIGTERM counts as a press (a service manager's stop, `docker stop`, `kill`) with
    TERMINATE_GRACE_S: the run ends as after one Ctrl-C, status 143."""

    async def cancel_all(why: str) -> None:
        say(why)
        for shard in shards:
            await shard.cancel()

    async def cancel_after(grace: float) -> None:
        await anyio.sleep(grace)
        await cancel_all(f"cancelling the requests still in flight after {grace:g} s")

    try:
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    received.append(signum)
                    if not stop.stopping.is_set():
                        term = signum == signal.SIGTERM
                        why = "terminated (SIGTERM)" if term else "interrupted by the user"
                        grace = TERMINATE_GRACE_S if term else INTERRUPT_GRACE_S
                        stop.stop_sending(why)
                        for shard in shards:
                            await shard.stop_sending(why)
                        say(
                            "\nstopping: no new requests; waiting for the requests in flight "
                            f"(at most {grace:g} s; Ctrl-C again to cancel them now)"
                        )
                        tg.start_soon(cancel_after, grace)
                    else:
                        await cancel_all("cancelling the requests in flight")
    finally:
        # Leaving the receiver restores the default actions (SIGTERM would kill at once, before
        # summary.json is written): a signal from here on ends the run in one line instead.
        if threading.current_thread() is threading.main_thread():
            lifeline.raise_on_signals()


def _summary(
    scenario: Scenario,
    opts: RunOptions,
    run_dir: Path,
    started_at: datetime,
    origin: float,
    origin_epoch: float,
    urls: tuple[str, ...],
    model: str,
    simulated: bool,
    workers: int,
    timings: list[PhaseTiming],
    accumulators: dict[str, PhaseAccumulator],
    server_marks: dict[str, dict[str, ServerSnapshot | None]],
    scraper: ServerScrapes | None,
    client: ClientCheck,
    status: str,
    reason: str,
    losses: list[Loss],
    warnings: list[str],
    final: bool,
    distributed: Distributed | None,
) -> RunSummary:
    return build_summary(
        SummaryInputs(
            scenario, opts.transport, run_dir, started_at, origin, origin_epoch, urls, model,
            simulated, workers, timings, accumulators, server_marks, scraper, client, status,
            reason, losses, warnings, final, distributed,
        )
    )  # fmt: skip


def exit_status(result: RunResult) -> tuple[int, str]:
    """0 for a completed run; otherwise a non-zero status and the one-line reason
    (README "Exit statuses and signals")."""
    if result.status == "incomplete":
        return EXIT_INCOMPLETE, f"incomplete: {result.reason}; results so far in {result.run_dir}"
    if result.status == "interrupted":
        code = lifeline.exit_code(result.signal or signal.SIGINT)
        return code, f"interrupted ({result.reason}); results so far in {result.run_dir}"
    totals = [p.requests for p in result.summary.phases.values()]
    sent = sum(t.total for t in totals)
    ok = sum(t.succeeded for t in totals)
    if sent and not ok:
        return 1, f"every request failed; see {result.run_dir / 'summary.json'}"
    return 0, ""
