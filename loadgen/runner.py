"""Phases and workers: turns a scenario's load into timed requests, one shard at a time.

A shard (this process, or one of several workers or machines) sends exactly the requests that
`loadgen.schedule` assigns to it, on the run's common clock: `origin` is the perf_counter() value of
the run's start instant. Each finished request's record goes to the sink at once, so nothing that
was measured is lost on an error or an interrupt.

A phase bounded by `duration` stops sending at it, then waits for its requests in flight; with
`drain_timeout` those still in flight `drain_timeout` seconds later are cancelled (CANCELLED).

Latency from the intended send time: in open-loop modes each request's `intended` time is its slot in
the schedule, even when it is sent late (a max-concurrency cap, a slow event loop); in closed loop
the intended time is when its stream became free, i.e. the actual send, unless the stream backed
off after a connect error, a 429 or a 503 (`loadgen.backoff`): then the wait is schedule lag. The
open loop never backs off: it follows its schedule whatever the server answers.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Protocol

import anyio

from loadgen import schedule
from loadgen.backoff import Backoff
from loadgen.client import Follow, Transport
from loadgen.config import LoadConfig, PhaseConfig
from loadgen.records import RequestRecord


class RecordSink(Protocol):
    def add(self, rec: RequestRecord) -> None: ...


class PhaseRequests(Protocol):
    def body(self, i: int) -> bytes: ...

    def image_ids(self, i: int) -> list[str]: ...

    def body_id(self, i: int) -> int | None: ...

    def invalid_kind(self, i: int) -> str: ...

    def ready(self, i: int) -> bool: ...

    async def wait(self, i: int) -> None: ...


@dataclass(slots=True)
class StopControl:
    """Set when the shard must send no new request (Ctrl-C, or a stop from the parent)."""

    stopping: anyio.Event = field(default_factory=anyio.Event)
    reason: str = ""

    def stop_sending(self, reason: str) -> None:
        if not self.stopping.is_set():
            self.reason = reason
            self.stopping.set()


@dataclass(slots=True)
class PhaseTiming:
    name: str
    started: float  # run clock
    ended: float
    sent: int
    interrupted: bool


@dataclass(slots=True)
class ShardContext:
    transport: Transport
    urls: Sequence[str]  # full endpoint URLs, used round-robin by request index
    sink: RecordSink
    origin: float  # perf_counter() at the run's start instant
    shard: int = 0
    shards: int = 1
    seed: int = 0
    stop: StopControl = field(default_factory=StopControl)
    in_flight: int = 0
    # The records of the requests in flight (by id): the live progress reads what they have
    # streamed so far (their chunk lists fill as chunks arrive).
    live: dict[int, RequestRecord] = field(default_factory=dict)
    # perf_counter() after which the phase's requests still in flight are cancelled (the phase's
    # duration plus its drain_timeout); None: they all run to their end.
    cut: float | None = None


async def _sleep_until(deadline: float, stop: StopControl) -> None:
    """Sleep to an absolute perf_counter() deadline, waking early if the run is stopping."""
    delay = deadline - perf_counter()
    if delay > 0:
        with anyio.move_on_after(delay):
            await stop.stopping.wait()


def _record(
    ctx: ShardContext, phase: str, reqs: PhaseRequests, index: int, intended: float
) -> RequestRecord:
    urls = ctx.urls
    return RequestRecord(
        index=index,
        phase=phase,
        shard=ctx.shard,
        target=urls[index % len(urls)],
        intended=intended,
        sent=intended,
        end=intended,
        images=reqs.image_ids(index),
        body=reqs.body_id(index),
        invalid=reqs.invalid_kind(index),
    )


async def _send_one(
    ctx: ShardContext, phase: str, reqs: PhaseRequests, index: int, intended: float
) -> None:
    if not reqs.ready(index):
        # Its body is still being built: the wait counts from the intended time, as schedule lag.
        await reqs.wait(index)
    await _send_record(ctx, _record(ctx, phase, reqs, index, intended), reqs.body(index))


async def _send_record(
    ctx: ShardContext, rec: RequestRecord, body: bytes, follow: Follow | None = None
) -> None:
    ctx.in_flight += 1
    ctx.live[id(rec)] = rec
    try:
        if ctx.cut is None:
            await ctx.transport.send(rec, rec.target, body, ctx.origin, follow)
        else:
            # The transport marks a cancelled request CANCELLED; the scope says why.
            with anyio.CancelScope(deadline=anyio.current_time() + ctx.cut - perf_counter()) as cut:
                await ctx.transport.send(rec, rec.target, body, ctx.origin, follow)
            if cut.cancelled_caught:
                rec.error = _CUT
    finally:
        ctx.in_flight -= 1
        del ctx.live[id(rec)]
        ctx.sink.add(rec)


_CUT = "cancelled: still in flight at the phase's drain_timeout"


class _Stream:
    """One closed-loop stream: its next request, built when the stream becomes free.

    The transport may ask for it (`Follow`) from its I/O callback the moment the current
    response ends and send it at once; the stream's task then takes over that request after the
    finished one's bookkeeping. Either way a request's intended time is when its stream became
    free. A request whose body is still being built is left to the task, which waits for it.

    After a connect error, a 429 or a 503 the task waits (`loadgen.backoff`) before building the
    next request; the transport never sends ahead after such an answer (only after a 200).
    """

    __slots__ = (
        "_backoff", "_deadline", "_indices", "_name", "_next", "_reqs", "_wait", "ahead", "ctx",
        "sent",
    )  # fmt: skip

    def __init__(
        self,
        ctx: ShardContext,
        name: str,
        reqs: PhaseRequests,
        indices: Iterator[int],
        deadline: float | None,
        rng: random.Random | None = None,
    ) -> None:
        self.ctx = ctx
        self._name = name
        self._reqs = reqs
        self._indices = indices
        self._deadline = deadline
        self._next: int | None = None  # an index drawn whose body was not built yet
        # (rec, body, sent): requests built ahead of the task, in order; all sent by the
        # transport but maybe the last (to another endpoint). More than one when a response
        # ended before the task took over the one sent before it.
        self.ahead: deque[tuple[RequestRecord, bytes, bool]] = deque()
        self.sent = 0
        self._backoff = Backoff(rng or random.Random(0))
        self._wait = 0.0  # seconds to wait before the next request (a backoff)

    def ended(self, rec: RequestRecord) -> None:
        """The task's bookkeeping of a finished request: whether the stream backs off."""
        self._wait = self._backoff.after(rec)

    def _due(self) -> tuple[int, float] | None:
        """The next index and the instant the stream became free, unless the stream is done."""
        if self.ctx.stop.stopping.is_set():
            return None
        now = perf_counter()
        if self._deadline is not None and now >= self._deadline:
            return None
        if self._next is None:
            self._next = next(self._indices, None)
        if self._next is None:
            return None
        return self._next, now

    def _build(self, index: int, now: float) -> tuple[RequestRecord, bytes]:
        self._next = None
        rec = _record(self.ctx, self._name, self._reqs, index, now - self.ctx.origin)
        return rec, self._reqs.body(index)

    def next_request(self, url: str) -> tuple[RequestRecord, bytes] | None:
        if self._wait:
            return None  # backing off: the task sends the next request after its wait
        if self.ahead and not self.ahead[-1][2]:
            return None  # one built for another endpoint waits for the task
        due = self._due()
        if due is None or not self._reqs.ready(due[0]):
            return None
        rec, body = self._build(*due)
        if rec.target != url:  # another endpoint: the task sends it, from its own turn
            self.ahead.append((rec, body, False))
            return None
        self.ahead.append((rec, body, True))
        self.sent += 1
        return rec, body

    async def take(self) -> tuple[RequestRecord, bytes] | None:
        """The request the task sends (or takes over) next, if any."""
        if not self.ahead:
            free = perf_counter()
            wait, self._wait = self._wait, 0.0
            if wait:
                # The stream became free now; the wait is schedule lag (intended time kept).
                until = free + wait
                if self._deadline is not None and until >= self._deadline:
                    # The wait outlasts the phase: the stream sends nothing more.
                    await _sleep_until(self._deadline, self.ctx.stop)
                    return None
                await _sleep_until(until, self.ctx.stop)
            due = self._due()
            if due is None:
                return None
            if wait:
                due = due[0], free
            if not self._reqs.ready(due[0]):
                # Its body is still being built: the wait counts from when the stream became
                # free, as schedule lag.
                await self._reqs.wait(due[0])
            self.sent += 1
            return self._build(*due)
        rec, body, sent = self.ahead.popleft()
        if not sent:
            self.sent += 1
            rec.intended = perf_counter() - self.ctx.origin
        return rec, body

    def abandoned(self) -> list[RequestRecord]:
        """Requests sent ahead that the task will not take over (it was cancelled)."""
        left = [rec for rec, _, sent in self.ahead if sent]
        self.ahead.clear()
        return left


