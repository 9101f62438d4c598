"""The client checks itself, and names the cause when its own timestamps cannot be trusted.

The symptom is event-loop lag: a probe wakes every `interval` seconds and records how late it
woke, each wake-up against its own deadline (after a late wake-up the next deadline is one
interval after it, so a freeze of S seconds is one sample of S, never a backlog of S / interval
samples). Every request timestamp taken in that loop is late by as much. The late share is the
summed lateness over the wall time.

Two causes are told apart per shard, each with its evidence:
- `client_cpu_bound`: the loop had work queued nearly all the time (its thread's CPU time plus its
  wait for a CPU, over wall time, reaches LOOP_BUSY_LIMIT), or it was late while it did not wait
  for a CPU (its own work blocked it). Only this cause means "the client is the bottleneck".
- `host_contention`: the loop's thread waited on the kernel's run queue while runnable
  (`/proc/thread-self/schedstat`) for a share of the wall time over HOST_WAIT_LIMIT: other
  processes starved it. Context: `/proc/pressure/cpu` and the load average per core.
A third, phase-level cause, `in_flight_short` (fewer requests in flight than asked), is
`in_flight_check`.

`SelfCheck` is pure (readings are passed in); `SelfCheck.run` is the thin async driver.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec

from loadgen.config import LoadConfig
from loadgen.metrics.histograms import new_histogram
from loadgen.metrics.summary import PhaseAccumulator
from loadgen.metrics.windows import to_us
from loadgen.results.schema import Cause, ClientCheck, NodeCheck, ShardCheck

LAG_INTERVAL_S = 0.05  # how often the lag probe wakes
LOOP_LAG_P99_LIMIT_MS = 5.0  # the loop is late above this p99 lateness ...
LATE_TIME_LIMIT = 0.10  # ... or when its summed lateness exceeds this share of the wall time
# A p99 needs enough probes to mean anything: in a short run one scheduler hiccup on a shared
# machine would be the p99. Short runs are judged by the late share only.
LAG_MIN_PROBES = 100
LOOP_BUSY_LIMIT = 0.90  # client-bound: the loop ran or waited to run this share of the time
HOST_WAIT_LIMIT = 0.05  # host contention: the loop waited for a CPU this share of the time
# A late loop is the client's own doing unless waiting for a CPU explains this much of the lateness.
WAIT_EXPLAINS = 0.5
IN_FLIGHT_LIMIT = 0.95  # closed loop: mean in flight under this share of the streams is short
SCHEDSTAT = "/proc/thread-self/schedstat"
PRESSURE = "/proc/pressure/cpu"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; on other systems, every core): the
    self-check's, the default worker count's and the summary's `cores_available`."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def process_cpu_seconds() -> float:
    """User + system CPU seconds used by this process (all its threads) so far."""
    t = os.times()
    return t.user + t.system


def run_queue_wait_seconds(path: str = SCHEDSTAT) -> float | None:
    """Seconds the calling thread has waited on a run queue while runnable (None: not Linux, or
    the kernel keeps no scheduler statistics)."""
    try:
        with open(path, "rb") as fh:
            fields = fh.read().split()
        return int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def cpu_pressure_seconds(path: str = PRESSURE) -> float | None:
    """The host's `some` CPU pressure stall total in seconds: time during which at least one
    runnable task waited for a CPU (None where PSI is absent)."""
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if line.startswith(b"some "):
                    for item in line.split():
                        if item.startswith(b"total="):
                            return int(item[6:]) / 1e6
    except (OSError, ValueError):
        return None
    return None


def load_per_core() -> float | None:
    """The 1-minute load average over the host's cores."""
    try:
        return os.getloadavg()[0] / max(1, os.cpu_count() or 1)
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of the clocks the verdict compares; None where the host has no such clock."""

    wall: float
    process_cpu: float
    loop_cpu: float  # CPU time of the event loop's own thread
    run_queue_wait: float | None  # the loop thread's wait for a CPU while runnable
    pressure: float | None  # the host's CPU pressure stall total


def read_clocks(clock: Callable[[], float] = time.perf_counter) -> Reading:
    """Read every clock now; call it from the event loop's thread."""
    return Reading(
        wall=clock(),
        process_cpu=process_cpu_seconds(),
        loop_cpu=time.thread_time(),
        run_queue_wait=run_queue_wait_seconds(),
        pressure=cpu_pressure_seconds(),
    )


