"""A closed-loop stream's next requests, as the transport asks for them from its I/O callback."""

from __future__ import annotations

from typing import Any

from loadgen.records import RequestRecord
from loadgen.runner import ShardContext, _Stream


class _Reqs:
    def body(self, i: int) -> bytes:
        return b"%d" % i

    def image_ids(self, i: int) -> list[str]:
        return []


class _Sink:
    def add(self, rec: RequestRecord) -> None: ...


def stream(urls: list[str], count: int) -> _Stream:
    ctx = ShardContext(transport=Any, urls=urls, sink=_Sink(), origin=0.0)  # type: ignore[arg-type]
    return _Stream(ctx, "p", _Reqs(), iter(range(count)), None)


def test_requests_sent_ahead_one_after_another_are_taken_over_in_order() -> None:
    s = stream(["u"], 4)
    # each response ended before the task woke: the transport asked three times
    sent = [s.next_request("u") for _ in range(3)]
    assert [r[0].index for r in sent if r] == [0, 1, 2]
    assert [t[0].index for t in (s.take(), s.take(), s.take()) if t] == [0, 1, 2]
    last = s.take()  # nothing ahead: the task builds the next itself
    assert last is not None and last[0].index == 3
    assert s.take() is None and s.next_request("u") is None
    assert s.sent == 4


def test_another_endpoint_waits_for_the_task_and_cancelled_ones_are_returned() -> None:
    s = stream(["a", "b"], 6)
    assert s.next_request("a") is not None  # index 0 -> a
    assert s.next_request("a") is None  # index 1 goes to b: built, not sent
    assert s.next_request("a") is None  # and nothing passes it
    assert [r.index for r in s.abandoned()] == [0]  # only what was sent
    assert s.sent == 1
