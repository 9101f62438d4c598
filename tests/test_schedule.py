"""Arrival schedules: exact spacing, gap statistics, ramp-up, stop rules and exact sharding.

Statistical checks are seeded (so deterministic), and their tolerances are 4 to 5 standard errors
of the estimate, computed from the distribution being tested, so a correct generator passes for
essentially any seed while a wrong mean, shape or ramp fails.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from loadgen import schedule
from loadgen.config import LoadConfig
from loadgen.schedule import Arrival, OpenMode


def offsets(mode: OpenMode, rate: float, seed: int = 1, **kw: float) -> list[float]:
    return [a.offset for a in schedule.arrivals(mode, rate, random.Random(seed), **kw)]  # type: ignore[arg-type]


def gaps(values: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(values)]


def count_in(values: list[float], lo: float, hi: float) -> int:
    return sum(lo <= v < hi for v in values)


def cv_tolerance(cv: float, kurtosis: float, n: int, sigmas: float = 4.0) -> float:
    """Absolute tolerance on a sample CV: the relative standard errors of the sample standard
    deviation, sqrt((kurtosis - 1) / 4n), and of the sample mean, cv / sqrt(n), added (the
    conservative combination), times `sigmas`."""
    return sigmas * cv * (math.sqrt((kurtosis - 1) / (4 * n)) + cv / math.sqrt(n))


def intensity_integral(rate: float, ramp: float, t: float) -> float:
    """The integral of rate * min(1, s / ramp) over [0, t]."""
    return rate * t * t / (2 * ramp) if t < ramp else rate * (t - ramp / 2)


# ---- constant ----------------------------------------------------------------------------


def test_constant_spacing_is_exact() -> None:
    got = offsets("constant", 8.0, requests=1000)
    assert got == [n / 8.0 for n in range(1000)]


def test_first_arrival_is_at_the_phase_start() -> None:
    for mode in ("constant", "poisson", "gamma"):
        assert offsets(mode, 3.0, requests=1)[0] == 0.0


# ---- poisson and gamma -------------------------------------------------------------------

N = 100_000


def test_poisson_mean_gap_and_cv() -> None:
    rate = 50.0
    g = gaps(offsets("poisson", rate, seed=7, requests=N + 1))
    mean = statistics.fmean(g)
    assert abs(mean - 1 / rate) < 5 * (1 / rate) / math.sqrt(N)
    cv = statistics.pstdev(g) / mean
    assert abs(cv - 1.0) < cv_tolerance(1.0, kurtosis=9.0, n=N)
    # Exponential shape: P(gap > mean) = 1/e; binomial standard error.
    p = math.exp(-1)
    above = sum(x > 1 / rate for x in g) / N
    assert abs(above - p) < 5 * math.sqrt(p * (1 - p) / N)


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 1.0, 2.0, 4.0])
def test_gamma_cv_is_one_over_sqrt_burstiness(burstiness: float) -> None:
    rate = 20.0
    g = gaps(offsets("gamma", rate, seed=11, burstiness=burstiness, requests=N + 1))
    expected_cv = 1 / math.sqrt(burstiness)
    mean = statistics.fmean(g)
    assert abs(mean - 1 / rate) < 5 * expected_cv * (1 / rate) / math.sqrt(N)
    cv = statistics.pstdev(g) / mean
    kurtosis = 3 + 6 / burstiness  # of a gamma distribution with this shape
    assert abs(cv - expected_cv) < cv_tolerance(expected_cv, kurtosis, N)


def test_gamma_with_burstiness_one_is_poisson_in_distribution() -> None:
    g = gaps(offsets("gamma", 1.0, seed=3, burstiness=1.0, requests=N + 1))
    p = math.exp(-1)
    above = sum(x > 1.0 for x in g) / N
    assert abs(above - p) < 5 * math.sqrt(p * (1 - p) / N)


def test_same_seed_same_schedule_and_different_seed_differs() -> None:
    a = offsets("poisson", 10.0, seed=5, requests=100)
    assert a == offsets("poisson", 10.0, seed=5, requests=100)
    assert a != offsets("poisson", 10.0, seed=6, requests=100)


# ---- ramp-up -----------------------------------------------------------------------------


def test_constant_ramp_up_is_the_exact_time_warp() -> None:
    rate, ramp = 40.0, 10.0
    got = offsets("constant", rate, ramp_up=ramp, requests=1000)
    # Arrival n at u = n: sqrt(2 T n / rate) during the ramp (n < rate T / 2 = 200), then
    # n / rate + T / 2, i.e. exact 1/rate spacing from the end of the ramp on.
    assert got[:200] == [math.sqrt(2 * ramp * n / rate) for n in range(200)]
    assert got[200] == pytest.approx(ramp)
    assert count_in(got, 0.0, ramp) == 200
    assert max(abs(x - 1 / rate) for x in gaps(got[200:])) < 1e-9


@pytest.mark.parametrize("mode", ["poisson", "gamma"])
def test_ramp_up_counts_match_the_integrated_rate(mode: OpenMode) -> None:
    rate, ramp = 200.0, 50.0
    burst = 0.5 if mode == "gamma" else 1.0
    got = offsets(mode, rate, seed=13, burstiness=burst, ramp_up=ramp, duration=ramp + 100.0)

    def check(lo: float, hi: float) -> None:
        # Expected: the integral of the intensity over [lo, hi); a renewal count's variance
        # is about mean * CV^2 (CV^2 = 1 / burstiness).
        integral = intensity_integral(rate, ramp, hi) - intensity_integral(rate, ramp, lo)
        tol = 5 * math.sqrt(integral / burst) + 1  # + 1: the arrival at offset 0
        assert abs(count_in(got, lo, hi) - integral) < tol, (lo, hi)

    check(0.0, ramp)  # rate * T / 2 = 5000
    check(0.0, ramp / 2)  # the first half of the ramp holds a quarter of its arrivals
    check(ramp / 2, ramp)
    # After the ramp the rate is the target, in every 20 s window.
    for lo in (ramp, ramp + 20.0, ramp + 40.0, ramp + 60.0, ramp + 80.0):
        assert abs(count_in(got, lo, lo + 20.0) - rate * 20.0) < 5 * math.sqrt(rate * 20 / burst)


def test_ramp_window_rate_rises_linearly() -> None:
    rate, ramp = 100.0, 100.0
    got = offsets("poisson", rate, seed=17, ramp_up=ramp, duration=ramp)
    # Ten 10 s windows: window w expects rate * ((w+1)^2 - w^2) * 100 / (2 * 100) arrivals.
    for w in range(10):
        lo, hi = 10.0 * w, 10.0 * (w + 1)
        expected = rate * (hi * hi - lo * lo) / (2 * ramp)
        assert abs(count_in(got, lo, hi) - expected) < 5 * math.sqrt(expected) + 1


# ---- stop conditions ---------------------------------------------------------------------


def test_stops_after_requests() -> None:
    assert len(offsets("poisson", 1000.0, requests=777)) == 777


def test_stops_before_duration() -> None:
    got = offsets("constant", 10.0, duration=3.05)
    assert len(got) == 31  # n / 10 < 3.05 for n = 0..30
    assert got[-1] < 3.05
    random_got = offsets("poisson", 10.0, seed=2, duration=30.0)
    assert random_got[-1] < 30.0
    following = list(
        itertools.islice(
            schedule.arrivals("poisson", 10.0, random.Random(2), unbounded=True),
            len(random_got) + 1,
        )
    )
    assert [a.offset for a in following[:-1]] == random_got
    assert following[-1].offset >= 30.0


def test_both_limits_take_the_earlier() -> None:
    assert len(offsets("constant", 10.0, requests=5, duration=100.0)) == 5
    assert len(offsets("constant", 10.0, requests=500, duration=1.0)) == 10


def test_unbounded_needs_consent() -> None:
    with pytest.raises(ValueError, match="requests and/or duration"):
        schedule.arrivals("poisson", 1.0, random.Random(0))
    it = schedule.arrivals("poisson", 1.0, random.Random(0), unbounded=True)
    assert len(list(itertools.islice(it, 5000))) == 5000


@pytest.mark.parametrize(
    ("mode", "rate", "kw"),
    [
        ("closed", 1.0, {}),
        ("poisson", 0.0, {}),
        ("poisson", -1.0, {}),
        ("poisson", math.inf, {}),
        ("gamma", 1.0, {"burstiness": 0.0}),
        ("poisson", 1.0, {"ramp_up": -1.0}),
    ],
)
def test_rejects_bad_parameters(mode: str, rate: float, kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        schedule.arrivals(mode, rate, random.Random(0), requests=1, **kw)  # type: ignore[arg-type]


def test_arrival_deadline_is_absolute() -> None:
    a = Arrival(3, 1.5)
    assert a.deadline(100.0) == 101.5


# ---- sharding ----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    mode=st.sampled_from(["constant", "poisson", "gamma"]),
    rate=st.floats(0.1, 1000.0),
    burstiness=st.floats(0.1, 10.0),
    ramp_up=st.sampled_from([0.0, 0.5, 5.0]),
    requests=st.integers(1, 400),
    seed=st.integers(0, 2**63),
    shards=st.integers(1, 9),
)
def test_shards_partition_the_schedule_exactly(
    mode: OpenMode,
    rate: float,
    burstiness: float,
    ramp_up: float,
    requests: int,
    seed: int,
    shards: int,
) -> None:
    load = LoadConfig(
        mode=mode, rate=rate, burstiness=burstiness, ramp_up=ramp_up, requests=requests
    )
    whole = list(schedule.open_loop_arrivals(load, seed))
    assert [a.i for a in whole] == list(range(requests))
    parts = [list(schedule.open_loop_arrivals(load, seed, k, shards)) for k in range(shards)]
    for k, part in enumerate(parts):
        assert all(a.i % shards == k for a in part)
        assert len(part) == schedule.shard_share(requests, k, shards)
    merged = sorted(itertools.chain.from_iterable(parts), key=lambda a: a.i)
    assert merged == whole


def test_duration_bounded_shards_partition_too() -> None:
    load = LoadConfig(mode="poisson", rate=300.0, duration=5.0, ramp_up=1.0)
    whole = list(schedule.open_loop_arrivals(load, 99))
    parts = [list(schedule.open_loop_arrivals(load, 99, k, 4)) for k in range(4)]
    assert sorted(itertools.chain.from_iterable(parts)) == whole


@given(concurrency=st.integers(1, 300), ramp=st.floats(0.0, 60.0), shards=st.integers(1, 12))
def test_closed_loop_streams_split_exactly(concurrency: int, ramp: float, shards: int) -> None:
    starts = schedule.stream_starts(concurrency, ramp)
    assert starts == [j * ramp / concurrency for j in range(concurrency)]
    shares = [schedule.shard_share(concurrency, k, shards) for k in range(shards)]
    assert sum(shares) == concurrency
    assert shares == [
        concurrency // shards + (1 if k < concurrency % shards else 0) for k in range(shards)
    ]
    seen: list[int] = []
    for k in range(shards):
        indices = schedule.shard_streams(concurrency, k, shards)
        offsets_k = schedule.closed_loop_streams(concurrency, ramp, k, shards)
        assert offsets_k == [starts[j] for j in indices]
        seen.extend(indices)
    assert sorted(seen) == list(range(concurrency))


def test_request_counts_split_like_streams() -> None:
    assert [schedule.shard_share(10, k, 4) for k in range(4)] == [3, 3, 2, 2]
    assert list(schedule.shard_range(10, 1, 4)) == [1, 5, 9]
    with pytest.raises(ValueError):
        schedule.shard_range(10, 4, 4)


def test_phase_seed_is_stable_and_per_phase() -> None:
    assert schedule.phase_seed(1, "cold") == schedule.phase_seed(1, "cold")
    assert schedule.phase_seed(1, "cold") != schedule.phase_seed(1, "warm")
    assert schedule.phase_seed(1, "cold") != schedule.phase_seed(2, "cold")


# ---- arrival bound -----------------------------------------------------------------------


def test_arrival_bound_covers_duration_bounded_phases() -> None:
    for mode, burst in (("constant", 1.0), ("poisson", 1.0), ("gamma", 0.2), ("gamma", 5.0)):
        load = LoadConfig(mode=mode, rate=20.0, burstiness=burst, duration=10.0, ramp_up=2.0)  # type: ignore[arg-type]
        bound = schedule.arrival_bound(load)
        assert bound is not None
        counts = [sum(1 for _ in schedule.open_loop_arrivals(load, seed)) for seed in range(200)]
        assert max(counts) <= bound
        # and it is a bound, not a wild overestimate: within a few times the mean
        assert bound < 3 * statistics.fmean(counts) + 20


def test_arrival_bound_of_count_bounded_and_closed_phases() -> None:
    assert schedule.arrival_bound(LoadConfig(mode="poisson", rate=5.0, requests=42)) == 42
    capped = LoadConfig(mode="constant", rate=1.0, requests=1000, duration=10.0)
    bound = schedule.arrival_bound(capped)
    assert bound is not None
    assert sum(1 for _ in schedule.open_loop_arrivals(capped, 0)) <= bound < 1000
    assert schedule.arrival_bound(LoadConfig(mode="closed", requests=7)) == 7
    assert schedule.arrival_bound(LoadConfig(mode="closed", duration=60.0)) is None


@given(
    lanes=st.integers(1, 40),
    shards=st.integers(1, 9),
    count=st.integers(0, 500),
)
def test_shard_indices_partition_requests_in_proportion_to_lanes(
    lanes: int, shards: int, count: int
) -> None:
    assume(lanes >= shards)
    parts = [list(schedule.shard_indices(count, lanes, k, shards)) for k in range(shards)]
    assert sorted(itertools.chain.from_iterable(parts)) == list(range(count))
    for k, part in enumerate(parts):
        assert part == sorted(part)
        assert all(schedule.shard_of(i, lanes, shards) == k for i in part)
        # Whole rounds of lanes give each shard exactly its share of the lanes.
        whole = count // lanes * lanes
        share = schedule.shard_share(lanes, k, shards)
        assert sum(1 for i in part if i < whole) == count // lanes * share


def test_a_capped_open_loop_deals_arrivals_by_the_cap_share() -> None:
    """A cap of 3 over 2 shards holds 2 + 1 slots: the arrivals go 2/3 and 1/3, so each slot
    takes the same load as with one shard."""
    load = LoadConfig(mode="constant", rate=30.0, requests=300, max_concurrency=3)
    parts = [list(schedule.open_loop_arrivals(load, 5, k, 2)) for k in range(2)]
    assert [len(p) for p in parts] == [200, 100]
    whole = list(schedule.open_loop_arrivals(load, 5))
    assert sorted(itertools.chain.from_iterable(parts)) == whole


def test_unbounded_shard_indices_run_on() -> None:
    gen = schedule.shard_indices(None, 5, 1, 2)
    assert [next(gen) for _ in range(5)] == [1, 3, 6, 8, 11]


@given(lanes=st.integers(1, 40), shards=st.integers(1, 9), count=st.integers(0, 300))
def test_shard_positions_number_a_shards_requests(lanes: int, shards: int, count: int) -> None:
    assume(lanes >= shards)
    for k in range(shards):
        indices = list(schedule.shard_indices(count, lanes, k, shards))
        assert schedule.shard_count(count, lanes, k, shards) == len(indices)
        for position, i in enumerate(indices):
            assert schedule.shard_index(position, lanes, k, shards) == i
            assert schedule.shard_position(i, lanes, k, shards) == position
    if shards > 1:
        with pytest.raises(ValueError):
            schedule.shard_position(1, lanes, 0, shards) if 1 % lanes % shards else (
                schedule.shard_position(0, lanes, 1, shards)
            )
