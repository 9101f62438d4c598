"""When each request of a phase is due: arrival offsets (open loop) and stream starts (closed loop).

Pure: no I/O, no clock. Randomness comes from a `random.Random` the caller seeds, so every shard
computes the same global schedule from (scenario seed, phase name) and keeps its own part of it.

Offsets are seconds from the phase start. A runner turns them into absolute deadlines
(`Arrival.deadline(start)`, start on a monotonic clock) and sleeps until each deadline, never for
chained relative intervals, so timer slack does not accumulate into a lower rate.

Open loop. Arrival n happens at operational time u_n = g_1 + ... + g_n (u_0 = 0: the first
request goes at once), with unit-mean gaps g: 1 (constant), exponential (poisson) or gamma with
shape b = burstiness and scale 1/b (CV = 1/sqrt(b); b = 1 is Poisson). The wall offset is
t_n = L^-1(u_n), with L(t) the integrated intensity: rate * t^2 / (2 T) during a ramp-up of T
seconds, rate * (t - T/2) after it. Time-warping a unit process this way yields exactly the
process whose rate rises linearly from 0 to `rate` over T and then holds, gap statistics intact.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Iterator
from typing import Literal, NamedTuple

from loadgen.config import LoadConfig

OpenMode = Literal["constant", "poisson", "gamma"]

# Standard deviations above the mean count that arrival_bound() allows for.
_BOUND_SIGMAS = 8.0


class Arrival(NamedTuple):
    i: int  # global index of the request within its phase, the same on every shard
    offset: float  # seconds from the phase start

    def deadline(self, start: float) -> float:
        """The absolute time the request is due, for a phase that started at `start`."""
        return start + self.offset


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from labelled parts (the scenario's seed, a stream's name, a phase's):
    stable across processes and Python versions, unlike `hash()`."""
    return _seed_of("\x1f".join(f"{type(p).__name__}:{p}" for p in parts))


def phase_seed(seed: int, phase: str) -> int:
    """The schedule seed of a phase: stable across processes, distinct between phases. (Its text
    is not `derive_seed`'s, so that the arrivals of a given scenario and seed stay the same.)"""
    return _seed_of(f"schedule\x1f{seed}\x1f{phase}")