async def _closed_loop(
    ctx: ShardContext, name: str, load: LoadConfig, reqs: PhaseRequests, start: float
) -> int:
    """N streams, each sending its next request as soon as its previous one ended."""
    streams = schedule.closed_loop_streams(load.concurrency, load.ramp_up, ctx.shard, ctx.shards)
    lanes = schedule.phase_lanes(load, ctx.shards)
    indices = schedule.shard_indices(load.requests or None, lanes, ctx.shard, ctx.shards)
    deadline = start + load.duration if load.duration else None
    all_streams: list[_Stream] = []

    async def stream(number: int, offset: float) -> None:
        # Backoff jitter from the run's seed: the same run draws the same waits.
        rng = random.Random(f"backoff\x1f{ctx.seed}\x1f{name}\x1f{ctx.shard}\x1f{number}")
        me = _Stream(ctx, name, reqs, indices, deadline, rng)
        all_streams.append(me)
        await _sleep_until(start + offset, ctx.stop)
        try:
            while (nxt := await me.take()) is not None:
                await _send_record(ctx, nxt[0], nxt[1], me)
                me.ended(nxt[0])
        finally:
            # The transport marked them cancelled and freed their connection; they were sent,
            # so they are recorded like any other request.
            for left in me.abandoned():
                if ctx.cut is not None and perf_counter() >= ctx.cut:
                    left.error = _CUT
                ctx.sink.add(left)

    async with anyio.create_task_group() as tg:
        for number, offset in enumerate(streams):
            tg.start_soon(stream, number, offset)
    return sum(s.sent for s in all_streams)


