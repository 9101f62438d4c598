"""One whole run: target, shards, results folder, phases, server scrape, self-check, summary.

The order matters for honest numbers: everything expensive (the simulator's start, model
discovery, worker start-up, image synthesis and base64 encoding) happens before the first phase
starts; while it runs only streaming, timestamping and per-request bookkeeping remain.

With `workers` > 1 the load is split over worker processes (`loadgen.workers`); each shard runs
its exact share and the parent merges their records and histograms exactly, writing one results
folder as if one process had run.

A worker lost in the middle of a phase (killed, or failed) is a stated loss, not the end of the
run: the other shards finish the phase, the lost shard's records already delivered stay in
requests.jsonl and are counted in the phase (rebuilt from that file), its requests in flight are
named in summary.json's `losses`, no further phase starts, and the run's status is "incomplete".
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from loadgen import lifeline, schedule
from loadgen.client import ClientSettings, TransportName, endpoint_url, server_root
from loadgen.config import WARMUP, PhaseConfig, Scenario
from loadgen.errors import LoadgenError
from loadgen.metrics.scrape import ServerScrapes, ServerSnapshot
from loadgen.metrics.selfcheck import available_cores, combine_verdicts, phase_in_flight
from loadgen.metrics.summary import PhaseAccumulator
from loadgen.records import RequestRecord
from loadgen.results.console import Progress, ProgressMode
from loadgen.results.files import (
    RequestLog,
    new_run_dir,
    prepare_run_dir,
    read_requests,
    write_json,
)
from loadgen.results.report_run import report_after_run
from loadgen.results.run_summary import SummaryInputs, build_summary
from loadgen.results.schema import ClientCheck, Loss, RunSummary
from loadgen.runner import PhaseTiming, StopControl
from loadgen.shard import (
    LocalShard,
    PhaseResult,
    Shard,
    ShardJob,
    phases_with_warmup,
    target_concurrency,
)
from loadgen.target import read_api_key, resolve_model, urls_from_environment
from loadgen.workers import ProcessShard, WorkerFailed, WorkerLost
from loadgen.workload.workload import describe_built

if TYPE_CHECKING:
    from loadgen.sim.process import SimulatorProcess

Say = Callable[[str], None]
MAX_DEFAULT_WORKERS = 8
_START_MARGIN_S = (
    0.05  # a phase starts this long after it is announced, so all shards start together
)


@dataclass(frozen=True, slots=True)
class RunOptions:
    run_dir: str | None = None  # exact results folder (default: a new one under output.directory)
    transport: TransportName = "native"
    sim_args: tuple[str, ...] = ()  # extra `loadgen sim` arguments when the simulator is started
    handle_signals: bool = True
    workers: int = 0  # 0 = one per available core (less one for a local simulator), capped
    report: bool = True  # write report.html and plots/ at the end
    overwrite: bool = False  # a `run_dir` holding an earlier run's files: delete them first


# Exit statuses of `loadgen run` (README "Exit statuses and signals").
EXIT_INCOMPLETE = 3  # a worker was lost: the results stop at the phase it was lost in


@dataclass(slots=True)
class RunResult:
    run_dir: Path
    summary: RunSummary
    status: str  # "completed", "interrupted" or "incomplete" (a worker lost)
    reason: str = ""
    signal: int = 0  # the signal that interrupted the run (SIGINT or SIGTERM), if any


def _progress_mode(scenario: Scenario) -> ProgressMode:
    """A live line on a terminal; plain lines when stderr is a file or a pipe (CI, containers)."""
    if not scenario.output.progress:
        return "off"
    return "live" if sys.stderr.isatty() else "plain"


def local_simulator(sim_args: Sequence[str], folder: Path) -> SimulatorProcess:
    """The built-in simulator of a run or a sweep that names no URL, not started yet: with
    cached-token details on, as a captioning benchmark server would run, and its log in `folder`."""
    from loadgen.sim.process import SimulatorProcess

    log = str(folder / "simulator.log")
    return SimulatorProcess(args=["--enable-prompt-tokens-details", *sim_args], log_path=log)


def worker_count(scenario: Scenario, requested: int, simulated: bool) -> int:
    """Workers to use: as asked, or one per core (one core left to a local simulator), never more
    than the smallest closed-loop concurrency (a worker with no stream would idle), open-loop cap
    on requests in flight or connection pool (each worker holds a share of at least one)."""
    n = requested or max(1, min(MAX_DEFAULT_WORKERS, available_cores() - (1 if simulated else 0)))
    for phase in scenario.phases:
        if phase.load.mode == "closed":
            n = min(n, phase.load.concurrency)
        elif phase.load.max_concurrency:
            n = min(n, phase.load.max_concurrency)
    if scenario.target.pool_size:
        n = min(n, scenario.target.pool_size)
    return max(1, n)


def pool_size(scenario: Scenario) -> int:
    """Connections for the whole run (0 = unlimited), shared over the shards exactly as the load
    is (`schedule.shard_share`): the scenario's, or the load's peak concurrency."""
    if scenario.target.pool_size:
        return scenario.target.pool_size
    peak = 0
    for phase in scenario.phases:
        load = phase.load
        if load.mode == "closed":
            peak = max(peak, load.concurrency)
        elif load.max_concurrency:
            peak = max(peak, load.max_concurrency)
        else:
            return 0  # an uncapped open loop must never be throttled by the client's pool
    return peak


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


async def run_scenario(scenario: Scenario, opts: RunOptions, say: Say) -> RunResult:
    run_dir = (
        Path(opts.run_dir)
        if opts.run_dir
        else new_run_dir(scenario.output.directory, scenario.name)
    )
    created = not run_dir.exists()
    prepare_run_dir(run_dir, overwrite=opts.overwrite)  # never appends to an earlier run
    urls = urls_from_environment(scenario.target)
    # A signal before the run's own watcher is up (or after it) ends the run here, in one line,
    # with the simulator stopped: not a traceback, not an orphan.
    with lifeline.cancel_on_signals():
        return await _run_with_simulator(scenario, opts, say, run_dir, urls, created)
    raise AssertionError("unreachable")  # cancel_on_signals raises when it was cancelled


async def _run_with_simulator(
    scenario: Scenario,
    opts: RunOptions,
    say: Say,
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
        return await _run(scenario, opts, say, run_dir, urls, simulator is not None)
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


async def _run(
    scenario: Scenario,
    opts: RunOptions,
    say: Say,
    run_dir: Path,
    urls: tuple[str, ...],
    simulated: bool,
) -> RunResult:
    target = scenario.target
    shards_n = worker_count(scenario, opts.workers, simulated)
    api_key = read_api_key(target)
    settings = ClientSettings(
        pool_size=pool_size(scenario),
        connect_timeout=target.connect_timeout,
        read_timeout=target.read_timeout,
        request_timeout=target.request_timeout,
        verify_tls=target.verify_tls,
        headers=target.headers,
        api_key=api_key,
    )
    model, warnings = await resolve_model(target, urls, settings)
    for w in warnings:
        say(f"warning: {w}")

    phases = phases_with_warmup(scenario)
    # Results that cannot be written (a full disk): stop the run and say what was lost.
    write_failed = anyio.Event()
    log = RequestLog(run_dir / "requests.jsonl", on_error=lambda _: write_failed.set())

    def local_record(rec: RequestRecord) -> None:
        log.write(rec)

    def remote_record(line: bytes, rec: RequestRecord | None) -> None:
        log.write_raw(line)

    origin = perf_counter()
    origin_epoch = time.time()
    started_at = datetime.now(UTC)
    jobs = [
        ShardJob(
            scenario=scenario,
            model=model,
            endpoints=tuple(endpoint_url(u, target.endpoint) for u in urls),
            settings=dataclasses.replace(
                settings,
                api_key=None,
                pool_size=schedule.shard_share(settings.pool_size, k, shards_n),
            ),
            transport=opts.transport,
            shard=k,
            shards=shards_n,
            origin=origin,
            phases=phases,
        )
        for k in range(shards_n)
    ]
    shards: list[Shard]
    if shards_n == 1:
        local = LocalShard(jobs[0], local_record, api_key)
        shards = [local]
    else:
        processes = [ProcessShard(job, remote_record) for job in jobs]
        shards = list(processes)

    stop = StopControl()
    accumulators: dict[str, PhaseAccumulator] = {}
    timings: list[PhaseTiming] = []
    verdicts: list[dict[str, Any]] = []
    server_marks: dict[str, dict[str, ServerSnapshot | None]] = {}
    # Every target's /metrics, fetched and parsed in worker threads, off the measuring loop.
    scraper = (
        ServerScrapes(
            [server_root(u) for u in urls],
            interval=target.scrape_interval,
            origin=origin,
            verify=target.verify_tls,
        )
        if target.scrape_metrics
        else None
    )
    progress = Progress(
        lambda: [shard.progress() for shard in shards],
        stop,
        mode=_progress_mode(scenario),
        origin=origin,
        interval=scenario.output.progress_interval,
    )
    status, reason = "completed", ""
    losses: list[Loss] = []
    summary_errors: list[str] = []
    received: list[int] = []  # signals received by the watcher

    def _lost_shard(lost: WorkerLost, phase: PhaseConfig, start: float) -> PhaseResult:
        """The lost shard's part of the phase: what it delivered, rebuilt from requests.jsonl
        (each record was flushed there as it arrived), and a statement of what it took along."""
        mine = [
            r for r in read_requests(log.path) if r.shard == lost.shard and r.phase == phase.name
        ]
        now = perf_counter() - origin
        acc = None
        if phase.name != WARMUP:
            acc = PhaseAccumulator(
                phase.name,
                window=scenario.output.window,
                slo=scenario.slo,
                origin=start,
                target_concurrency=target_concurrency(phase.load),
            )
            for rec in mine:
                acc.add(rec)
        ended = max((r.end for r in mine), default=start)
        in_flight = lost.progress.in_flight if lost.progress.phase == phase.name else 0
        losses.append(
            Loss(
                shard=lost.shard,
                phase=phase.name,
                cause=lost.cause,
                exit_status=lost.exit_status,
                noticed_at=round(now, 3),
                records=len(mine),
                in_flight=in_flight,
                in_flight_at=round(lost.progress.at, 3),
            )
        )
        say(
            f"worker {lost.shard} lost in phase {phase.name} at {now:.1f} s ({lost.cause}): "
            f"{len(mine)} of its requests kept, {in_flight} in flight at "
            f"{lost.progress.at:.1f} s lost; the other shards finish the phase"
        )
        return PhaseResult(PhaseTiming(phase.name, start, ended, len(mine), True), acc)

    def save_summary(final: bool) -> RunSummary:
        doc = _summary(
            scenario,
            opts,
            run_dir,
            started_at,
            origin,
            origin_epoch,
            urls,
            model,
            simulated,
            shards_n,
            timings,
            accumulators,
            server_marks,
            scraper,
            combine_verdicts(
                verdicts,
                {
                    p.name: phase_in_flight(accumulators[p.name], p.load)
                    for p in scenario.phases
                    if p.name in accumulators
                },
            ),
            status,
            reason,
            losses,
            warnings,
            final,
        )
        try:
            write_json(run_dir / "summary.json", doc)
        except OSError as exc:
            summary_errors.append(f"cannot write {run_dir / 'summary.json'}: {exc.strerror or exc}")
            write_failed.set()
        return doc

    async def run_all(phase: PhaseConfig, start: float) -> None:
        name = phase.name
        results: list[PhaseResult | None] = [None] * len(shards)

        async def one(k: int) -> None:
            try:
                results[k] = await shards[k].run_phase(name, start)
            except WorkerLost as lost:  # the other shards go on with their share
                results[k] = _lost_shard(lost, phase, start)

        async with anyio.create_task_group() as phase_tg:
            for k in range(len(shards)):
                phase_tg.start_soon(one, k)
        merged = _merge([r for r in results if r is not None])
        timings.append(merged.timing)
        if merged.accumulator is not None:
            accumulators[name] = merged.accumulator

    startup_error: WorkerFailed | None = None

    async def stop_on_write_failure() -> None:
        await write_failed.wait()
        why = "the results cannot be written"
        stop.stop_sending(why)
        for shard in shards:  # what is in flight could not be recorded either
            await shard.stop_sending(why)
            await shard.cancel()

    async def measure(tg: anyio.abc.TaskGroup) -> None:
        nonlocal status, reason
        tg.start_soon(stop_on_write_failure)
        if opts.handle_signals:
            tg.start_soon(_watch_signals, stop, say, shards, received)
        if scraper is not None:
            await scraper.start(tg)
        tg.start_soon(progress.run)
        for phase in phases:
            if stop.stopping.is_set() or losses:
                break
            if scraper is not None:
                server_marks[f"{phase.name}:start"] = await scraper.mark()
            start = perf_counter() - origin + (_START_MARGIN_S if shards_n > 1 else 0.0)
            progress.begin_phase(phase.name, phase.load, start)
            await run_all(phase, start)
            if scraper is not None:
                server_marks[f"{phase.name}:end"] = await scraper.mark()
            if phase.name != WARMUP:
                save_summary(final=False)
        if losses:
            status = "incomplete"
            reason = "; ".join(
                f"worker {x.shard} lost in phase {x.phase}: {x.cause}" for x in losses
            )
        elif write_failed.is_set():
            status = "incomplete"
            reason = _write_failure(log, summary_errors)
        elif stop.stopping.is_set():
            status, reason = "interrupted", stop.reason

    async with contextlib.AsyncExitStack() as cleanup:
        if scraper is not None:
            cleanup.callback(scraper.close)
        try:
            async with anyio.create_task_group() as tg:
                # Payloads first: images are synthesised and encoded before any phase starts.
                built = perf_counter()
                if shards_n == 1:
                    local.serve(tg)
                else:
                    for process in processes:
                        await process.start(tg)
                try:
                    descriptions = [await shard.prepare() for shard in shards]
                except WorkerFailed as exc:  # raised after the task group, in one line
                    startup_error = exc
                else:
                    how = "" if shards_n == 1 else f" in {shards_n} worker processes"
                    what = describe_built(
                        scenario.workload, [orjson.loads(d) for d in descriptions]
                    )
                    say(f"workload ready{how} in {perf_counter() - built:.1f} s: {what}")
                    await measure(tg)
                for shard in shards:
                    verdicts.append(await shard.close())
                tg.cancel_scope.cancel()
        finally:
            log.close()
            progress.clear()
    if startup_error is not None:
        raise startup_error
    summary = save_summary(final=True)
    if write_failed.is_set():
        if status == "completed":  # only the final summary failed
            status, reason = "incomplete", _write_failure(log, summary_errors)
        say(f"warning: {_write_failure(log, summary_errors)}")
    try:
        for name, acc in accumulators.items():
            if acc.histograms.windows:
                acc.histograms.write_interval_logs(
                    run_dir / "histograms", origin_epoch, prefix=f"{name}."
                )
    except OSError as exc:
        say(f"warning: no histogram logs: {exc.strerror or exc}")
    if opts.report and not write_failed.is_set():
        report_after_run(run_dir, say)  # report.html; never raises, only warns
    signum = received[0] if received and status == "interrupted" else 0
    return RunResult(run_dir, summary, status, reason, signum)


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
) -> RunSummary:
    return build_summary(
        SummaryInputs(
            scenario, opts.transport, run_dir, started_at, origin, origin_epoch, urls, model,
            simulated, workers, timings, accumulators, server_marks, scraper, client, status,
            reason, losses, warnings, final,
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
