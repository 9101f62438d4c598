"""Shards as Ray actors: one actor per shard, placed on a Ray cluster with a placement group.

An actor runs the same worker as a worker process (`loadgen.workers`: the job as JSON, the line
protocol, a `LocalShard` on its own event loop), in a thread of the actor's process; its "stdin"
is a queue the driver fills (`send`) and its "stdout" a buffer the driver drains (`take`, a long
poll). So the driver (`RayShard`) is a `LineShard` like `ProcessShard`, and every record reaches
requests.jsonl as the actor measured it, streamed in batches while the run goes on: an actor
holds only what the driver has not taken yet.

Clocks: the run clock is the driver's monotonic clock. Before handing over its job, the driver
measures the actor's monotonic clock against its own by round trips (the shortest's midpoint;
its half-length bounds the error) and gives the actor the run's origin on the actor's own clock,
so every shard starts each phase at the same instant, give or take that uncertainty, which the
summary reports per shard. Wall clocks are not used: they may step.

Ray is an optional dependency (`pip install 'loadgen[ray]'`): this module imports it only when
a run asks for Ray. Ray moves Python objects between its processes with pickle; what loadgen
sends is bytes (the job as JSON, protocol lines), read as in a worker process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.abc

from loadgen import lifeline
from loadgen.config import DistributedConfig, TargetConfig
from loadgen.errors import LoadgenError, TargetError
from loadgen.results.schema import ShardPlace
from loadgen.safetext import for_terminal
from loadgen.shard import Shard, ShardFailed, ShardJob, WriteLine
from loadgen.target import read_api_key
from loadgen.workers import LineShard, _one_line, _worker, job_line

RAY_INSTALL = "Ray is not installed: pip install 'loadgen[ray]' (on the driver and every node)"
CLOCK_ROUND_TRIPS = 16
CLOCK_WARN_S = 0.005  # an uncertainty above this is said: schedules and windows depend on it
PLACEMENT_TIMEOUT_S = 60.0
TAKE_WAIT_S = 0.5  # an idle long poll returns after this
# A take that finds records waits for more: it returns once TAKE_BATCH_BYTES are there or
# TAKE_LINGER_S after its first bytes, and at once for a line the driver acts on (a phase's end,
# the verdict, an error) or the worker's end. Each take is a Ray call, and a call costs far more
# than a record (`scripts/bench_ray.py --calls`, actor on another node: 0.8 ms of the driver's
# CPU with a 96 KiB reply, 4 ms with 1 MiB, 5 ms with 4 MiB, whose objects travel between the
# nodes' object stores), while a record of a 256-token answer is ~5.6 KB. Batches of 4 MiB cost
# the driver about 7 us a record however many actors there are (20 us at 1 MiB, 45 at 96 KiB),
# so its CPU per record stays flat as actors are added; an actor holds about a batch.
TAKE_BATCH_BYTES = 4 << 20
TAKE_MAX_BYTES = 16 << 20  # one reply at most
TAKE_LINGER_S = 0.5
# Actors too slow to fill a batch (many on few cores) return by time: the linger grows with the
# shards so that these calls stay about TAKES_PER_S a second in all, up to TAKE_LINGER_MAX_S
# (how late the driver's progress display may be).
TAKES_PER_S = 2.0
TAKE_LINGER_MAX_S = 2.0
LAZY_LINES = (b"R ", b"G ")  # records and progress: they wait for a batch; the rest do not


class RayUnavailable(LoadgenError):
    """Ray is not installed, or its cluster cannot be reached or cannot place the shards."""


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable(RAY_INSTALL) from None
    return ray


# ---- the actor (runs in a Ray worker process) ----


class _Inbox:
    """The worker's stdin: lines the driver sent."""

    def __init__(self) -> None:
        self._lines: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def put(self, line: bytes) -> None:
        self._lines.put(line)

    def readline(self) -> bytes:
        return self._lines.get()


