"""Placement: which kind of shard a run uses, how many, and their jobs.

The orchestrator asks for its shards here and then knows them only through the `Shard` protocol
(`loadgen.shard`). One shard runs in this process (`LocalShard`); more run in worker processes
(`loadgen.workers.ProcessShard`), or as Ray actors on a Ray cluster (`loadgen.rayshard.RayShard`,
`[distributed] backend = "ray"`). Another kind is one more entry in `SHARD_KINDS`, chosen by
`RunOptions.shard_kind`: the orchestrator does not change.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from loadgen import schedule
from loadgen.config import DistributedConfig, Scenario
from loadgen.metrics.selfcheck import available_cores
from loadgen.results.schema import Distributed, ShardPlace
from loadgen.safetext import for_terminal
from loadgen.shard import LocalShard, Shard, ShardJob, WriteLine
from loadgen.workers import ProcessShard

MAX_DEFAULT_WORKERS = 8

# A kind of shard: the run's shards made from their jobs, the run's record line writer and the
# API key (a shard that reads the key itself, where it runs, ignores it; the key never travels in
# a job), and the scenario's [distributed] settings.
ShardKind = Callable[[Sequence[ShardJob], WriteLine, str | None, DistributedConfig], list[Shard]]


def _local(
    jobs: Sequence[ShardJob], write: WriteLine, key: str | None, _: DistributedConfig
) -> list[Shard]:
    return [LocalShard(job, write, key) for job in jobs]


def _process(
    jobs: Sequence[ShardJob], write: WriteLine, key: str | None, _: DistributedConfig
) -> list[Shard]:
    return [ProcessShard(job, write) for job in jobs]


def _ray(
    jobs: Sequence[ShardJob], write: WriteLine, key: str | None, cfg: DistributedConfig
) -> list[Shard]:
    from loadgen.rayshard import ray_shards

    return ray_shards(cfg, jobs, write)


SHARD_KINDS: dict[str, ShardKind] = {"local": _local, "process": _process, "ray": _ray}


@dataclass(frozen=True, slots=True)
class Placement:
    kind: str  # a key of SHARD_KINDS
    count: int  # shards


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


def placement(scenario: Scenario, workers: int, simulated: bool, kind: str = "") -> Placement:
    """`kind` when given; Ray actors when the scenario asks (`[distributed] backend`: this
    connects to the cluster, whose nodes may decide how many); else one shard in this process,
    or worker processes when the load is split (`workers`: as asked, else the scenario's,
    0 = one per available core)."""
    distributed = scenario.distributed
    workers = workers or distributed.workers
    if not kind and distributed.backend == "ray":
        from loadgen.rayshard import connect_and_count

        return Placement(
            "ray", worker_count(scenario, workers or connect_and_count(distributed), simulated)
        )
    n = worker_count(scenario, workers, simulated)
    if kind:
        if kind not in SHARD_KINDS:
            raise ValueError(f"unknown shard kind {kind!r}; known: {', '.join(SHARD_KINDS)}")
        return Placement(kind, n)
    return Placement("local" if n == 1 else "process", n)


def make_shards(
    where: Placement, job: ShardJob, write: WriteLine, api_key: str | None
) -> list[Shard]:
    """The run's shards from its job (any shard number): each gets its own number and its exact
    share of the connection pool."""
    shards = where.count
    jobs = [
        dataclasses.replace(
            job,
            shard=k,
            shards=shards,
            settings=dataclasses.replace(
                job.settings,
                api_key=None,
                pool_size=schedule.shard_share(job.settings.pool_size, k, shards),
            ),
        )
        for k in range(shards)
    ]
    return SHARD_KINDS[where.kind](jobs, write, api_key, job.scenario.distributed)


def where_text(shards: Sequence[Shard]) -> str:
    """Where the shards run, for a message: "" in this process, else " in 3 worker processes"."""
    places = Counter(s.place for s in shards if s.place)
    parts = [
        f"{n} {place}" + ("" if n == 1 else "es" if place.endswith("s") else "s")
        for place, n in places.items()
    ]
    return f" in {', '.join(parts)}" if parts else ""


# Above this, a shard's start instant (and so its schedule and windows) is uncertain enough to say.
CLOCK_WARN_S = 0.005


def cluster_placement(cfg: DistributedConfig, shards: Sequence[Shard]) -> Distributed | None:
    """Where shards on a cluster ran and their clocks (None when every shard is on this host).
    A node is named by its address, with its id's start when several nodes share one (Ray nodes
    on one host)."""
    known = [p for p in (s.placed for s in shards) if p is not None]
    if not known:
        return None
    ids: dict[str, set[str]] = {}
    for p in known:
        ids.setdefault(p.node, set()).add(p.node_id)
    known = [
        msgspec.structs.replace(p, node=f"{p.node}/{p.node_id[:8]}") if len(ids[p.node]) > 1 else p
        for p in known
    ]
    return Distributed(
        backend=cfg.backend,
        address=cfg.address,
        nodes=len({p.node_id for p in known}),
        shards=known,
        worst_clock_uncertainty_s=max(p.clock_uncertainty_s for p in known),
    )


def placement_lines(d: Distributed) -> list[str]:
    """One line per node: its shards (and their processes there), their clocks against the
    driver's."""
    by_node: dict[str, list[ShardPlace]] = {}
    for p in d.shards:
        by_node.setdefault(p.node, []).append(p)
    lines = []
    for node, places in by_node.items():
        clocks = ", ".join(
            f"shard {p.shard} (pid {p.pid}) clock {p.clock_offset_s * 1e3:+.3f} ms "
            f"±{p.clock_uncertainty_s * 1e3:.3f}"
            for p in places
        )
        lines.append(f"node {for_terminal(node)} ({for_terminal(places[0].host)}): {clocks}")
    return lines


def clock_warnings(d: Distributed) -> list[str]:
    worst = d.worst_clock_uncertainty_s or 0.0
    if worst <= CLOCK_WARN_S:
        return []
    return [
        f"shard clocks are known to ±{worst * 1e3:.1f} ms only (more than "
        f"{CLOCK_WARN_S * 1e3:g} ms): the shards' common start, their schedules and "
        "throughput windows are that uncertain (summary.json distributed.shards)"
    ]
