"""Runs the engine model in real time: one asyncio task steps the engine, another logs stats.

Steps follow a timeline of their own: a step starts where the previous one ended, not when the
event loop happened to wake up, so the late wake-ups of a busy loop do not slow the modelled
engine down. Only when the loop falls more than MAX_LAG behind does the timeline restart from the
present (the engine then runs slower, as a CPU-bound server would).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from loadgen.sim.engine import EngineCore, EngineRequest
from loadgen.sim.faults import StallSchedule
from loadgen.sim.stats import CacheStats, IterationStats, SchedulerStats

MAX_LAG = 0.05

log = logging.getLogger("loadgen.sim")


class StatsObserver(Protocol):
    def record(
        self, scheduler: SchedulerStats | None, iteration: IterationStats | None
    ) -> None: ...

    def record_mm(self, stats: CacheStats) -> None: ...


class EngineDriver:
    def __init__(
        self,
        core: EngineCore,
        observers: list[StatsObserver],
        stalls: StallSchedule,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.observers = observers
        self.stalls = stalls
        self.clock = clock
        self._wake = asyncio.Event()
        self._mm_busy_until = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def preprocess(self, mm_stats: CacheStats, miss_tokens: int) -> None:
        """Frontend image processing: one image at a time; cache hits cost nothing."""
        for observer in self.observers:
            observer.record_mm(mm_stats)
        cost = miss_tokens * self.core.profile.mm_process_per_token
        if cost <= 0:
            return
        now = self.clock()
        done = max(now, self._mm_busy_until) + cost
        self._mm_busy_until = done
        await asyncio.sleep(done - now)

    def submit(self, request: EngineRequest) -> None:
        self.core.add(request, self.clock())
        self._wake.set()

    def abort(self, request: EngineRequest) -> None:
        self.core.abort(request)

    def stall(self, seconds: float) -> None:
        self.stalls.add(self.clock(), seconds)

    async def _run(self) -> None:
        core = self.core
        clock = self.clock
        timeline: float | None = None
        while True:
            if not core.has_work():
                timeline = None
                self._wake.clear()
                await self._wake.wait()
                continue
            now = clock()
            start = now if timeline is None or timeline < now - MAX_LAG else timeline
            if not core.running and core.waiting:
                # An idle engine starts its step when the request arrives, not on a timeline
                # older than the request (which the step could not admit).
                start = max(start, core.waiting[0].queued_ts)
            start = self.stalls.resume_time(start)
            try:
                plan = core.schedule(start)
                end = start + core.step_time(plan)
                delay = end - clock()
                # Always yield, even for a zero-time step, so the HTTP side can run.
                await asyncio.sleep(delay if delay > 0 else 0)
                iteration = core.complete(plan, end)
            except Exception:
                # A bug must not leave every open stream waiting forever: end them with "error".
                log.exception("engine step failed; ending the requests in flight")
                self._fail_all()
                timeline = None
                continue
            for observer in self.observers:
                observer.record(plan.scheduler_stats, iteration)
            timeline = end
            if not plan.scheduled:
                # Nothing could run (e.g. waiting for blocks held by nobody): do not spin.
                await asyncio.sleep(0.001)

    def _fail_all(self) -> None:
        for request in [*self.core.running, *self.core.waiting]:
            self.core.abort(request)
            if request.on_token is not None:
                request.on_token(request, "", "error")