class _Outbox:
    """The worker's stdout: kept until the driver takes it, in batches."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._cond = threading.Condition()
        self.status: int | None = None
        self.ended = False
        self._urgent = False  # a line the driver acts on is waiting
        # A take waits for the first bytes: only then does a flush wake it. While it lingers for
        # more, records do not wake it (one thread switch and GIL hand-over a record, else);
        # a full batch or an urgent line does.
        self._waiting_first = False

    def write(self, data: bytes, /) -> int:
        with self._cond:
            self._buf += data
            if data[:2] not in LAZY_LINES:
                self._urgent = True
        return len(data)

    def flush(self) -> None:
        if self._waiting_first or self._urgent or len(self._buf) >= TAKE_BATCH_BYTES:
            with self._cond:
                self._cond.notify_all()

    def end(self, status: int) -> None:
        with self._cond:
            self.status = status
            self.ended = True
            self._cond.notify_all()

    def _ready(self) -> bool:
        return self.ended or self._urgent or len(self._buf) >= TAKE_BATCH_BYTES

    def take(self, wait: float, linger: float | None = None) -> tuple[bytes, bool, int | None]:
        with self._cond:
            if not self._buf and not self.ended:
                self._waiting_first = True
                self._cond.wait_for(lambda: self._buf or self.ended, wait)
                self._waiting_first = False
            if self._buf:
                self._cond.wait_for(self._ready, TAKE_LINGER_S if linger is None else linger)
            data = bytes(self._buf[:TAKE_MAX_BYTES])
            del self._buf[:TAKE_MAX_BYTES]
            self._urgent = self._urgent and bool(self._buf)  # it may be in what is left
            return data, self.ended and not self._buf, self.status


class ShardActor:
    """A worker in a Ray actor: `loadgen.workers`' worker on its own event loop, in a thread,
    between an inbox and an outbox. Made by `RayCluster.actor` (with ray.remote)."""

    def __init__(self) -> None:
        self._inbox = _Inbox()
        self._outbox = _Outbox()
        self._thread = threading.Thread(target=self._serve, name="loadgen-shard", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            status = anyio.run(
                _worker, self._inbox, self._outbox, backend_options=lifeline.backend_options()
            )
        except BaseException as exc:  # whatever it is, the driver must hear of it
            self._outbox.write(b"E " + _one_line(exc).encode() + b"\n")
            status = 1
        self._outbox.end(status)

    def where(self, target: TargetConfig | None = None) -> dict[str, Any]:
        """Where the actor runs, and whether the target's API key can be read there."""
        import ray

        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "node": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "api_key": api_key_state(target) if target is not None else "unknown",
        }

    def clock(self) -> float:
        return time.perf_counter()

    def send(self, line: bytes) -> None:
        self._inbox.put(line)

    def take(self, wait: float, linger: float | None = None) -> tuple[bytes, bool, int | None]:
        return self._outbox.take(wait, linger)


def api_key_state(target: TargetConfig) -> str:
    """The API key's state here: "set", "unset", or why it cannot be read; never the key."""
    try:
        return "set" if read_api_key(target) else "unset"
    except TargetError as exc:
        return str(exc)


def key_mismatch(driver: str, actor: str, target: TargetConfig) -> str:
    """Why an actor's node cannot send what the driver would (its API key), or ""."""
    if driver != "set" or actor == "set":
        return ""
    if actor == "unset":
        where = f"${target.api_key_env}" if target.api_key_env else "the key's variable"
        return (
            f"no API key there ({where} is not set) while this driver has one: set it on "
            "every node, or give [target] api_key_file a path every node has"
        )
    return for_terminal(actor)


# ---- the driver ----


def take_linger(shards: int) -> float:
    """How long an actor's take waits for a whole batch: about TAKES_PER_S calls a second in
    all from actors too slow to fill one, however many there are (within TAKE_LINGER_MAX_S)."""
    return min(TAKE_LINGER_MAX_S, max(TAKE_LINGER_S, shards / TAKES_PER_S))


