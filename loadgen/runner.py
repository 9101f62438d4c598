"""Phases and workers: turns a scenario's load into timed requests, one shard at a time.

A shard (this process, or one of several workers or machines) sends exactly the requests that
`loadgen.schedule` assigns to it, on the run's common clock: `origin` is the perf_counter() value of
the run's start instant. Each finished request's record goes to the sink at once, so nothing that
was measured is lost on an error or an interrupt.

Latency from the intended send time: in open-loop modes each request's `intended` time is its slot in
the schedule, even when it is sent late (a max-concurrency cap, a slow event loop); in closed loop
the intended time is when its stream became free, i.e. the actual send.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Protocol

import anyio

from loadgen import schedule
from loadgen.client import Follow, Transport
from loadgen.config import LoadConfig, PhaseConfig
from loadgen.records import RequestRecord

WARMUP = "warmup"


class RecordSink(Protocol):
    def add(self, rec: RequestRecord) -> None: ...


class PhaseRequests(Protocol):
    def body(self, i: int) -> bytes: ...

    def image_ids(self, i: int) -> list[str]: ...


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
    on_send: Callable[[], None] | None = None


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
    )


async def _send_one(
    ctx: ShardContext, phase: str, reqs: PhaseRequests, index: int, intended: float
) -> None:
    await _send_record(ctx, _record(ctx, phase, reqs, index, intended), reqs.body(index))


async def _send_record(
    ctx: ShardContext, rec: RequestRecord, body: bytes, follow: Follow | None = None
) -> None:
    ctx.in_flight += 1
    try:
        await ctx.transport.send(rec, rec.target, body, ctx.origin, follow)
    finally:
        ctx.in_flight -= 1
        ctx.sink.add(rec)


def _shard_indices(count: int | None, shard: int, shards: int) -> Iterator[int]:
    i = shard
    while count is None or i < count:
        yield i
        i += shards


class _Stream:
    """One closed-loop stream: its next request, built when the stream becomes free.

    The transport may ask for it (`Follow`) from its I/O callback the moment the current
    response ends and send it at once; the stream's task then takes over that request after the
    finished one's bookkeeping. Either way a request's intended time is its actual send.
    """

    __slots__ = ("_deadline", "_indices", "_name", "_reqs", "ahead", "ctx", "sent")

    def __init__(
        self,
        ctx: ShardContext,
        name: str,
        reqs: PhaseRequests,
        indices: Iterator[int],
        deadline: float | None,
    ) -> None:
        self.ctx = ctx
        self._name = name
        self._reqs = reqs
        self._indices = indices
        self._deadline = deadline
        # (rec, body, sent): requests built ahead of the task, in order; all sent by the
        # transport but maybe the last (to another endpoint). More than one when a response
        # ended before the task took over the one sent before it.
        self.ahead: deque[tuple[RequestRecord, bytes, bool]] = deque()
        self.sent = 0

    def _build(self) -> tuple[RequestRecord, bytes] | None:
        if self.ctx.stop.stopping.is_set():
            return None
        now = perf_counter()
        if self._deadline is not None and now >= self._deadline:
            return None
        index = next(self._indices, None)
        if index is None:
            return None
        rec = _record(self.ctx, self._name, self._reqs, index, now - self.ctx.origin)
        return rec, self._reqs.body(index)

    def next_request(self, url: str) -> tuple[RequestRecord, bytes] | None:
        if self.ahead and not self.ahead[-1][2]:
            return None  # one built for another endpoint waits for the task
        nxt = self._build()
        if nxt is None:
            return None
        rec, body = nxt
        if rec.target != url:  # another endpoint: the task sends it, from its own turn
            self.ahead.append((rec, body, False))
            return None
        self.ahead.append((rec, body, True))
        self.sent += 1
        return nxt

    def take(self) -> tuple[RequestRecord, bytes] | None:
        """The request the task sends (or takes over) next, if any."""
        if not self.ahead:
            nxt = self._build()
            if nxt is not None:
                self.sent += 1
            return nxt
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
    indices = _shard_indices(load.requests or None, ctx.shard, ctx.shards)
    deadline = start + load.duration if load.duration else None
    all_streams: list[_Stream] = []

    async def stream(offset: float) -> None:
        me = _Stream(ctx, name, reqs, indices, deadline)
        all_streams.append(me)
        await _sleep_until(start + offset, ctx.stop)
        try:
            while (nxt := me.take()) is not None:
                await _send_record(ctx, nxt[0], nxt[1], me)
        finally:
            # The transport marked it cancelled and freed its connection; it was sent, so it
            # is recorded like any other request.
            for left in me.abandoned():
                ctx.sink.add(left)

    async with anyio.create_task_group() as tg:
        for offset in streams:
            tg.start_soon(stream, offset)
    return sum(s.sent for s in all_streams)


async def _open_loop(
    ctx: ShardContext, name: str, load: LoadConfig, reqs: PhaseRequests, start: float, seed: int
) -> int:
    """Requests sent at the schedule's absolute times, whatever the server's state."""
    cap = anyio.Semaphore(load.max_concurrency) if load.max_concurrency else None
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
    if load.mode == "closed":
        sent = await _closed_loop(ctx, phase.name, load, reqs, start)
    else:
        seed = schedule.phase_seed(ctx.seed, phase.name)
        sent = await _open_loop(ctx, phase.name, load, reqs, start, seed)
    return PhaseTiming(
        name=phase.name,
        started=start - ctx.origin,
        ended=perf_counter() - ctx.origin,
        sent=sent,
        interrupted=ctx.stop.stopping.is_set(),
    )
