"""Placement: which kind of shard a run uses, how many, and their jobs.

The orchestrator asks for its shards here and then knows them only through the `Shard` protocol
(`loadgen.shard`). One shard runs in this process (`LocalShard`); more run in worker processes
(`loadgen.workers.ProcessShard`). Another kind (shards on other machines) is one more entry in
`SHARD_KINDS`, chosen by `RunOptions.shard_kind`: the orchestrator does not change.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loadgen import schedule
from loadgen.config import Scenario
from loadgen.metrics.selfcheck import available_cores
from loadgen.shard import LocalShard, Shard, ShardJob, WriteLine
from loadgen.workers import ProcessShard

MAX_DEFAULT_WORKERS = 8

# A kind of shard: made from its job, the run's record line writer and the API key (a shard
# that reads the key itself, where it runs, ignores it; the key never travels in a job).
ShardKind = Callable[[ShardJob, WriteLine, str | None], Shard]
SHARD_KINDS: dict[str, ShardKind] = {"local": LocalShard, "process": ProcessShard}


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
    """`kind` when given; else one shard in this process, or worker processes when the load is
    split (`workers`: as asked, 0 = one per available core)."""
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
    make = SHARD_KINDS[where.kind]
    shards = where.count
    return [
        make(
            dataclasses.replace(
                job,
                shard=k,
                shards=shards,
                settings=dataclasses.replace(
                    job.settings,
                    api_key=None,
                    pool_size=schedule.shard_share(job.settings.pool_size, k, shards),
                ),
            ),
            write,
            api_key,
        )
        for k in range(shards)
    ]


def where_text(shards: Sequence[Shard]) -> str:
    """Where the shards run, for a message: "" in this process, else " in 3 worker processes"."""
    places = Counter(s.place for s in shards if s.place)
    parts = [
        f"{n} {place}" + ("" if n == 1 else "es" if place.endswith("s") else "s")
        for place, n in places.items()
    ]
    return f" in {', '.join(parts)}" if parts else ""