@dataclasses.dataclass(frozen=True, slots=True)
class ClockOffset:
    offset: float  # the actor's monotonic clock minus the driver's, s
    uncertainty: float  # half the shortest round trip, s
    round_trips: int


def best_offset(samples: Sequence[tuple[float, float, float]]) -> ClockOffset:
    """The offset from round trips (driver send, actor's reading, driver receive): the
    shortest trip's, assuming the actor read its clock halfway (error at most half the trip)."""
    sent, theirs, received = min(samples, key=lambda s: s[2] - s[0])
    return ClockOffset(theirs - (sent + received) / 2, (received - sent) / 2, len(samples))


async def measure_clock(actor: Any, rounds: int = CLOCK_ROUND_TRIPS) -> ClockOffset:
    samples = []
    for _ in range(rounds):
        sent = time.perf_counter()
        theirs = await actor.clock.remote()
        samples.append((sent, float(theirs), time.perf_counter()))
    return best_offset(samples)


def usable_nodes(nodes: Sequence[dict[str, Any]], num_cpus: float) -> int:
    """Alive nodes that can hold an actor of `num_cpus` CPUs (a head with none cannot)."""
    return sum(
        1 for n in nodes if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= num_cpus
    )


class RayCluster:
    """The driver's connection to a Ray cluster and the run's placement group: one bundle of
    `num_cpus` CPUs per shard, spread over the nodes."""

    def __init__(self, cfg: DistributedConfig) -> None:
        self.cfg = cfg
        self.ray = ray_module()
        self._group: Any = None
        self._lock = anyio.Lock()
        self._open = 0

    def connect(self) -> None:
        if self.ray.is_initialized():
            return
        address = None if self.cfg.address == "local" else self.cfg.address
        try:
            self.ray.init(
                address=address,
                namespace="loadgen",
                include_dashboard=False,
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = "a private one-node Ray" if address is None else f"the Ray cluster at {address}"
            hints = {
                None: "",
                "auto": " (start one with `ray start --head`, or use --ray local)",
            }
            hint = hints.get(
                address,
                " (is its head up and reachable? A cluster with token authentication needs its "
                "token here too: RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)",
            )
            raise RayUnavailable(f"cannot reach {where}: {_first_line(exc)}{hint}") from None

    def workers(self) -> int:
        """Shards the scenario asks for: `workers`, else `workers_per_node` a usable node."""
        if self.cfg.workers:
            return self.cfg.workers
        nodes = usable_nodes(self.ray.nodes(), self.cfg.num_cpus)
        if not nodes:
            raise RayUnavailable(
                f"the Ray cluster has no alive node with {self.cfg.num_cpus:g} CPU(s) free for "
                "an actor ([distributed] num_cpus)"
            )
        return nodes * self.cfg.workers_per_node

    async def group(self, shards: int) -> Any:
        async with self._lock:
            if self._group is None:
                from ray.util.placement_group import placement_group

                pg = placement_group([{"CPU": self.cfg.num_cpus}] * shards, strategy="SPREAD")
                with anyio.move_on_after(PLACEMENT_TIMEOUT_S):
                    await pg.ready()
                    self._group = pg
                if self._group is None:
                    self.ray.util.remove_placement_group(pg)
                    free = self.ray.available_resources().get("CPU", 0)
                    raise ShardFailed(
                        f"Ray could not place {shards} actors of {self.cfg.num_cpus:g} CPU(s) "
                        f"within {PLACEMENT_TIMEOUT_S:g} s ({free:g} CPUs free in the cluster): "
                        "lower [distributed] workers or num_cpus, or add nodes"
                    )
            self._open += 1
            return self._group

    def actor(self, group: Any, bundle: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        remote = self.ray.remote(ShardActor)
        return remote.options(
            num_cpus=self.cfg.num_cpus,
            max_concurrency=4,  # a take waiting does not hold up a send
            max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=bundle
            ),
        ).remote()

    def release(self) -> None:
        """One shard done; the last removes the placement group."""
        self._open -= 1
        if self._open == 0 and self._group is not None:
            with contextlib.suppress(Exception):
                self.ray.util.remove_placement_group(self._group)
            self._group = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return for_terminal(text[0][:300]) if text else type(exc).__name__


class RayShard(LineShard):
    """The driver's handle on one shard in a Ray actor (the `Shard` protocol)."""

    start_margin = 0.1  # a phase's announcement crosses the network
    place = "Ray actor"

    def __init__(self, job: ShardJob, write: WriteLine, cluster: RayCluster) -> None:
        super().__init__(job, write)
        self.cluster = cluster
        self.actor: Any = None
        self._send_lock = anyio.Lock()
        self._lost = ""  # why the actor is gone, when Ray says so

    async def _open(self, tg: anyio.abc.TaskGroup) -> None:
        try:
            await self._place()
        except self.cluster.ray.exceptions.RayError as exc:
            raise ShardFailed(
                f"worker {self.job.shard}: its Ray actor could not start: {_first_line(exc)}"
            ) from None

    async def _place(self) -> None:
        group = await self.cluster.group(self.job.shards)
        self.actor = self.cluster.actor(group, self.job.shard)
        target = self.job.scenario.target
        where = await self.actor.where.remote(target)
        # Caught here, not as a run of 401s: each node reads the key from its own environment.
        problem = key_mismatch(api_key_state(target), str(where.get("api_key")), target)
        if problem:
            node = for_terminal(str(where.get("node")))
            raise ShardFailed(f"worker {self.job.shard} on node {node}: {problem}")
        clock = await measure_clock(self.actor)
        self.placed = ShardPlace(
            shard=self.job.shard,
            node=str(where["node"]),
            node_id=str(where["node_id"]),
            host=str(where["host"]),
            pid=int(where["pid"]),
            clock_offset_s=clock.offset,
            clock_uncertainty_s=clock.uncertainty,
            round_trips=clock.round_trips,
        )
        # The run's origin on the actor's own monotonic clock.
        job = dataclasses.replace(self.job, origin=self.job.origin + clock.offset)
        await self._send(job_line(job).decode())

    async def _send_bytes(self, data: bytes) -> None:
        if self.actor is None or self._lost:
            return
        async with self._send_lock:  # lines reach the actor's inbox in order
            try:
                await self.actor.send.remote(data)
            except self.cluster.ray.exceptions.RayError as exc:
                self._lost = self._lost or _first_line(exc)

    async def _output(self) -> AsyncIterator[bytes]:
        ray_error = self.cluster.ray.exceptions.RayError
        linger = take_linger(self.job.shards)
        while True:
            try:
                data, ended, status = await self.actor.take.remote(TAKE_WAIT_S, linger)
            except ray_error as exc:
                self._lost = self._lost or _first_line(exc)
                return
            if data:
                yield data
            if ended:
                self.exit_status = status
                return

    async def _wait_exit(self) -> int | None:
        return self.exit_status

    def _describe_end(self) -> str:
        if self._lost:
            where = f" on node {self.placed.node}" if self.placed else ""
            return f"its Ray actor{where} died: {self._lost}"
        return super()._describe_end()

    async def _kill(self) -> None:
        if self.actor is not None:
            with contextlib.suppress(Exception):
                self.cluster.ray.kill(self.actor, no_restart=True)

    async def _settle(self) -> None:
        await self._kill()
        self.cluster.release()


def ray_shards(cfg: DistributedConfig, jobs: Sequence[ShardJob], write: WriteLine) -> list[Shard]:
    cluster = RayCluster(cfg)
    cluster.connect()
    return [RayShard(job, write, cluster) for job in jobs]


def connect_and_count(cfg: DistributedConfig) -> int:
    """Connect this driver to the scenario's Ray cluster; the shards it asks for."""
    cluster = RayCluster(cfg)
    cluster.connect()
    return cluster.workers()
