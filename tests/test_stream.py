"""The SSE parser: token accounting from usage, outcome kinds, and independence from how the
bytes were split into network reads."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.endpoints.completions import CompletionsParser
from loadgen.records import Outcome, RequestRecord
from loadgen.stream import _LONG, MAX_EVENT_BYTES, StreamParser, http_error_text

ID = "chatcmpl-1"


def chunk(
    delta: dict[str, object] | None,
    usage: dict[str, object] | None = None,
    finish: str | None = None,
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
    parser.fill(rec)
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


# ---- the fast path reads exactly what decoding every event would --------------------------------
SAMPLE = Path(__file__).parent / "data" / "vllm_stream_sample.txt"


def oracle(parts: list[bytes], times: list[float], closed: float) -> dict[str, object]:
    """What the stream says, decoding every event with orjson: the parser's semantics, written
    the slow and obvious way. An event's time is that of the read that completed it."""
    data = b"".join(parts)
    crlf = b"\r" in data
    sep = b"\r\n\r\n" if crlf else b"\n\n"
    ends = [0]
    for p in parts:
        ends.append(ends[-1] + len(p))
    events: list[tuple[bytes, float]] = []
    start = 0
    while (pos := data.find(sep, start)) >= 0:
        done_at = pos + len(sep)  # the read holding the terminator's last byte completes it
        part = next(i for i in range(len(parts)) if ends[i + 1] >= done_at)
        events.append((data[start:pos].replace(b"\r\n", b"\n"), times[part]))
        start = done_at
    tail = data[start:].replace(b"\r\n", b"\n").strip(b"\n")
    if tail.strip():
        events.append((tail, closed))
    out: dict[str, object] = {
        "times": [], "tokens": [], "continuous": False, "usage": None, "error": None,
        "malformed": None, "finish": None, "done": False,
    }  # fmt: skip
    prev = 0
    for event, t in events:
        lines = [ln for ln in event.split(b"\n") if ln.startswith(b"data:")]
        payload = b"\n".join(ln[6:] if ln[5:6] == b" " else ln[5:] for ln in lines)
        if not lines:
            continue
        if payload == b"[DONE]":
            out["done"] = True
            continue
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            out["malformed"] = out["malformed"] or "bad"
            continue
        if not isinstance(obj, dict):
            out["malformed"] = out["malformed"] or "bad"
            continue
        if obj.get("error") is not None:
            out["error"] = out["error"] or "error"
            continue
        u = obj.get("usage")
        if u:
            out["usage"] = u
        choices = obj.get("choices")
        if not choices:
            continue
        if choices[0].get("finish_reason"):
            out["finish"] = choices[0]["finish_reason"]
        if u and u.get("completion_tokens") is not None:
            out["continuous"] = True
            if u["completion_tokens"] - prev > 0:
                out["times"].append(t)  # type: ignore[attr-defined]
                out["tokens"].append(u["completion_tokens"] - prev)  # type: ignore[attr-defined]
                prev = u["completion_tokens"]
            continue
        delta = choices[0].get("delta")
        if delta and (delta.get("content") or delta.get("reasoning_content")):
            out["times"].append(t)  # type: ignore[attr-defined]
    return out


def assert_parsed_like_oracle(parts: list[bytes], times: list[float]) -> None:
    rec = parse(parts, times)
    want = oracle(parts, times, 99.0)
    assert rec.chunk_times == want["times"]
    assert rec.chunk_tokens == (want["tokens"] if want["continuous"] else [])
    assert rec.finish_reason == want["finish"]
    usage = want["usage"]
    assert isinstance(usage, dict) or usage is None
    assert rec.completion_tokens == (usage or {}).get("completion_tokens")
    assert rec.prompt_tokens == (usage or {}).get("prompt_tokens")
    if want["error"]:
        assert rec.outcome is Outcome.STREAM_ERROR
    elif want["malformed"]:
        assert rec.outcome is Outcome.MALFORMED
    elif not want["done"]:
        assert rec.outcome is Outcome.DROPPED
    elif usage is None or usage.get("completion_tokens") is None:
        assert rec.outcome is Outcome.MISSING_USAGE
    else:
        assert rec.outcome is Outcome.OK


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    parts = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return [p for p in parts if p]


