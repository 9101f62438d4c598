"""The client checks itself: a saturated load generator reports a slow server that is not slow.

Two signals:
- event-loop lag: a task that wakes every `interval` seconds on absolute deadlines and records how
  late each wake-up was. A loop busy with other work (parsing, bookkeeping) wakes it late, and every
  request's timestamps are late by as much.
- CPU: the process's user + system CPU time over wall time, in cores, against the cores it may run
  on (`os.sched_getaffinity`) and against the single core its event loop can use.

`SelfCheck` is pure (timestamps are passed in); `SelfCheck.run` is the thin async driver.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio

from loadgen.metrics.histograms import new_histogram, to_us

LAG_INTERVAL_S = 0.05  # how often the lag probe wakes
LOOP_LAG_P99_LIMIT_MS = 5.0  # saturated above this p99 lateness
CPU_AVAILABLE_LIMIT = 0.90  # saturated above this fraction of the cores the process may use
LOOP_CPU_LIMIT = 0.90  # ... or above this many cores: one event loop runs on one core
# A p99 needs enough probes to mean anything: in a short run one scheduler hiccup on a shared
# machine would be the p99. Short runs are judged by the share of time the loop was late instead.
LAG_MIN_PROBES = 100
LATE_TIME_LIMIT = 0.10  # saturated when the loop was late for over this share of the time


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def process_cpu_seconds() -> float:
    """User + system CPU seconds used by this process (all its threads) so far."""
    t = os.times()
    return t.user + t.system


class SelfCheck:
    """Event-loop lag and CPU use of the client process, and whether it was saturated."""

    def __init__(
        self,
        *,
        interval: float = LAG_INTERVAL_S,
        cores: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = process_cpu_seconds,
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0 seconds")
        self.interval = interval
        self.cores = cores if cores is not None else available_cores()
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.lag = new_histogram()  # microseconds
        self._cpu_first: tuple[float, float] | None = None  # (cpu seconds, wall seconds)
        self._cpu_last: tuple[float, float] | None = None

    # ---- pure core ----
    def tick(self, deadline: float, now: float) -> None:
        """The probe meant to wake at `deadline` woke at `now`."""
        self.lag.record_value(min(to_us(now - deadline), self.lag.highest_trackable_value))

    def cpu_sample(self, cpu_seconds: float, wall_seconds: float) -> None:
        """A reading of the process CPU clock and the wall clock; the first one is the start."""
        if self._cpu_first is None:
            self._cpu_first = (cpu_seconds, wall_seconds)
        self._cpu_last = (cpu_seconds, wall_seconds)

    def verdict(self) -> dict[str, Any]:
        """Loop lag and CPU figures, and `saturated` with the reasons when the client was the
        bottleneck (its latency figures are then inflated by the client itself)."""
        reasons: list[str] = []
        n = self.lag.get_total_count()
        lag: dict[str, float | int | None] = {"p50": None, "p99": None, "max": None, "count": n}
        if n:
            p = self.lag.get_percentile_to_value_dict([50.0, 99.0])
            lag.update(p50=p[50.0] / 1000.0, p99=p[99.0] / 1000.0)
            lag["max"] = self.lag.get_max_value() / 1000.0
            late_s = self.lag.get_mean_value() * n / 1e6
            late_share = late_s / (late_s + n * self.interval)
            lag["late_share"] = late_share
            if n >= LAG_MIN_PROBES and p[99.0] / 1000.0 > LOOP_LAG_P99_LIMIT_MS:
                reasons.append(
                    f"event-loop lag p99 {p[99.0] / 1000.0:.1f} ms > {LOOP_LAG_P99_LIMIT_MS:g} ms"
                )
            elif late_share > LATE_TIME_LIMIT:
                reasons.append(
                    f"event loop late {late_share:.0%} of the time > {LATE_TIME_LIMIT:.0%}"
                )
        cpu: dict[str, float | int | None] = {
            "seconds": None,
            "wall_seconds": None,
            "cores_used": None,
            "cores_available": self.cores,
            "fraction_of_available": None,
        }
        if self._cpu_first is not None and self._cpu_last is not None:
            used = self._cpu_last[0] - self._cpu_first[0]
            wall = self._cpu_last[1] - self._cpu_first[1]
            cpu.update(seconds=used, wall_seconds=wall)
            if wall > 0:
                cores_used = used / wall
                fraction = cores_used / self.cores
                cpu.update(cores_used=cores_used, fraction_of_available=fraction)
                if fraction > CPU_AVAILABLE_LIMIT:
                    reasons.append(
                        f"CPU {fraction:.0%} of the {self.cores} available cores "
                        f"> {CPU_AVAILABLE_LIMIT:.0%}"
                    )
                elif cores_used > LOOP_CPU_LIMIT:
                    reasons.append(
                        f"CPU {cores_used:.2f} cores > {LOOP_CPU_LIMIT:.2f}: one event loop "
                        "cannot use more than one core"
                    )
        return {
            "loop_lag_ms": lag,
            "cpu": cpu,
            "thresholds": {
                "loop_lag_p99_ms": LOOP_LAG_P99_LIMIT_MS,
                "cpu_fraction_of_available": CPU_AVAILABLE_LIMIT,
                "cpu_cores": LOOP_CPU_LIMIT,
            },
            "saturated": bool(reasons),
            "reasons": reasons,
        }

    # ---- async driver ----
    async def run(self) -> None:
        """Probe until cancelled. Deadlines are absolute: a late wake-up does not move the next
        one, so a stall of S seconds shows as about S / interval late samples, not one."""
        start = self.clock()
        self.cpu_sample(self.cpu_clock(), start)
        deadline = start
        try:
            while True:
                deadline += self.interval
                await anyio.sleep(max(0.0, deadline - self.clock()))
                now = self.clock()
                self.tick(deadline, now)
                self.cpu_sample(self.cpu_clock(), now)
        finally:
            self.cpu_sample(self.cpu_clock(), self.clock())


def combine_verdicts(verdicts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Several shards' verdicts: saturated when any shard was, with its reasons labelled."""
    items = list(verdicts)
    reasons = [f"shard {i}: {r}" for i, v in enumerate(items) for r in v.get("reasons", [])]
    return {"saturated": bool(reasons), "reasons": reasons, "shards": items}
