"""A closed-loop stream's next requests, as the transport asks for them from its I/O callback."""

from __future__ import annotations

from typing import Any

import anyio

from loadgen.records import RequestRecord
from loadgen.runner import ShardContext, _Stream


class _Reqs:
    """Bodies numbered like their requests; those in `pending` are still being built."""

    def __init__(self, pending: frozenset[int] = frozenset()) -> None:
        self.pending = set(pending)

    def body(self, i: int) -> bytes:
        assert i not in self.pending
        return b"%d" % i

    def image_ids(self, i: int) -> list[str]:
        return []

    def body_id(self, i: int) -> int:
        return i

    def invalid_kind(self, i: int) -> str:
        return ""

    def ready(self, i: int) -> bool:
        return i not in self.pending

    async def wait(self, i: int) -> None:
        self.pending.discard(i)


class _Sink:
    def add(self, rec: RequestRecord) -> None: ...


def stream(urls: list[str], count: int, pending: frozenset[int] = frozenset()) -> _Stream:
    ctx = ShardContext(transport=Any, urls=urls, sink=_Sink(), origin=0.0)  # type: ignore[arg-type]
    return _Stream(ctx, "p", _Reqs(pending), iter(range(count)), None)


def take(s: _Stream) -> tuple[RequestRecord, bytes] | None:
    return anyio.run(s.take)


def test_requests_sent_ahead_one_after_another_are_taken_over_in_order() -> None:
    s = stream(["u"], 4)
    # each response ended before the task woke: the transport asked three times
    sent = [s.next_request("u") for _ in range(3)]
    assert [r[0].index for r in sent if r] == [0, 1, 2]
    assert [t[0].index for t in (take(s), take(s), take(s)) if t] == [0, 1, 2]
    last = take(s)  # nothing ahead: the task builds the next itself
    assert last is not None and last[0].index == 3
    assert take(s) is None and s.next_request("u") is None
    assert s.sent == 4


def test_another_endpoint_waits_for_the_task_and_cancelled_ones_are_returned() -> None:
    s = stream(["a", "b"], 6)
    assert s.next_request("a") is not None  # index 0 -> a
    assert s.next_request("a") is None  # index 1 goes to b: built, not sent
    assert s.next_request("a") is None  # and nothing passes it
    assert [r.index for r in s.abandoned()] == [0]  # only what was sent
    assert s.sent == 1


def test_a_body_still_being_built_is_left_to_the_task_and_no_request_is_lost() -> None:
    s = stream(["u"], 3, pending=frozenset({1}))
    first = s.next_request("u")
    assert first is not None and first[0].index == 0
    assert s.next_request("u") is None  # index 1's body is not built: the callback sends nothing
    assert s.next_request("u") is None  # ... and does not skip it
    assert [t[0].index for t in (take(s), take(s), take(s)) if t] == [0, 1, 2]  # the task waits
    assert take(s) is None and s.sent == 3