def test_real_vllm_stream_any_split() -> None:
    data = SAMPLE.read_bytes()
    whole = parse([data], [1.0])
    assert whole.outcome is Outcome.OK
    assert whole.completion_tokens == sum(whole.chunk_tokens) == 32
    assert whole.prompt_tokens == 73 and whole.cached_tokens == 32
    assert whole.finish_reason == "length"
    for step in (1, 7, 97, 331, 1000):
        parts = [data[i : i + step] for i in range(0, len(data), step)]
        assert_parsed_like_oracle(parts, [float(i) for i in range(len(parts))])
    events = [e + b"\n\n" for e in data.split(b"\n\n") if e.strip()]
    for size in (1, 2, 3, 5, 40):  # several whole events per read, and one at a time
        parts = [b"".join(events[i : i + size]) for i in range(0, len(events), size)]
        assert_parsed_like_oracle(parts, [float(i) for i in range(len(parts))])


tricky_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            '"completion_tokens":7}',
            '"finish_reason":null',
            '"error"',
            "\n\ndata: {",
            'data: {"a":1}',
            "\\",
            '"',
            "}\n\n",
            "\r\n",
        ]
    ),
)


@st.composite
def chunk_streams(draw: st.DrawFn) -> tuple[list[bytes], list[float]]:
    """Chat-completion streams of many shapes: key orders, spacing, extra keys, several tokens
    per chunk, no continuous usage, errors, comments, CRLF, float counts, a missing [DONE]."""
    continuous = draw(st.booleans())
    spaced = draw(st.integers(0, 4)) == 0
    extra = draw(st.booleans())
    usage_null = not continuous and draw(st.booleans())  # OpenAI's `"usage": null` per chunk
    prompt = draw(st.integers(0, 5000))

    def dump(obj: dict[str, object]) -> bytes:
        keys = draw(st.permutations(list(obj)))
        ordered = {k: obj[k] for k in keys}
        if spaced:
            return json.dumps(ordered).encode()
        return orjson.dumps(ordered)

    def usage_of(n: float) -> dict[str, object]:
        u: dict[str, object] = {"prompt_tokens": prompt, "total_tokens": prompt + n}
        u["completion_tokens"] = n
        if extra:
            u["completion_tokens_details"] = None
        return {k: u[k] for k in draw(st.permutations(list(u)))}

    def event(choices: list[dict[str, object]], n: float | None) -> bytes:
        obj: dict[str, object] = {"id": "c", "object": "chat.completion.chunk", "choices": choices}
        if n is not None:
            obj["usage"] = usage_of(n)
        elif usage_null:
            obj["usage"] = None
        return b"data: " + dump(obj) + b"\n\n"

    def choice(text: str, finish: str | None) -> dict[str, object]:
        c: dict[str, object] = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        if extra:
            c["token_ids"] = None
        if finish:
            c["stop_reason"] = None
        return c

    out = [event([choice("", None)], 0 if continuous else None)]
    total: float = 0
    for _ in range(draw(st.integers(0, 12))):
        k = draw(st.integers(0, 3))
        total += k
        if draw(st.integers(0, 30)) == 0:
            total = float(total)  # a float count takes the decoding path
        out.append(event([choice(draw(tricky_text), None)], total if continuous else None))
        roll = draw(st.integers(0, 40))
        if roll == 0:
            out.append(b": ping\n\n")
        elif roll == 1:
            out.append(b'data: {"error": {"message": "boom", "code": 500}}\n\n')
        elif roll == 2:
            out.append(b'event: error\ndata: {"error": "x"}\n\n')
        elif roll == 3:
            out.append(b"data: {not json}\n\n")
    if draw(st.booleans()):
        total += 1
        out.append(event([choice("end", "length")], total if continuous else None))
    if draw(st.booleans()):
        out.append(event([], total))
    if draw(st.booleans()):
        out.append(b"data: [DONE]\n\n")
    data = b"".join(out)
    if draw(st.integers(0, 5)) == 0:
        data = data.replace(b"\n", b"\r\n")
    parts = split_at(data, draw(st.lists(st.integers(0, 10_000), max_size=10)))
    if draw(st.booleans()):  # whole events per read, several at a time as a busy client reads
        size = draw(st.integers(1, 12))
        parts = [b"".join(out[i : i + size]) for i in range(0, len(out), size)]
    times = sorted(draw(st.lists(st.floats(0.0, 50.0), min_size=len(parts), max_size=len(parts))))
    return parts, times