async def _open_loop(
    ctx: ShardContext, name: str, load: LoadConfig, reqs: PhaseRequests, start: float, seed: int
) -> int:
    """Requests sent at the schedule's absolute times, whatever the server's state."""
    cap = None
    if load.max_concurrency:
        # The cap is shared over the shards exactly as closed-loop streams are, so all shards
        # together never have more than `max_concurrency` requests in flight.
        share = schedule.shard_share(load.max_concurrency, ctx.shard, ctx.shards)
        if share < 1:
            raise ValueError(
                f"max_concurrency {load.max_concurrency} cannot be shared over {ctx.shards} shards"
            )
        cap = anyio.Semaphore(share)
    sent = 0

    async def capped(index: int, intended: float, slot: anyio.Semaphore) -> None:
        try:
            await _send_one(ctx, name, reqs, index, intended)
        finally:
            slot.release()

    async with anyio.create_task_group() as tg:
        for index, offset in schedule.open_loop_arrivals(load, seed, ctx.shard, ctx.shards):
            deadline = start + offset
            await _sleep_until(deadline, ctx.stop)
            if ctx.stop.stopping.is_set():
                break
            intended = deadline - ctx.origin
            sent += 1
            if cap is None:
                tg.start_soon(_send_one, ctx, name, reqs, index, intended)
            else:
                # Waiting for a free slot delays the send, never the intended time: the wait
                # shows up as schedule lag and in the latencies from the intended time.
                await cap.acquire()
                if ctx.stop.stopping.is_set():
                    cap.release()
                    break
                tg.start_soon(capped, index, intended, cap)
    return sent


async def run_phase(
    ctx: ShardContext,
    phase: PhaseConfig,
    reqs: PhaseRequests,
    *,
    start: float | None = None,
) -> PhaseTiming:
    """Run one phase of this shard. `start` (perf_counter) lets shards begin together."""
    start = perf_counter() if start is None else start
    await _sleep_until(start, ctx.stop)
    load = phase.load
    if load.duration and load.drain_timeout is not None:
        ctx.cut = start + load.duration + load.drain_timeout
    try:
        if load.mode == "closed":
            sent = await _closed_loop(ctx, phase.name, load, reqs, start)
        else:
            seed = schedule.phase_seed(ctx.seed, phase.name)
            sent = await _open_loop(ctx, phase.name, load, reqs, start, seed)
    finally:
        ctx.cut = None
    return PhaseTiming(
        name=phase.name,
        started=start - ctx.origin,
        ended=perf_counter() - ctx.origin,
        sent=sent,
        interrupted=ctx.stop.stopping.is_set(),
    )
