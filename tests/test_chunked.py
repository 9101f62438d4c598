"""Whole chunks taken in one go: exactly what the one-by-one decoder takes, with the same bytes,
and the native transport's exchanges unchanged by it, whatever the framing and the reads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loadgen.chunked
import loadgen.client
from loadgen.chunked import whole_chunks
from loadgen.records import Outcome
from loadgen.stream import StreamParser
from tests.test_client_native import exchange_of


def one_by_one(buf: bytes, pos: int) -> tuple[list[bytes], int]:
    """The whole chunks from `pos` by the rules of `_Exchange._chunked`, one at a time."""
    out = []
    while True:
        i = buf.find(b"\r\n", pos)
        if i < 0:
            return out, pos
        try:
            size = int(buf[pos:i], 16)
        except ValueError:
            return out, pos
        end = i + 2 + size
        if size <= 0 or end + 2 > len(buf) or buf[end : end + 2] != b"\r\n":
            return out, pos
        out.append(buf[i + 2 : end])
        pos = end + 2


# Chunk data, sometimes holding a CRLF (or a piece of one) of its own.
DATA = st.binary(min_size=1, max_size=40) | st.sampled_from(
    [b"data: {}\n\n", b"a\r\nb", b"\r\n", b"\r", b"\n", b"x\r\n0\r\n\r\n"]
)
# Size lines as servers write them, and as they should not.
LINES = st.sampled_from([b"", b";a=b", b" ", b"0x", b"-", b"+", b"_", b"zz", b"00"])


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, int]:
    """A chunked body from some offset on: chunks (their size lines sometimes odd, or lying
    about the size), maybe the last chunk and a trailer, maybe cut anywhere."""
    prefix = draw(st.binary(max_size=5))
    out = [prefix]
    for data in draw(st.lists(DATA, max_size=12)):
        size = len(data) + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
        line = b"%x" % max(size, 0)
        odd = draw(LINES)
        line = odd + line if odd in (b" ", b"0x", b"-", b"+", b"00") else line + odd
        if odd == b"_" and len(line) > 1:
            line = line[:1] + b"_" + line[1:]
        out.append(line + b"\r\n" + data + b"\r\n")
    if draw(st.booleans()):
        out.append(b"0\r\n" + draw(st.sampled_from([b"", b"X-T: 1\r\n"])) + b"\r\n")
    body = b"".join(out)
    cut = draw(st.integers(0, len(body)))
    return body[: len(body) - cut if draw(st.booleans()) else len(body)], len(prefix)


@settings(max_examples=400, deadline=None)
@given(bodies())
def test_whole_chunks_are_a_prefix_of_what_the_one_by_one_decoder_takes(
    case: tuple[bytes, int],
) -> None:
    buf, pos = case
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loadgen.chunked, "MANY", 0)  # however few chunks the read holds
        taken, after = whole_chunks(buf, pos)
    rest, end = one_by_one(buf, after)
    assert (taken + rest, end) == one_by_one(buf, pos)
    if not any(b"\r\n" in data for data in taken + rest):
        assert not rest  # without a CRLF inside any data, all of them in one go


def test_a_whole_response_read_at_once() -> None:
    events = [b"data: {%d}\n\n" % i for i in range(40)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\n\r\n"
    taken, after = whole_chunks(head + body, len(head))
    assert taken == events
    assert (head + body)[after:] == b"0\r\n\r\n"
    assert whole_chunks(b"0\r\n\r\n", 0) == ([], 0)
    assert whole_chunks(b"5\r\nab", 0) == ([], 0)
    # a read of a few chunks, or of one long one, is left to the one-by-one decoder
    assert whole_chunks(body[: 4 * len(events[0]) + 20], 0) == ([], 0)
    assert whole_chunks(b"1000\r\n" + b"x" * 5000, 0) == ([], 0)


class _Parser(StreamParser):
    """Keeps every piece of body handed over, and when."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[tuple[bytes, float]] = []

    def feed(self, data: bytes, t: float) -> None:
        self.pieces.append((data, t))


def _exchange(reads: list[bytes]) -> tuple[object, ...]:
    parser = _Parser()
    ex, _ = exchange_of(reads, parser)
    failure = ex.done.exception() if ex.done.done() and not ex.done.cancelled() else None
    return (
        parser.pieces,
        ex.finished,
        ex.keep_alive,
        ex.status,
        str(failure),
        getattr(failure, "outcome", None),
    )


@settings(max_examples=200, deadline=None)
@given(bodies(), st.lists(st.integers(1, 400), max_size=6))
def test_the_native_transport_reads_the_same_with_or_without_them(
    case: tuple[bytes, int], cuts: list[int]
) -> None:
    body = case[0][case[1] :]
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    points = sorted({c % len(data) for c in cuts} - {0})
    reads = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loadgen.client, "SPLIT_BYTES", 0)  # every read, however short
        mp.setattr(loadgen.chunked, "MANY", 0)
        fast = _exchange(reads)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loadgen.client, "whole_chunks", lambda buf, pos: ([], pos))
        slow = _exchange(reads)
    assert fast == slow
    if slow[5] is not None:
        assert slow[5] in (Outcome.MALFORMED, Outcome.DROPPED)