def _content_chunks(spaced: bool, continuous: bool, tokens: int) -> list[bytes]:
    out = []
    for i in range(1, tokens + 1):
        obj: dict[str, object] = {
            "id": "c",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None}],
        }
        if continuous:
            obj["usage"] = {"prompt_tokens": 3, "total_tokens": 3 + i, "completion_tokens": i}
        out.append(b"data: " + (json.dumps(obj).encode() if spaced else orjson.dumps(obj)))
    return [e + b"\n\n" for e in out]


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "usage-at-end"])
def test_content_chunks_of_every_shape_are_read_without_decoding(
    spaced: bool, continuous: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the first line's first key tells how the server writes JSON, reads of content
    chunks take a fast path whatever the spacing and whether usage comes with each chunk."""
    first = _content_chunks(spaced, continuous, 1)[0]
    rest = _content_chunks(spaced, continuous, 41)[1:]
    decoded: list[bytes] = []
    original = StreamParser._event

    def counting(self: StreamParser, event: bytes, t: float) -> None:
        decoded.append(event)
        original(self, event, t)

    monkeypatch.setattr(StreamParser, "_event", counting)
    parser = StreamParser()
    parser.feed(first, 1.0)
    for i in range(0, 40, 8):  # reads of 8 chunks each
        parser.feed(b"".join(rest[i : i + 8]), 2.0 + i)
    assert decoded == []  # the spacing is read off the first line, not decoded
    assert len(parser.token_times) == 41
    assert parser.token_counts == ([1] * 41 if continuous else [])


def _completions_chunks(spaced: bool, continuous: bool, tokens: int) -> list[bytes]:
    """Text completion chunks in vLLM's key order (tests/sim/data/vllm_completions_stream.txt)."""
    out = []
    for i in range(1, tokens + 1):
        choice = {"index": 0, "text": f" w{i}", "logprobs": None, "finish_reason": None}
        choice |= {"stop_reason": None, "prompt_token_ids": None, "token_ids": None}
        obj: dict[str, object] = {"id": "cmpl-1", "object": "text_completion", "choices": [choice]}
        if continuous:
            obj["usage"] = {"prompt_tokens": 3, "total_tokens": 3 + i, "completion_tokens": i}
        out.append(b"data: " + (json.dumps(obj).encode() if spaced else orjson.dumps(obj)))
    return [e + b"\n\n" for e in out]


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "usage-at-end"])
def test_completions_chunks_of_every_shape_are_read_without_decoding(
    spaced: bool, continuous: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text completions parser's fast paths take their markers from its shape
    (`choices[0].text`): its content chunks are read without decoding as chat's are."""
    first = _completions_chunks(spaced, continuous, 1)[0]
    rest = _completions_chunks(spaced, continuous, 41)[1:]
    decoded: list[bytes] = []
    original = StreamParser._event

    def counting(self: StreamParser, event: bytes, t: float) -> None:
        decoded.append(event)
        original(self, event, t)

    monkeypatch.setattr(StreamParser, "_event", counting)
    parser = CompletionsParser()
    parser.feed(first, 1.0)
    for i in range(0, 40, 8):  # reads of 8 chunks each
        parser.feed(b"".join(rest[i : i + 8]), 2.0 + i)
    assert decoded == []
    assert len(parser.token_times) == 41
    assert parser.token_counts == ([1] * 41 if continuous else [])
    # the chat parser's markers do not fit these chunks: without usage it reads no text
    chat = StreamParser()
    for i in range(0, 40, 8):
        chat.feed(b"".join(rest[i : i + 8]), 2.0 + i)
    assert len(chat.token_times) == (40 if continuous else 0)


@settings(max_examples=400, deadline=None)
@given(chunk_streams())
def test_fast_path_reads_what_decoding_every_event_reads(
    stream: tuple[list[bytes], list[float]],
) -> None:
    parts, times = stream
    assert_parsed_like_oracle(parts, times)


# ---- a hostile server: JSON of any shape, enormous events ---------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)

# Every place of a chunk the parser reads, as a path of keys (an int: a list index).
FIELDS: list[tuple[object, ...]] = [
    (),
    ("error",),
    ("error", "message"),
    ("error", "code"),
    ("usage",),
    ("usage", "completion_tokens"),
    ("usage", "prompt_tokens"),
    ("usage", "prompt_tokens_details"),
    ("usage", "prompt_tokens_details", "cached_tokens"),
    ("choices",),
    ("choices", 0),
    ("choices", 0, "finish_reason"),
    ("choices", 0, "delta"),
    ("choices", 0, "delta", "content"),
    ("choices", 0, "delta", "reasoning_content"),
]


def template(k: int, error: bool = False) -> Any:
    """A well-formed chunk (or error object) whose fields the fuzz replaces."""
    if error:
        return {"error": {"message": "boom", "code": 500}}
    return {
        "id": "c",
        "choices": [
            {
                "index": 0,
                "delta": {"content": "w", "reasoning_content": None},
                "finish_reason": None,
            }
        ],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": k,
            "total_tokens": 5 + k,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def replaced(obj: Any, path: tuple[object, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        if not isinstance(obj, list) or not obj:
            return obj
        return [replaced(obj[0], rest, value), *obj[1:]]
    if not isinstance(obj, dict):
        return obj
    return {**obj, str(head): replaced(obj.get(str(head)), rest, value)}


@st.composite
def hostile_streams(draw: st.DrawFn) -> list[bytes]:
    """A vLLM-shaped stream in which some chunks have wrong-shaped JSON in some fields."""
    n = draw(st.integers(1, 6))
    events = []
    for k in range(n + 1):
        obj = template(k, error=draw(st.integers(0, 15)) == 0)
        for _ in range(draw(st.integers(0, 2))):
            obj = replaced(obj, draw(st.sampled_from(FIELDS)), draw(json_values))
        events.append(b"data: " + orjson.dumps(obj) + b"\n\n")
    events.append(
        b"data: " + orjson.dumps({"choices": [], "usage": template(n)["usage"]}) + b"\n\n"
    )
    events.append(b"data: [DONE]\n\n")
    data = b"".join(events)
    return split_at(data, draw(st.lists(st.integers(0, 10_000), max_size=6)))


def assert_sane(rec: RequestRecord) -> None:
    """A record whatever the stream said: one outcome, fields of their types, JSON-writable."""
    assert rec.outcome in set(Outcome)
    for count in (rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens):
        assert count is None or (type(count) is int and count >= 0)
    assert rec.finish_reason is None or type(rec.finish_reason) is str
    assert all(type(k) is int and k > 0 for k in rec.chunk_tokens)
    assert all(type(t) is float for t in rec.chunk_times)
    assert rec.error is None or (type(rec.error) is str and len(rec.error) <= 400)
    assert (
        rec.outcome is Outcome.OK or rec.error is not None or rec.outcome is Outcome.MISSING_USAGE
    )
    orjson.dumps(rec.to_json())


@settings(max_examples=600, deadline=None)
@given(hostile_streams())
def test_json_of_any_shape_in_any_field_never_raises(parts: list[bytes]) -> None:
    assert_sane(parse(parts))


@given(json_values, st.sampled_from(FIELDS), st.booleans())
def test_a_wrong_shape_is_malformed_with_its_line(
    value: Any, path: tuple[object, ...], error: bool
) -> None:
    obj = replaced(template(1, error), path, value)
    line = b"data: " + orjson.dumps(obj) + b"\n\n"
    # decoded event by event (the chunk is not read on the fast path: a finish reason follows)
    rec = parse([line, chunk({"content": "x"}, usage(5, 2), finish="stop"), b"data: [DONE]\n\n"])
    assert_sane(rec)


@pytest.mark.parametrize(
    "line",
    [
        b'{"usage": 5, "choices": []}',
        b'{"choices": 3}',
        b'{"choices": "abc"}',
        b'{"choices": {"0": {}}}',
        b'{"choices": [7]}',
        b'{"choices": [{"delta": []}]}',
        b'{"choices": [{"delta": {"content": 5}}]}',
        b'{"choices": [{"delta": {"content": "x"}, "finish_reason": ["stop"]}]}',
        b'{"choices": [{"delta": {}}], "usage": {"completion_tokens": "7"}}',
        b'{"choices": [], "usage": {"completion_tokens": 1, "prompt_tokens": [1]}}',
        b'{"choices": [], "usage": {"completion_tokens": 1, "prompt_tokens_details": 3}}',
        b'{"choices": [], "usage": {"completion_tokens": 1, '
        b'"prompt_tokens_details": {"cached_tokens": -2}}}',
        b'{"choices": [], "usage": {"completion_tokens": -1}}',
        b'{"choices": [], "usage": {"completion_tokens": 1.5}}',
        b'{"choices": [], "usage": {"completion_tokens": true}}',
    ],
)
def test_wrong_shaped_chunks_are_malformed(line: bytes) -> None:
    parts = [continuous_stream()[1], b"data: " + line + b"\n\n", b"data: [DONE]\n\n"]
    rec = parse(parts)
    assert_sane(rec)
    assert rec.outcome is Outcome.MALFORMED
    assert rec.error is not None and repr(line[:20])[2:-1] in rec.error


def test_the_last_fast_chunk_of_a_wrong_shape() -> None:
    """The fast path counts a chunk from its markers; its usage is decoded later, and checked."""
    odd = b'data: {"choices":[{"finish_reason":null}],"usage":5,"x":{"completion_tokens":3}}\n\n'
    rec = parse([continuous_stream()[1] + odd, b"data: [DONE]\n\n"])
    assert_sane(rec)
    assert rec.outcome is Outcome.MALFORMED


def test_huge_numbers_and_deep_nesting_never_raise() -> None:
    digits = b"9" * 5000
    deep = b"[" * 1000 + b"]" * 1000
    lines = [
        b'data: {"choices":[{"finish_reason":null}],"usage":{"completion_tokens":' + digits + b"}}",
        b'data: {"error": ' + deep + b"}",
        b'data: {"error": {"message": ' + deep + b"}}",
        b'data: {"choices": ' + deep + b"}",
    ]
    for line in lines:
        rec = parse([line + b"\n\n", b"data: [DONE]\n\n"])
        assert_sane(rec)
        assert rec.outcome in (Outcome.MALFORMED, Outcome.STREAM_ERROR)


def test_the_offending_line_is_truncated_and_escaped() -> None:
    line = b'data: {"choices": 3, "pad": "' + b"\x1b[31m" + b"x" * 10_000 + b'"}\n\n'
    rec = parse([line, b"data: [DONE]\n\n"])
    assert rec.outcome is Outcome.MALFORMED
    assert rec.error is not None
    assert "\x1b" not in rec.error and "\\x1b" in rec.error
    assert len(rec.error) < 400


def held(parser: StreamParser) -> int:
    """The bytes a parser holds of a partial event."""
    return len(parser._buf) + len(parser._long or b"")


def test_an_enormous_event_is_malformed_and_never_held_whole() -> None:
    read = 64 * 1024
    parser = StreamParser()
    head = continuous_stream()[1]
    parser.feed(head + b'data: {"choices": [{"delta": {"content": "', 1.0)
    piece = b"x" * read
    for _ in range(40 * 1024 * 1024 // read):  # 40 MiB of one event
        parser.feed(piece, 2.0)
        assert held(parser) <= MAX_EVENT_BYTES + read
    parser.feed(b'"}}]}\n\n' + b"".join(continuous_stream()[2:]), 3.0)
    assert held(parser) == 0
    parser.close(4.0)
    rec = record()
    parser.fill(rec)
    assert rec.outcome is Outcome.MALFORMED
    assert rec.error is not None and "over 8 MiB" in rec.error and "choices" in rec.error
    # the chunks after it are read as usual
    assert rec.chunk_tokens == [1, 1, 3, 1] and rec.completion_tokens == 6


@pytest.mark.parametrize("crlf", [False, True])
def test_a_long_event_under_the_cap_is_read_whatever_its_reads(crlf: bool) -> None:
    text = "y" * (3 * _LONG)
    long_chunk = chunk({"content": text}, usage(100, 2))
    data = b"".join([continuous_stream()[1], long_chunk, *continuous_stream()[3:]])
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    for step in (1000, 4096, _LONG - 1, _LONG + 3, 3 * _LONG):
        parts = [data[i : i + step] for i in range(0, len(data), step)]
        assert_parsed_like_oracle(parts, [float(i) for i in range(len(parts))])
        rec = parse(parts)
        assert rec.outcome is Outcome.OK and rec.chunk_tokens == [1, 1, 3, 1]


def record() -> RequestRecord:
    return RequestRecord(index=0, phase="p", shard=0, target="t", intended=0.0, sent=0.0, end=0.0)


def test_parsing_a_long_event_is_linear_in_its_size() -> None:
    """CPU time for an event 4 times longer, read in the same small reads: about 4 times more
    (a parser that re-scans its buffer per read takes about 16 times more)."""

    def cpu(size: int) -> float:
        piece = b"z" * 16 * 1024
        best = float("inf")
        for _ in range(3):
            parser = StreamParser()
            start = time.process_time()
            parser.feed(b'data: {"a": "', 0.0)
            for _ in range(size // len(piece)):
                parser.feed(piece, 0.0)
            parser.feed(b'"}\n\n', 0.0)
            best = min(best, time.process_time() - start)
        return best

    small, large = cpu(2 * 1024 * 1024), cpu(8 * 1024 * 1024)
    assert large < 9 * max(small, 1e-3)


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
def test_a_whole_response_in_one_read_halves_only_where_it_must(
    spaced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A response read at once (role, content, finish, usage, [DONE]) is halved only towards
    the events that need decoding, whatever the server's spacing: the first key of the first
    line sets the markers before the read is scanned."""
    events = _content_chunks(spaced, True, 200)
    finish = {"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": "."}, "finish_reason": "length"}]}  # fmt: skip
    dump = (lambda o: json.dumps(o).encode()) if spaced else orjson.dumps
    tail = [b"data: " + dump(finish) + b"\n\n", b"data: [DONE]\n\n"]
    calls: list[int] = []
    original = StreamParser._read

    def counting(self: StreamParser, buf: bytes, start: int, last: int, t: float) -> None:
        calls.append(last - start)
        original(self, buf, start, last, t)

    monkeypatch.setattr(StreamParser, "_read", counting)
    parser = StreamParser()
    parser.feed(b"".join(events + tail), 1.0)
    assert len(parser.token_times) == 201 and parser.done
    assert len(calls) <= 2 * 9  # one failing half a level (log2 of 202 events), its sibling