def _share(part: float | None, whole: float) -> float | None:
    return None if part is None or whole <= 0 else part / whole


class SelfCheck:
    """Event-loop lag, the loop's CPU and its wait for a CPU, and what they say."""

    def __init__(
        self,
        *,
        interval: float = LAG_INTERVAL_S,
        cores: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        reader: Callable[[], Reading] | None = None,
        load: Callable[[], float | None] = load_per_core,
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0 seconds")
        self.interval = interval
        self.cores = cores if cores is not None else available_cores()
        self.clock = clock
        self.reader = reader if reader is not None else (lambda: read_clocks(clock))
        self.load = load
        self.lag = new_histogram()  # microseconds
        self.late_seconds = 0.0  # summed lateness of every probe
        self._first: Reading | None = None
        self._last: Reading | None = None

    # ---- pure core ----
    def tick(self, deadline: float, now: float) -> None:
        """The probe meant to wake at `deadline` woke at `now`."""
        late = max(0.0, now - deadline)
        self.late_seconds += late
        self.lag.record_value(min(to_us(late), self.lag.highest_trackable_value))

    def next_deadline(self, deadline: float, now: float) -> float:
        """The next probe's deadline: one interval after this one, or after `now` when this one
        woke late (a late wake-up is one sample, not a backlog of catch-up samples)."""
        return max(deadline, now) + self.interval

    def sample(self, reading: Reading) -> None:
        """A reading of the clocks; the first one is the start."""
        if self._first is None:
            self._first = reading
        self._last = reading

    def verdict(self) -> dict[str, Any]:
        """This shard's figures, and which causes they show (see the module's docstring)."""
        n = self.lag.get_total_count()
        lag: dict[str, float | int | None] = {
            "p50": None,
            "p99": None,
            "max": None,
            "count": n,
            "late_share": None,
        }
        first, last = self._first, self._last
        wall = last.wall - first.wall if first is not None and last is not None else 0.0
        if n:
            p = self.lag.get_percentile_to_value_dict([50.0, 99.0])
            lag.update(p50=p[50.0] / 1000.0, p99=p[99.0] / 1000.0)
            lag["max"] = self.lag.get_max_value() / 1000.0
            lag["late_share"] = _share(self.late_seconds, wall)
        cpu: dict[str, float | int | None] = {
            "seconds": None,
            "wall_seconds": None,
            "cores_used": None,
            "loop_cores": None,
            "cores_available": self.cores,
            "fraction_of_available": None,
        }
        host: dict[str, float | str | None] = {
            "run_queue_wait_share": None,
            "run_queue_source": None,
            "cpu_pressure_share": None,
            "load_per_core": self.load(),
        }
        if first is not None and last is not None and wall > 0:
            used = last.process_cpu - first.process_cpu
            cpu.update(
                seconds=used,
                wall_seconds=wall,
                cores_used=used / wall,
                loop_cores=(last.loop_cpu - first.loop_cpu) / wall,
                fraction_of_available=used / wall / self.cores,
            )
            if first.run_queue_wait is not None and last.run_queue_wait is not None:
                host["run_queue_wait_share"] = (last.run_queue_wait - first.run_queue_wait) / wall
                host["run_queue_source"] = SCHEDSTAT
            if first.pressure is not None and last.pressure is not None:
                host["cpu_pressure_share"] = (last.pressure - first.pressure) / wall
        return {
            "loop_lag_ms": lag,
            "cpu": cpu,
            "host": host,
            "causes": _causes(lag, cpu, host, self.late_seconds, wall),
            "thresholds": {
                "loop_lag_p99_ms": LOOP_LAG_P99_LIMIT_MS,
                "late_share": LATE_TIME_LIMIT,
                "loop_busy_share": LOOP_BUSY_LIMIT,
                "run_queue_wait_share": HOST_WAIT_LIMIT,
            },
        }

    # ---- async driver ----
    async def run(self) -> None:
        """Probe until cancelled, in the event loop's own thread (its CPU and run-queue clocks
        are that thread's)."""
        self.sample(self.reader())
        deadline = self.clock() + self.interval
        try:
            while True:
                await anyio.sleep(max(0.0, deadline - self.clock()))
                now = self.clock()
                self.tick(deadline, now)
                self.sample(self.reader())
                deadline = self.next_deadline(deadline, now)
        finally:
            self.sample(self.reader())


def _causes(
    lag: Mapping[str, Any],
    cpu: Mapping[str, Any],
    host: Mapping[str, Any],
    late_seconds: float,
    wall: float,
) -> dict[str, dict[str, Any]]:
    """{cause: {"evidence": one line}} for each cause the figures show."""
    causes: dict[str, dict[str, Any]] = {}
    late: list[str] = []
    p99, n, share = lag.get("p99"), lag.get("count") or 0, lag.get("late_share")
    if p99 is not None and n >= LAG_MIN_PROBES and p99 > LOOP_LAG_P99_LIMIT_MS:
        late.append(f"event-loop lag p99 {p99:.1f} ms > {LOOP_LAG_P99_LIMIT_MS:g} ms")
    if share is not None and share > LATE_TIME_LIMIT:
        late.append(f"event loop late {share:.1%} of the time > {LATE_TIME_LIMIT:.0%}")
    loop_cores = cpu.get("loop_cores")
    wait_share = host.get("run_queue_wait_share")
    wait_s = wait_share * wall if wait_share is not None else None
    if loop_cores is not None:
        busy = loop_cores + (wait_share or 0.0)
        if busy >= LOOP_BUSY_LIMIT:
            waited = f" + {wait_share:.0%} waiting for a CPU" if wait_share else ""
            causes["client_cpu_bound"] = {
                "evidence": f"the event loop ran {loop_cores:.2f} of a core{waited}: busy "
                f"{busy:.0%} of the time >= {LOOP_BUSY_LIMIT:.0%}; one loop uses one core at most"
            }
    if (
        late
        and "client_cpu_bound" not in causes
        and (wait_s is None or wait_s < WAIT_EXPLAINS * late_seconds)
    ):
        why = "" if wait_s is None else ", not for want of a CPU"
        causes["client_cpu_bound"] = {
            "evidence": "; ".join(late) + f": the loop was held by its own work{why}"
        }
    if wait_share is not None and wait_share > HOST_WAIT_LIMIT:
        context = []
        if host.get("cpu_pressure_share") is not None:
            context.append(f"host CPU pressure {host['cpu_pressure_share']:.0%}")
        if host.get("load_per_core") is not None:
            context.append(f"load {host['load_per_core']:.2f} per core")
        more = f" ({', '.join(context)})" if context else ""
        lateness = f"; {'; '.join(late)}" if late else ""
        causes["host_contention"] = {
            "evidence": f"the event loop waited for a CPU {wait_share:.0%} of the time > "
            f"{HOST_WAIT_LIMIT:.0%}: other processes took its core{more}{lateness}"
        }
    return causes


def in_flight_check(
    mode: str,
    concurrency: int,
    max_concurrency: int,
    peak: int | None,
    mean: float | None,
    lag_first_ms: float | None,
    lag_last_ms: float | None,
) -> dict[str, Any] | None:
    """Whether a phase had fewer requests in flight than it asked for, with the evidence.

    Closed loop: the time-weighted mean in flight under IN_FLIGHT_LIMIT x the streams (a slot
    waits between its requests). Open loop: the cap on requests in flight was reached (arrivals
    waited for a slot), or the schedule lag grew from the first window to the last (the client
    fell behind its schedule). `lag_first_ms` / `lag_last_ms`: the median schedule lag of the
    phase's first and last windows."""
    if mode == "closed":
        if mean is None or mean >= IN_FLIGHT_LIMIT * concurrency:
            return None
        return {
            "evidence": f"mean in flight {mean:.1f} while every stream offered load < "
            f"{IN_FLIGHT_LIMIT:.0%} of the {concurrency} streams: slots waited between requests"
        }
    found = []
    if max_concurrency and peak is not None and peak >= max_concurrency:
        found.append(f"the cap of {max_concurrency} in flight was reached: arrivals waited")
    if lag_first_ms is not None and lag_last_ms is not None and lag_last_ms > lag_first_ms + 100:
        found.append(
            f"schedule lag grew from {lag_first_ms:.0f} ms to {lag_last_ms:.0f} ms (median, "
            "first to last window): the client fell behind its schedule"
        )
    return {"evidence": "; ".join(found)} if found else None


def phase_in_flight(acc: PhaseAccumulator, load: LoadConfig) -> dict[str, Any] | None:
    """`in_flight_check` for a finished phase's (merged) accumulator.

    The closed loop's mean is taken while every stream was offering load: from the end of the
    ramp-up to the last send (a request-bounded phase's final requests drain with idle streams,
    which is no shortfall)."""
    conc = acc.windows.concurrency
    mean = None
    if acc.first_intended is not None and acc.last_sent is not None:
        start = acc.first_intended + load.ramp_up
        if acc.last_sent > start:
            mean = conc.mean(start, acc.last_sent)
    windows = acc.histograms.windows
    lag_first = lag_last = None
    if len(windows) >= 2:
        first, last = windows[min(windows)], windows[max(windows)]
        lag_first = first.percentiles("schedule_lag")["p50"]
        lag_last = last.percentiles("schedule_lag")["p50"]
    return in_flight_check(
        load.mode,
        load.concurrency,
        load.max_concurrency,
        conc.peak(),
        mean,
        None if lag_first is None else float(lag_first),
        None if lag_last is None else float(lag_last),
    )


def combine_verdicts(
    verdicts: Iterable[Mapping[str, Any] | ShardCheck],
    phases: Mapping[str, Mapping[str, Any] | None] | None = None,
    nodes: Sequence[str] | None = None,
) -> ClientCheck:
    """Every shard's verdict (as `SelfCheck.verdict` gives it, or a ShardCheck) and the causes
    found, each naming its shard, plus each phase's `in_flight_short`. `client_bound` is true only
    for `client_cpu_bound`: the client itself was the bottleneck. `nodes`: each shard's node on a
    cluster, in shard order; the causes then name it, and each node's shards are judged
    together (`ClientCheck.nodes`), since a host's contention is every shard's on it."""
    shards = [v if isinstance(v, ShardCheck) else msgspec.convert(v, ShardCheck) for v in verdicts]
    if nodes is not None:
        for check, node in zip(shards, nodes, strict=False):
            check.node = node
    causes = [
        Cause(
            cause=cause,
            where=f"shard {i}" + (f" on node {v.node}" if v.node else ""),
            evidence=found.evidence,
        )
        for i, v in enumerate(shards)
        for cause, found in v.causes.items()
    ]
    causes += [
        Cause(cause="in_flight_short", where=f"phase {name}", evidence=str(found["evidence"]))
        for name, found in (phases or {}).items()
        if found is not None
    ]
    return ClientCheck(
        client_bound=any(c.cause == "client_cpu_bound" for c in causes),
        causes=causes,
        shards=shards,
        nodes=node_checks(shards) if nodes is not None else [],
    )


def node_checks(shards: Sequence[ShardCheck]) -> list[NodeCheck]:
    """The shards of each node together: their causes, CPU and worst loop lag."""
    by_node: dict[str, list[int]] = {}
    for i, check in enumerate(shards):
        by_node.setdefault(check.node, []).append(i)
    result = []
    for node, members in by_node.items():
        checks = [shards[i] for i in members]
        cores = [c.cpu.cores_used for c in checks if c.cpu.cores_used is not None]
        lags = [c.loop_lag_ms.p99 for c in checks if c.loop_lag_ms.p99 is not None]
        result.append(
            NodeCheck(
                node=node,
                shards=members,
                causes=sorted({cause for c in checks for cause in c.causes}),
                cores_used=round(sum(cores), 3) if cores else None,
                loop_lag_p99_ms=max(lags) if lags else None,
            )
        )
    return result


def verdict_line(client: ClientCheck) -> str:
    """One sentence for the console and the report: what the self-check found."""
    if not client.causes:
        return "client self-check: clean (the client kept up; its timestamps can be trusted)"
    names = {
        "client_cpu_bound": "CLIENT-BOUND: the client itself was the bottleneck; its latencies "
        "are inflated",
        "host_contention": "HOST CONTENTION: other processes starved the client; its "
        "timestamps are late (not the client's own load: quieten the host or pin loadgen)",
        "in_flight_short": "IN FLIGHT SHORT: less load was in flight than the scenario asked "
        "(streams idle between requests, arrivals waiting for the cap, or the client behind "
        "its schedule)",
    }
    parts = [f"{names.get(c.cause, c.cause)} ({c.where}: {c.evidence})" for c in client.causes]
    return "client self-check: " + "; ".join(parts)
