"""A shard: one part of a run's load, with everything it needs to run anywhere.

Given a `ShardJob` (the resolved scenario, the model and URLs, its number and the shard count, and
the run's clock), a shard builds its own share of the payloads, sends exactly its requests
(`loadgen.schedule` splits concurrency, rates and request indices), and returns per phase its
timing and its `PhaseAccumulator` state. The state merges exactly with the other shards' (exact
HdrHistogram bucket addition), so N shards report what one process would have.

`Shard` is all the orchestrator knows of one: `LocalShard` runs in this process,
`loadgen.workers.ProcessShard` in a child process, and a shard on another machine would implement
the same protocol (`loadgen.shards` decides which kind a run uses, and how many). Records reach the
run the same way from every kind: as requests.jsonl lines (`WriteLine`), encoded where they are
measured.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
import orjson

from loadgen import schedule
from loadgen.client import ClientSettings, Transport, TransportName, make_transport
from loadgen.config import WARMUP, LoadConfig, PhaseConfig, Scenario
from loadgen.errors import LoadgenError
from loadgen.metrics.selfcheck import SelfCheck
from loadgen.metrics.summary import PhaseAccumulator
from loadgen.records import RequestRecord
from loadgen.results.schema import ShardPlace
from loadgen.runner import PhaseTiming, ShardContext, StopControl, run_phase
from loadgen.workload import PhaseRequests, Workload
from loadgen.workload.invalid import settle


@dataclass(frozen=True, slots=True)
class ShardJob:
    scenario: Scenario
    model: str
    endpoints: tuple[str, ...]  # full URLs of the streamed endpoint, used round-robin
    settings: ClientSettings  # with api_key=None: each shard reads the key itself
    transport: TransportName
    shard: int
    shards: int
    origin: float  # perf_counter() of the run's start instant (CLOCK_MONOTONIC on this host)
    phases: tuple[PhaseConfig, ...]  # the phases to run, warm-up included


# One finished request as a requests.jsonl line (JSON; the trailing newline may be left out), the
# one way records reach the run from any kind of shard.
WriteLine = Callable[[bytes], None]
_RECORD_LINE = orjson.OPT_APPEND_NEWLINE


def record_writer(write: WriteLine) -> Callable[[RequestRecord], None]:
    """A shard's record sink over `write`: each record encoded once, where it was measured.
    Times go out at full float precision: rounding 300 floats in Python costs ten times more
    than serialising them, and this runs once per request during the run."""

    def write_record(rec: RequestRecord) -> None:
        write(orjson.dumps(rec.to_json(), option=_RECORD_LINE))

    return write_record


@dataclass(slots=True)
class PhaseResult:
    timing: PhaseTiming
    accumulator: PhaseAccumulator | None  # None for the warm-up

    def to_json(self) -> dict[str, Any]:
        t = self.timing
        return {
            "timing": {
                "name": t.name,
                "started": t.started,
                "ended": t.ended,
                "sent": t.sent,
                "interrupted": t.interrupted,
            },
            "state": self.accumulator.to_state() if self.accumulator is not None else None,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PhaseResult:
        t = doc["timing"]
        timing = PhaseTiming(t["name"], t["started"], t["ended"], t["sent"], t["interrupted"])
        state = doc["state"]
        return cls(timing, PhaseAccumulator.from_state(state) if state is not None else None)


@dataclass(frozen=True, slots=True)
class ShardProgress:
    """What a shard has done so far in its current phase, for the live progress line.

    `tokens` counts generated tokens received: finished requests' usage (their streamed count
    when they have none) plus what the requests in flight have streamed so far. A worker sends
    one about once a second; the parent's progress line adds up the shards' latest.
    """

    phase: str = ""
    done: int = 0  # requests ended (any outcome)
    errors: int = 0  # ... of which failed
    tokens: int = 0
    in_flight: int = 0
    at: float = 0.0  # when these counts were read (run clock)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ShardProgress:
        return cls(
            str(doc["phase"]),
            int(doc["done"]),
            int(doc["errors"]),
            int(doc["tokens"]),
            int(doc["in_flight"]),
            float(doc["at"]),
        )


def streamed_tokens(rec: RequestRecord) -> int:
    """Generated tokens a request has received: its usage when known, else its chunks' counts
    (one a chunk without continuous usage)."""
    if rec.completion_tokens is not None:
        return rec.completion_tokens
    return sum(rec.chunk_tokens) if rec.chunk_tokens else len(rec.chunk_times)


class LiveTokens:
    """Tokens streamed so far by the requests in flight, read from their records' chunk lists
    (filled by the stream parser) about once a second. Each list is summed only past where the
    previous reading stopped, so a reading costs about one step per chunk since the last."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        # id -> (record, chunks counted, their tokens); the record is kept so its id is not reused
        self._seen: dict[int, tuple[RequestRecord, int, int]] = {}

    def count(self, live: Iterable[RequestRecord]) -> int:
        seen = self._seen
        kept: dict[int, tuple[RequestRecord, int, int]] = {}
        total = 0
        for rec in live:
            tokens = rec.chunk_tokens
            if not tokens:  # no per-chunk counts (yet): one token a chunk
                total += len(rec.chunk_times)
                continue
            key = id(rec)
            prev = seen.get(key)
            n, s = (prev[1], prev[2]) if prev is not None and prev[0] is rec else (0, 0)
            m = len(tokens)
            if m > n:
                s += sum(tokens[n:m])
            kept[key] = (rec, m, s)
            total += s
        self._seen = kept
        return total


