"""Distinct images and bodies of a phase: exact counts, merged exactly across shards."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.metrics.distinct import DistinctSent
from loadgen.metrics.summary import PhaseAccumulator
from loadgen.records import RequestRecord
from loadgen.results.schema import to_builtins

IDS = st.one_of(
    st.builds(
        lambda p, k: f"{p}-{k}", st.sampled_from(["syn-1-main", "warm-1-a-b"]), st.integers(0, 3000)
    ),
    st.sampled_from(["a.jpg", "b-2.png", "c-07", "x-0", "d-", "-5"]),
)
REQUESTS = st.lists(
    st.tuples(st.lists(IDS, max_size=3), st.one_of(st.none(), st.integers(0, 5000)), st.booleans()),
    max_size=60,
)


def _record(index: int, images: list[str], body: int | None) -> RequestRecord:
    return RequestRecord(
        index=index,
        phase="main",
        shard=0,
        target="t",
        intended=0.0,
        sent=0.0,
        end=0.1,
        images=images,
        body=body,
    )


@settings(max_examples=200, deadline=None)
@given(requests=REQUESTS)
def test_counts_are_exact_and_merge_exactly(
    requests: list[tuple[list[str], int | None, bool]],
) -> None:
    whole = PhaseAccumulator("main")
    shards = [PhaseAccumulator("main"), PhaseAccumulator("main")]
    for n, (images, body, second) in enumerate(requests):
        rec = _record(n, images, body)
        whole.add(rec)
        shards[second].add(rec)
    whole.sent.waited(3, 125)
    shards[0].sent.waited(1, 100)
    shards[1].sent.waited(2, 25)
    merged = PhaseAccumulator.from_state(shards[0].to_state())
    merged.merge(PhaseAccumulator.from_state(shards[1].to_state()))
    ids = [i for images, _, _ in requests for i in images]
    bodies = {b for _, b, _ in requests if b is not None}
    expected = {
        "images_shown": len(ids),
        "distinct_images": len(set(ids)),
        "distinct_bodies": len(bodies) if any(b is not None for _, b, _ in requests) else None,
        "waited_for_body": 3,
        "body_wait_s": 0.000125,
    }
    assert to_builtins(whole.finish())["workload"] == expected
    assert to_builtins(merged.finish())["workload"] == expected
    assert merged.sent.to_state() == whole.sent.to_state()


def test_a_long_phase_keeps_about_a_bit_a_request() -> None:
    sent = DistinctSent()
    for n in range(100_000):
        sent.add(_record(n, [f"syn-1-main-{n}"], n))
    assert (sent.images, sent.bodies) == (100_000, 100_000)
    state = sent.to_state()
    assert len(state["images"]["syn-1-main"]) + len(state["bodies"]) < 2_000  # all set: compresses
    assert DistinctSent.from_state(state).to_state() == state