def _seed_of(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def arrivals(
    mode: OpenMode,
    rate: float,
    rng: random.Random,
    *,
    burstiness: float = 1.0,
    ramp_up: float = 0.0,
    requests: int = 0,
    duration: float = 0.0,
    unbounded: bool = False,
) -> Iterator[Arrival]:
    """The global open-loop schedule, lazily: stops after `requests` arrivals and/or before the
    first offset >= `duration` (0 = no limit; both 0 only with `unbounded`, when the caller
    stops iterating itself)."""
    if mode not in ("constant", "poisson", "gamma"):
        raise ValueError(f"not an open-loop mode: {mode!r}")
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a positive number of requests/s, got {rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be greater than 0, got {burstiness}")
    if ramp_up < 0 or duration < 0 or requests < 0:
        raise ValueError("ramp_up, duration and requests must be 0 or more")
    if not (requests or duration or unbounded):
        raise ValueError("an open-loop schedule needs requests and/or duration")
    return _arrivals(mode, rate, rng, burstiness, ramp_up, requests, duration)


def _arrivals(
    mode: OpenMode,
    rate: float,
    rng: random.Random,
    burstiness: float,
    ramp_up: float,
    requests: int,
    duration: float,
) -> Iterator[Arrival]:
    ramp_units = rate * ramp_up / 2  # L(ramp_up): expected arrivals during the ramp
    scale = 1.0 / burstiness
    u = 0.0
    n = 0
    while not requests or n < requests:
        if n:
            if mode == "constant":
                u = float(n)  # not a running sum: exact spacing, no drift
            elif mode == "poisson":
                u += rng.expovariate(1.0)
            else:
                u += rng.gammavariate(burstiness, scale)
        offset = _warp(u, rate, ramp_up, ramp_units)
        if duration and offset >= duration:
            return
        yield Arrival(n, offset)
        n += 1


def _warp(u: float, rate: float, ramp_up: float, ramp_units: float) -> float:
    """L^-1(u): the wall offset of operational time u (see the module docstring)."""
    if u < ramp_units:
        return math.sqrt(2.0 * ramp_up * u / rate)
    return u / rate + ramp_up / 2


def phase_lanes(load: LoadConfig, shards: int) -> int:
    """How a phase's requests are dealt to shards: request i goes to lane i % lanes, and lane j
    belongs to shard j % shards. The lanes are the closed loop's streams or the open loop's cap on
    requests in flight, so that a shard gets requests in exact proportion to its share of streams
    or cap (3 streams over 2 shards: 2/3 and 1/3 of the requests); an uncapped open loop has one
    lane per shard."""
    if load.mode == "closed":
        return load.concurrency
    return load.max_concurrency or shards


def shard_of(i: int, lanes: int, shards: int) -> int:
    """The shard that sends request i (see phase_lanes)."""
    return (i % lanes) % shards


def shard_indices(count: int | None, lanes: int, shard: int, shards: int) -> Iterator[int]:
    """The request indices of a shard, ascending: i < count (None: no end) with
    shard_of(i, lanes, shards) == shard."""
    _check_shard(shard, shards)
    own = range(shard, lanes, shards)
    if not own:
        return
    base = 0
    while True:
        for j in own:
            i = base + j
            if count is not None and i >= count:
                return
            yield i
        base += lanes


def shard_count(total: int, lanes: int, shard: int, shards: int) -> int:
    """How many of the request indices i < total belong to the shard."""
    own = len(range(shard, lanes, shards))
    return total // lanes * own + len(range(shard, total % lanes, shards))


def shard_index(position: int, lanes: int, shard: int, shards: int) -> int:
    """The request index of the shard's `position`-th request (0-based, ascending)."""
    own = len(range(shard, lanes, shards))
    return position // own * lanes + shard + position % own * shards


def shard_position(i: int, lanes: int, shard: int, shards: int) -> int:
    """The inverse of shard_index; ValueError when request i is another shard's."""
    r = i % lanes
    if r % shards != shard:
        raise ValueError(f"request {i} is not one of shard {shard} of {shards}")
    return i // lanes * len(range(shard, lanes, shards)) + (r - shard) // shards


def shard_arrivals(
    schedule: Iterable[Arrival], shard: int, shards: int, lanes: int | None = None
) -> Iterator[Arrival]:
    """Shard `shard`'s part of a global schedule (lanes default to one per shard), with their
    global indices and offsets."""
    _check_shard(shard, shards)
    lanes = lanes or shards
    return (a for a in schedule if (a.i % lanes) % shards == shard)


def open_loop_arrivals(
    load: LoadConfig, seed: int, shard: int = 0, shards: int = 1
) -> Iterator[Arrival]:
    """This shard's arrivals of a phase; `seed` is the phase's (see phase_seed)."""
    if load.mode == "closed":
        raise ValueError("a closed-loop phase has no arrival schedule")
    schedule = arrivals(
        load.mode,
        load.rate,
        random.Random(seed),
        burstiness=load.burstiness,
        ramp_up=load.ramp_up,
        requests=load.requests,
        duration=load.duration,
    )
    return shard_arrivals(schedule, shard, shards, phase_lanes(load, shards))


def arrival_bound(load: LoadConfig) -> int | None:
    """A count that the phase's requests stay under (open loop bounded by duration: except with
    negligible probability, mean + 8 standard deviations); None when unknowable beforehand
    (closed loop bounded only by duration, where the server's speed decides)."""
    if load.mode == "closed":
        return load.requests or None
    bound: int | None = None
    if load.duration:
        expected = _integrated_rate(load.rate, load.ramp_up, load.duration)
        cv2 = {"constant": 0.0, "poisson": 1.0, "gamma": 1.0 / load.burstiness}[load.mode]
        bound = math.ceil(1 + expected + _BOUND_SIGMAS * math.sqrt(expected * cv2)) + 8
    if load.requests:
        bound = load.requests if bound is None else min(bound, load.requests)
    return bound


def _integrated_rate(rate: float, ramp_up: float, t: float) -> float:
    if t < ramp_up:
        return rate * t * t / (2 * ramp_up)
    return rate * (t - ramp_up / 2)


def stream_starts(concurrency: int, ramp_up: float) -> list[float]:
    """Closed loop: stream j starts at j * ramp_up / concurrency."""
    if concurrency < 1:
        raise ValueError(f"a closed loop needs 1 or more streams, got {concurrency}")
    if ramp_up < 0:
        raise ValueError(f"ramp_up must be 0 or more, got {ramp_up}")
    return [j * ramp_up / concurrency for j in range(concurrency)]


def shard_range(total: int, shard: int, shards: int) -> range:
    """The global indices (of requests or streams) that belong to a shard: i % shards == shard.
    Its length is total // shards, plus one for the first total % shards shards."""
    _check_shard(shard, shards)
    return range(shard, total, shards)


def shard_share(total: int, shard: int, shards: int) -> int:
    return len(shard_range(total, shard, shards))


def shard_streams(concurrency: int, shard: int, shards: int) -> range:
    """Global indices of the closed-loop streams a shard runs."""
    return shard_range(concurrency, shard, shards)


def closed_loop_streams(
    concurrency: int, ramp_up: float, shard: int = 0, shards: int = 1
) -> list[float]:
    """Start offsets of the shard's streams, each as in the unsharded schedule."""
    starts = stream_starts(concurrency, ramp_up)
    return [starts[j] for j in shard_streams(concurrency, shard, shards)]


def _check_shard(shard: int, shards: int) -> None:
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"shard must be in [0, shards), got shard {shard} of {shards}")