class ShardFailed(LoadgenError):
    """A shard could not start or serve its job (a workload problem, a worker that failed)."""


class ShardLost(ShardFailed):
    """A shard ended in the middle of a phase: what is known of what it took along."""

    def __init__(
        self, shard: int, cause: str, exit_status: int | None, progress: ShardProgress
    ) -> None:
        super().__init__(f"worker {shard} lost: {cause}")
        self.shard = shard
        self.cause = cause
        self.exit_status = exit_status  # a process's status; negative: the signal that ended it
        self.progress = progress  # its last progress reading: requests in flight, as of when


class Shard(Protocol):
    """What a run needs of a shard, wherever it runs. In order: `start(tg)`, `prepare()` before
    the run's clock matters, `run_phase` for each phase, then `close()`; `progress`,
    `stop_sending` and `cancel` at any time in between."""

    @property
    def start_margin(self) -> float: ...  # s between a phase's announcement and its start

    @property
    def place(self) -> str: ...  # where it runs, for messages: "" (this process), "worker process"

    # On a cluster: its node and its clock against the run's, once started; None on this host.
    @property
    def placed(self) -> ShardPlace | None: ...

    async def start(self, tg: anyio.abc.TaskGroup) -> None: ...  # its background tasks, in tg

    # Returns what it built, as the JSON text of `Workload.built()` (it may cross a pipe).
    # Raises ShardFailed when it cannot.
    async def prepare(self) -> str: ...

    # start: run clock. Raises ShardLost when the shard ended in the middle of the phase.
    async def run_phase(self, name: str, start: float) -> PhaseResult: ...

    async def stop_sending(self, reason: str) -> None: ...

    async def cancel(self) -> None: ...

    async def close(self) -> dict[str, Any]: ...  # the shard's self-check verdict

    def progress(self) -> ShardProgress: ...  # the latest figures of its current phase


def phases_with_warmup(scenario: Scenario) -> tuple[PhaseConfig, ...]:
    phases = list(scenario.phases)
    first = phases[0].load
    if first.warmup_requests:
        load = dataclasses.replace(
            first, requests=first.warmup_requests, duration=0.0, warmup_requests=0
        )
        # (the warm-up sends the first phase's workload: it warms what is measured)
        phases.insert(0, PhaseConfig(name=WARMUP, load=load, workload=phases[0].workload))
    return tuple(phases)


def planned_requests(load: LoadConfig) -> int | None:
    """Requests a phase sends at most, for building its payloads before it: its count, or a
    bound for an open loop bounded by time; None for a closed loop bounded only by time, whose
    count the server's speed decides (its payloads are built ahead of need while it runs)."""
    return load.requests or schedule.arrival_bound(load)


