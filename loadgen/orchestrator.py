"""One whole run: target, workload, results folder, phases, server scrape, self-check, summary.

The order matters for honest numbers: everything expensive (the simulator's start, model discovery,
image synthesis and base64 encoding) happens before the run's clock starts; while it runs only
streaming, timestamping and bookkeeping per finished request remain.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any

import anyio
import anyio.lowlevel
import httpx

from loadgen import schedule
from loadgen.client import ClientSettings, TransportName, endpoint_url, make_transport, server_root
from loadgen.config import LoadConfig, PhaseConfig, Scenario
from loadgen.errors import LoadgenError
from loadgen.metrics.scrape import MetricsScraper, ServerSnapshot, compare_tokens, diff, scrape_once
from loadgen.metrics.selfcheck import SelfCheck
from loadgen.metrics.summary import SCHEMA_VERSION, PhaseAccumulator, compare_phases
from loadgen.records import RequestRecord
from loadgen.results.console import Progress
from loadgen.results.files import RequestLog, environment, new_run_dir, write_json
from loadgen.runner import WARMUP, PhaseTiming, ShardContext, StopControl, run_phase
from loadgen.scenario import scenario_to_json
from loadgen.target import read_api_key, resolve_model, urls_from_environment
from loadgen.workload import Workload

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class RunOptions:
    run_dir: str | None = None  # exact results folder (default: a new one under output.directory)
    transport: TransportName = "aiohttp"
    sim_args: tuple[str, ...] = ()  # extra `loadgen sim` arguments when the simulator is started
    handle_signals: bool = True


@dataclass(slots=True)
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    status: str  # "completed" or "interrupted"
    reason: str = ""


@dataclass(slots=True)
class RunSink:
    """Where every finished request goes.

    The request log line is written at once (nothing measured is lost), while the heavier
    bookkeeping (histograms, windows) is queued and done by `bookkeeper()` one record at a time,
    yielding in between: requests that end together must not stall the streams still running.
    """

    log: RequestLog
    accumulators: dict[str, PhaseAccumulator] = field(default_factory=dict)
    pending: deque[RequestRecord] = field(default_factory=deque)
    wake: anyio.Event = field(default_factory=anyio.Event)
    done: int = 0
    errors: int = 0
    generation_tokens: int = 0
    recent: list[tuple[float, int]] = field(default_factory=list)

    def add(self, rec: RequestRecord) -> None:
        self.log.write(rec)
        if rec.phase == WARMUP:
            return
        self.pending.append(rec)
        self.wake.set()
        self.done += 1
        if not rec.outcome.is_success:
            self.errors += 1
        if rec.completion_tokens:
            self.generation_tokens += rec.completion_tokens
            self.recent.append((rec.end, rec.completion_tokens))

    def drain(self) -> None:
        """Account for every queued record now (at a phase's end, before its summary)."""
        while self.pending:
            rec = self.pending.popleft()
            self.accumulators[rec.phase].add(rec)

    async def bookkeeper(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = anyio.Event()
            while self.pending:
                rec = self.pending.popleft()
                self.accumulators[rec.phase].add(rec)
                await anyio.lowlevel.checkpoint()


def _pool_size(scenario: Scenario) -> int:
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


def _phases_with_warmup(scenario: Scenario) -> list[PhaseConfig]:
    phases = list(scenario.phases)
    first = phases[0].load
    if first.warmup_requests:
        load = dataclasses.replace(
            first, requests=first.warmup_requests, duration=0.0, warmup_requests=0
        )
        phases.insert(0, PhaseConfig(name=WARMUP, load=load))
    return phases


def _planned_requests(load: LoadConfig) -> int:
    """Requests a phase can send, for building its payloads ahead. Duration-only phases get an
    estimate; the workload cycles past it by its documented rule."""
    if load.requests:
        return load.requests
    bound = schedule.arrival_bound(load)
    if bound is not None:
        return bound
    return max(load.concurrency * 8, 64)  # a closed loop bounded by time: cycles past this


async def run_scenario(scenario: Scenario, opts: RunOptions, say: Say) -> RunResult:
    run_dir = (
        Path(opts.run_dir)
        if opts.run_dir
        else new_run_dir(scenario.output.directory, scenario.name)
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    urls = urls_from_environment(scenario.target)
    simulator = None
    try:
        if not urls:
            from loadgen.sim.process import SimulatorProcess

            simulator = SimulatorProcess(
                args=list(opts.sim_args), log_path=str(run_dir / "simulator.log")
            )
            base = simulator.start()
            urls = (base,)
            say(
                f"no URL given: started the built-in vLLM simulator at {base} (log: {run_dir / 'simulator.log'})"
            )
        return await _run(scenario, opts, say, run_dir, urls, simulator is not None)
    finally:
        if simulator is not None:
            simulator.stop()


async def _run(
    scenario: Scenario,
    opts: RunOptions,
    say: Say,
    run_dir: Path,
    urls: tuple[str, ...],
    simulated: bool,
) -> RunResult:
    target = scenario.target
    settings = ClientSettings(
        pool_size=_pool_size(scenario),
        connect_timeout=target.connect_timeout,
        read_timeout=target.read_timeout,
        verify_tls=target.verify_tls,
        headers=target.headers,
        api_key=read_api_key(target),
    )
    model, warnings = await resolve_model(target, urls, settings)
    for w in warnings:
        say(f"warning: {w}")

    # Payloads first: images are synthesised and base64-encoded before the clock starts.
    built = perf_counter()
    workload = Workload(scenario.workload, scenario.seed, model)
    phases = _phases_with_warmup(scenario)
    prepared = {}
    for phase in phases:
        prepared[phase.name] = workload.prepare(
            phase.name,
            _planned_requests(phase.load),
            repeat_of=phase.repeat_of,
            warmup=phase.name == WARMUP,
        )
    say(f"workload ready in {perf_counter() - built:.1f} s: {workload.describe()}")

    log = RequestLog(run_dir / "requests.jsonl")
    window = scenario.output.window
    sink = RunSink(log)
    accumulators = sink.accumulators
    transport = make_transport(opts.transport, settings)
    stop = StopControl()
    endpoints = [endpoint_url(u, target.endpoint) for u in urls]
    started_at = datetime.now(UTC)
    origin = perf_counter()
    origin_epoch = time.time()
    ctx = ShardContext(
        transport=transport, urls=endpoints, sink=sink, origin=origin, seed=scenario.seed, stop=stop
    )
    timings: list[PhaseTiming] = []
    server_marks: dict[str, ServerSnapshot | None] = {}
    metrics_url = server_root(urls[0]) + "/metrics"
    scraper = (
        MetricsScraper(
            metrics_url, interval=target.scrape_interval, origin=origin, verify=target.verify_tls
        )
        if target.scrape_metrics
        else None
    )
    selfcheck = SelfCheck()
    progress = Progress(
        sink, stop, enabled=scenario.output.progress and sys.stderr.isatty(), origin=origin
    )
    status, reason = "completed", ""

    def save_summary(final: bool) -> dict[str, Any]:
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
            timings,
            accumulators,
            server_marks,
            scraper,
            selfcheck,
            status,
            reason,
            warnings,
            final,
        )
        write_json(run_dir / "summary.json", doc)
        return doc

    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0), verify=target.verify_tls) as control:
        try:
            async with anyio.create_task_group() as tg:
                if opts.handle_signals:
                    tg.start_soon(_watch_signals, stop, say, ctx)
                if scraper is not None:
                    await scraper.start(tg, control)
                tg.start_soon(selfcheck.run)
                tg.start_soon(progress.run)
                tg.start_soon(sink.bookkeeper)
                with stop.cancel_scope:
                    for phase in phases:
                        if stop.stopping.is_set():
                            break
                        if target.scrape_metrics:
                            server_marks[f"{phase.name}:start"] = await scrape_once(
                                control, metrics_url, origin=origin
                            )
                        progress.phase = phase.name
                        start = perf_counter()
                        if phase.name != WARMUP:
                            # Windows start with the phase, so no window mixes two phases.
                            accumulators[phase.name] = PhaseAccumulator(
                                phase.name, window=window, slo=scenario.slo, origin=start - origin
                            )
                        # Until run_phase returns, a cancelled phase still gets its entry.
                        timings.append(
                            PhaseTiming(phase.name, start - origin, start - origin, 0, True)
                        )
                        timing = await run_phase(ctx, phase, prepared[phase.name], start=start)
                        sink.drain()
                        timings[-1] = timing
                        if target.scrape_metrics:
                            server_marks[f"{phase.name}:end"] = await scrape_once(
                                control, metrics_url, origin=origin
                            )
                        if phase.name != WARMUP:
                            save_summary(final=False)
                if stop.cancel_scope.cancelled_caught and timings:
                    timings[-1].ended = perf_counter() - origin
                if stop.stopping.is_set():
                    status, reason = "interrupted", stop.reason
                tg.cancel_scope.cancel()
        finally:
            await transport.aclose()
            sink.drain()
            log.close()
            progress.clear()
    summary = save_summary(final=True)
    for name, acc in accumulators.items():
        if acc.histograms.windows:
            acc.histograms.write_interval_logs(
                run_dir / "histograms", origin_epoch, prefix=f"{name}."
            )
    return RunResult(run_dir=run_dir, summary=summary, status=status, reason=reason)


