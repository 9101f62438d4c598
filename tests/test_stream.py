"""The SSE parser: token accounting from usage, outcome kinds, and independence from how the
bytes were split into network reads."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from loadgen.records import Outcome, RequestRecord
from loadgen.stream import StreamParser, http_error_text

ID = "chatcmpl-1"


def chunk(
    delta: dict[str, object] | None, usage: dict[str, int] | None = None, finish: str | None = None
) -> bytes:
    obj: dict[str, object] = {
        "id": ID,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, object]:
    u: dict[str, object] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u


def continuous_stream() -> list[bytes]:
    """vLLM's shape with continuous usage: role chunk, content chunks (one empty delta for a
    partial character, one chunk with 3 tokens), finish chunk, usage chunk, [DONE]."""
    return [
        chunk({"role": "assistant", "content": ""}, usage(100, 0)),
        chunk({"content": "A"}, usage(100, 1)),
        chunk({"content": ""}, usage(100, 2)),  # a partial UTF-8 character
        chunk({"content": "\u00e9 cat"}, usage(100, 5)),  # three tokens in one chunk
        chunk({"content": " sits"}, usage(100, 6), finish="length"),
        chunk(None, usage(100, 6, cached=64)),
        b"data: [DONE]\n\n",
    ]


def parse(parts: list[bytes], times: list[float] | None = None) -> RequestRecord:
    parser = StreamParser()
    for i, part in enumerate(parts):
        parser.feed(part, times[i] if times else float(i + 1))
    parser.close(99.0)
    rec = RequestRecord(index=0, phase="p", shard=0, target="t", intended=0.0, sent=0.0, end=99.0)
    parser.fill(rec, origin=0.0)
    return rec


def test_continuous_usage_counts_tokens_per_chunk() -> None:
    rec = parse(continuous_stream())
    assert rec.outcome is Outcome.OK
    assert rec.prompt_tokens == 100
    assert rec.completion_tokens == 6
    assert rec.cached_tokens == 64
    assert rec.finish_reason == "length"
    # role chunk (0 tokens) is not a token arrival; the empty-delta chunk is (1 token)
    assert rec.chunk_times == [2.0, 3.0, 4.0, 5.0]
    assert rec.chunk_tokens == [1, 1, 3, 1]
    assert sum(rec.chunk_tokens) == rec.completion_tokens
    assert rec.first_token == 2.0


@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_any_split_of_the_bytes_gives_the_same_record(cuts: list[int]) -> None:
    data = b"".join(continuous_stream())
    points = sorted({min(c, len(data)) for c in cuts})
    parts = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    parts = [p for p in parts if p]
    rec = parse(parts, times=[1.0] * len(parts))
    assert rec.outcome is Outcome.OK
    assert rec.completion_tokens == 6
    assert sum(rec.chunk_tokens) == 6
    assert len(rec.chunk_times) == 4


def test_crlf_line_endings_split_anywhere() -> None:
    data = b"".join(continuous_stream()).replace(b"\n", b"\r\n")
    for cut in range(1, len(data), 7):
        rec = parse([data[:cut], data[cut:]])
        assert rec.outcome is Outcome.OK, cut
        assert rec.chunk_tokens == [1, 1, 3, 1]


def test_without_continuous_usage_content_chunks_time_the_tokens() -> None:
    parts = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "A"}),
        chunk({"content": " cat"}, finish="stop"),
        chunk(None, usage(50, 2)),
        b"data: [DONE]\n\n",
    ]
    rec = parse(parts)
    assert rec.outcome is Outcome.OK
    assert rec.chunk_times == [2.0, 3.0]
    assert rec.chunk_tokens == []  # unknown per chunk: never invented
    assert rec.completion_tokens == 2
    assert rec.first_token == 2.0


def test_missing_usage_is_its_own_outcome() -> None:
    parts = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "A"}),
        b"data: [DONE]\n\n",
    ]
    rec = parse(parts)
    assert rec.outcome is Outcome.MISSING_USAGE
    assert rec.completion_tokens is None
    assert rec.prompt_tokens is None


def test_error_object_inside_a_200_stream() -> None:
    err = b'data: {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}}\n\n'
    rec = parse([continuous_stream()[0], continuous_stream()[1], err, b"data: [DONE]\n\n"])
    assert rec.outcome is Outcome.STREAM_ERROR
    assert rec.error is not None and "engine died" in rec.error
    assert rec.chunk_tokens == [1]  # what arrived before the error is kept


def test_event_error_line_form() -> None:
    err = b'event: error\ndata: {"error": {"message": "overloaded"}}\n\n'
    rec = parse([continuous_stream()[0], err])
    assert rec.outcome is Outcome.STREAM_ERROR
    assert rec.error == "overloaded"


def test_malformed_line() -> None:
    rec = parse([continuous_stream()[0], b"data: {not json\n\n", *continuous_stream()[1:]])
    assert rec.outcome is Outcome.MALFORMED
    assert rec.error is not None and "undecodable" in rec.error


def test_stream_cut_before_done_is_dropped() -> None:
    rec = parse(continuous_stream()[:3])
    assert rec.outcome is Outcome.DROPPED
    assert rec.chunk_tokens == [1, 1]


def test_comments_and_unterminated_last_event() -> None:
    parts = [b": keep-alive\n\n", *continuous_stream()[:-1], b"data: [DONE]"]
    rec = parse(parts)
    assert rec.outcome is Outcome.OK


def test_http_error_text_from_vllm_bodies() -> None:
    body = b'{"error": {"message": "min_tokens must be <= max_tokens", "type": "BadRequestError", "param": null, "code": 400}}'
    assert http_error_text(400, body) == "HTTP 400: min_tokens must be <= max_tokens (code 400)"
    assert http_error_text(404, b'{"object": "error", "message": "model x not found"}') == (
        "HTTP 404: model x not found"
    )
    assert http_error_text(502, b"<html>bad gateway</html>") == "HTTP 502: <html>bad gateway</html>"
    assert http_error_text(503, b"") == "HTTP 503"