def build_ahead(load: LoadConfig, shards: int) -> int:
    """A shard's requests kept built ahead of need in a phase of unknown count: 8 a stream,
    at least 64 in all."""
    return -(-max(load.concurrency * 8, 64) // shards)


def target_concurrency(load: LoadConfig) -> int | None:
    """What a phase asks for in flight: its streams in closed loop, an open loop's cap, or None."""
    if load.mode == "closed":
        return load.concurrency
    return load.max_concurrency or None


class BookkeepingSink:
    """Where a shard's finished requests go.

    `write` is called at once for each record (a results file line, or a line to the parent), so
    nothing measured is lost; the heavier bookkeeping (histograms, windows) is queued and done by
    `bookkeeper()` off the request's own path, once per turn of the event loop.
    """

    def __init__(self, write: Callable[[RequestRecord], None]) -> None:
        self.write = write
        self.accumulators: dict[str, PhaseAccumulator] = {}
        self.pending: deque[RequestRecord] = deque()
        self.wake = anyio.Event()
        self.counts: dict[str, list[int]] = {}  # phase -> [done, errors, tokens], for progress

    def add(self, rec: RequestRecord) -> None:
        if rec.invalid:  # a deliberately bad request: its own outcome, not an error
            settle(rec)
        self.write(rec)
        counts = self.counts.get(rec.phase)
        if counts is None:
            counts = self.counts[rec.phase] = [0, 0, 0]
        counts[0] += 1
        if not rec.outcome.is_success and not rec.invalid:
            counts[1] += 1
        counts[2] += streamed_tokens(rec)
        if rec.phase != WARMUP:
            self.pending.append(rec)
            self.wake.set()

    def drain(self) -> None:
        while self.pending:
            rec = self.pending.popleft()
            self.accumulators[rec.phase].add(rec)

    async def bookkeeper(self) -> None:
        # Everything queued is accounted for at each turn of the loop: one record per turn let a
        # busy loop (many requests finishing per turn) pile up finished records until the phase
        # ended (RSS grew with the request count; docs/performance.md). A wave of simultaneous
        # completions is one turn of about 30 us per request.
        while True:
            await self.wake.wait()
            self.wake = anyio.Event()
            self.drain()
            await anyio.lowlevel.checkpoint()


@dataclass(slots=True)
class _Running:
    transport: Transport
    ctx: ShardContext
    scope: anyio.CancelScope | None = None
    cancelled: bool = False


class LocalShard:
    """A shard in this process (the `Shard` protocol), all inside one event loop: `start(tg)`
    runs its bookkeeping and self-check beside the requests."""

    start_margin = 0.0  # alone, it starts each phase when announced
    place = ""
    placed: ShardPlace | None = None

    def __init__(self, job: ShardJob, write: WriteLine, api_key: str | None) -> None:
        self.job = job
        self.sink = BookkeepingSink(record_writer(write))
        self.selfcheck = SelfCheck()
        settings = dataclasses.replace(job.settings, api_key=api_key)
        transport = make_transport(job.transport, settings)
        self._run = _Running(
            transport=transport,
            ctx=ShardContext(
                transport=transport,
                urls=job.endpoints,
                sink=self.sink,
                origin=job.origin,
                shard=job.shard,
                shards=job.shards,
                seed=job.scenario.seed,
                stop=StopControl(),
            ),
        )
        self._prepared: dict[str, PhaseRequests] = {}
        self._sent: dict[str, int] = {}  # requests this shard sent, by phase
        self._phase = ""
        self._live_tokens = LiveTokens()

    def progress(self) -> ShardProgress:
        phase = self._phase
        done, errors, tokens = self.sink.counts.get(phase, (0, 0, 0))
        live = [rec for rec in self._run.ctx.live.values() if rec.phase == phase]
        tokens += self._live_tokens.count(live)
        at = perf_counter() - self.job.origin
        return ShardProgress(phase, done, errors, tokens, len(live), at)

    async def prepare(self) -> str:
        job = self.job
        workload = Workload(
            job.scenario.workload, job.scenario.seed, job.model, api=job.scenario.target.api
        )
        for phase in job.phases:
            self._prepared[phase.name] = workload.prepare(
                phase.name,
                planned_requests(phase.load),
                ahead=build_ahead(phase.load, job.shards),
                repeat_of=phase.repeat_of,
                warmup=phase.name == WARMUP,
                shard=job.shard,
                shards=job.shards,
                lanes=schedule.phase_lanes(phase.load, job.shards),
                workload=phase.workload,
            )
        await workload.start_builder()
        return orjson.dumps(workload.built()).decode()

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self.sink.bookkeeper)
        tg.start_soon(self.selfcheck.run)

    async def run_phase(self, name: str, start: float) -> PhaseResult:
        job = self.job
        phase = next(p for p in job.phases if p.name == name)
        begin = job.origin + start
        self._phase = name
        acc = None
        if name != WARMUP:
            # Windows start with the phase (the same instant in every shard), so no window mixes
            # two phases and the shards' windows line up for an exact merge.
            acc = PhaseAccumulator(
                name,
                window=job.scenario.output.window,
                slo=job.scenario.slo,
                origin=start,
                target_concurrency=target_concurrency(phase.load),
            )
            self.sink.accumulators[name] = acc
        timing = PhaseTiming(name, start, start, 0, True)
        if self._run.cancelled or self._run.ctx.stop.stopping.is_set():
            return PhaseResult(timing, acc)
        reqs = self._prepared[name]
        if phase.repeat_of:
            # A replay shows what this shard really sent of its source, and nothing else.
            replayable = self._sent.get(phase.repeat_of, 0)
            if not replayable:
                return PhaseResult(PhaseTiming(name, start, start, 0, False), acc)
            reqs.replayed(replayable)
        with anyio.CancelScope() as scope:
            self._run.scope = scope
            async with anyio.create_task_group() as tg:
                tg.start_soon(reqs.produce)  # builds bodies ahead of need, if the phase must
                timing = await run_phase(self._run.ctx, phase, reqs, start=begin)
                tg.cancel_scope.cancel()
        self._run.scope = None
        self._sent[name] = timing.sent
        if acc is not None:
            acc.sent.waited(reqs.waits, reqs.waited_us)
        if scope.cancelled_caught:
            timing.ended = perf_counter() - job.origin
            timing.interrupted = True
        self.sink.drain()
        return PhaseResult(timing, acc)

    async def stop_sending(self, reason: str) -> None:
        self._run.ctx.stop.stop_sending(reason)

    async def cancel(self) -> None:
        self._run.cancelled = True
        self._run.ctx.stop.stop_sending("cancelled")
        if self._run.scope is not None:
            self._run.scope.cancel()

    async def close(self) -> dict[str, Any]:
        await self._run.transport.aclose()
        self.sink.drain()
        return self.selfcheck.verdict()