async def _watch_signals(stop: StopControl, say: Say, ctx: ShardContext) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if not stop.stopping.is_set():
                stop.stop_sending("interrupted by the user")
                say(
                    f"\nstopping: no new requests; waiting for {ctx.in_flight} in flight (Ctrl-C again to cancel them)"
                )
            else:
                say("cancelling the requests in flight")
                stop.cancel_in_flight()


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
    timings: list[PhaseTiming],
    accumulators: dict[str, PhaseAccumulator],
    server_marks: dict[str, ServerSnapshot | None],
    scraper: MetricsScraper | None,
    selfcheck: SelfCheck,
    status: str,
    reason: str,
    warnings: list[str],
    final: bool,
) -> dict[str, Any]:
    phases: dict[str, Any] = {}
    server: dict[str, Any] = {}
    for timing in timings:
        if timing.name == WARMUP:
            continue
        acc = accumulators[timing.name]
        phases[timing.name] = acc.finish(started=timing.started, ended=timing.ended)
        start, end = (
            server_marks.get(f"{timing.name}:start"),
            server_marks.get(f"{timing.name}:end"),
        )
        if start is not None and end is not None:
            delta = diff(start, end)
            server[timing.name] = {
                "delta": delta,
                "comparison": compare_tokens(phases[timing.name], delta),
            }
    comparisons = {}
    for phase in scenario.phases:
        if phase.repeat_of and phase.name in phases and phase.repeat_of in phases:
            comparisons[f"{phase.repeat_of}->{phase.name}"] = compare_phases(
                phases[phase.repeat_of], phases[phase.name]
            )
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "status": status if final else "running",
        "reason": reason,
        "run": {
            "name": scenario.name,
            "directory": str(run_dir),
            "started_at": started_at.isoformat(),
            "origin_epoch": origin_epoch,
            "duration_s": perf_counter() - origin,
            "seed": scenario.seed,
            "transport": opts.transport,
            "urls": list(urls),
            "model": model,
            "simulator": simulated,
        },
        "scenario": scenario_to_json(scenario),
        "phases": phases,
        "phase_comparisons": comparisons,
        "server": {
            "phases": server,
            "run": scraper.summary() if scraper else None,
            "timeseries": scraper.series() if scraper else [],
        },
        "client": selfcheck.verdict(),
        "warnings": warnings,
        "environment": environment(),
    }
    return doc


def exit_status(result: RunResult) -> tuple[int, str]:
    """0 for a completed run; otherwise a non-zero status and the one-line reason."""
    if result.status == "interrupted":
        return 130, f"interrupted ({result.reason}); results so far in {result.run_dir}"
    totals = [p.get("requests", {}) for p in result.summary["phases"].values()]
    sent = sum(t.get("total", 0) for t in totals)
    ok = sum(t.get("succeeded", 0) for t in totals)
    if sent and not ok:
        return 1, f"every request failed; see {result.run_dir / 'summary.json'}"
    return 0, ""


class RunFailed(LoadgenError):
    pass
