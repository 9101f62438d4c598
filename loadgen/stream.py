"""Server-sent events of a streamed (chat) completion -> the fields of one RequestRecord.

This is the per-chunk hot path. The transport calls `feed(data, t)` once per network read with
the time the bytes arrived (taken before any parsing); everything in that read shares the time.

Token accounting follows the server's usage, never the text:
- With `continuous_usage_stats`, every chunk carries cumulative `usage.completion_tokens`; a chunk
  with choices whose count rose by k carried k tokens (k may exceed 1; its text may be empty when a
  token is a partial UTF-8 character).
- Without it, a chunk with non-empty content counts as one token arrival for timing only
  (`chunk_tokens` stays empty) and the totals come from the final usage chunk.
- No final usage at all: the outcome is MISSING_USAGE and no token count is invented.

Most reads hold only content chunks with continuous usage. Those are counted without decoding
their JSON, from a few byte scans over the whole read: n one-line `data: {...}` events (the only
newlines are the n - 1 boundaries `}\\n\\ndata: {` and the final blank line), n
`"finish_reason":null` (one choice per chunk, none finished), n cumulative
`"completion_tokens":N` (digits; one precompiled regex takes them all) and no `"error"`. None of
these markers can occur inside a JSON string, where quotes are escaped and a newline is `\\n`,
and any key order passes. A read that fails is halved until its parts pass or hold a few events;
those go event by event through `orjson` (role chunk without usage, finish chunk, usage chunk,
`[DONE]`, errors, comments, a count written as a float...). The last event read on the fast path
is kept as raw bytes and its usage decoded once, when the record is filled. The fast path checks
the markers, not the JSON around them: a malformed chunk that still carries them is counted
rather than reported as malformed.

A server can send anything, and nothing it sends raises out of the parser: JSON of the wrong
shape in any field read here (a number where an object belongs, a count that is not a
non-negative integer, a finish reason that is not a string...) makes the outcome
MALFORMED, with the first offending line (truncated, control characters escaped) as the
record's error, and the parser goes on. One event may be at most `MAX_EVENT_BYTES` (8 MiB):
a longer one is MALFORMED and its bytes are dropped up to its end, so memory stays bounded
and the work per byte stays constant (a partial event over `_LONG` bytes is collected in one
growing buffer that is scanned only where the bytes are new).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import orjson

from loadgen.records import Outcome, RequestRecord

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_MAX_ERROR_CHARS = 300
_LINE_CHARS = 240  # of an offending line quoted in an error
MAX_EVENT_BYTES = 8 * 1024 * 1024  # one SSE event; a longer one is MALFORMED (and dropped)
_LONG = 64 * 1024  # a partial event over this is collected without re-copying it per read
_MAX_COUNT = 10**9  # a token count above this is not one
# A chunk's cumulative usage count: digits, then the end of the number. Longer numbers take
# the decoding path, where they are checked.
_findall = re.compile(rb'"completion_tokens":(\d{1,9})[,}]').findall
_findall_spaced = re.compile(rb'"completion_tokens": (\d{1,9})[,}]').findall
_SPLIT_EVENTS = 4  # a read of fewer events that fails the fast path goes event by event
_BETWEEN = b"}\n\ndata: {"  # one chunk's end and the next one's start


@dataclass(frozen=True, slots=True)
class Markers:
    """What the fast paths count in a read, as one server writes its JSON."""

    counts: Callable[[bytes, int, int], list[bytes]]  # cumulative completion_tokens values
    unfinished: bytes  # a choice whose finish_reason is null
    usage_object: bytes  # a usage object (not `"usage":null`)
    spoken: Callable[[bytes, int, int], list[bytes]]  # a chunk's non-empty text


@dataclass(frozen=True, slots=True)
class ChunkShape:
    """Where a chunk's first choice holds its text: the only part of a chunk that differs
    between OpenAI's streamed APIs (finish reason, usage and errors are alike)."""

    holder: str | None  # the choice's key of the object holding the text; None: the choice
    texts: tuple[str, ...]  # its text fields; any non-empty one is a token's arrival

    def markers(self, spaced: bool) -> Markers:
        """The byte markers of the fast paths for this shape, written compact or spaced."""
        sep = b": " if spaced else b":"
        text = b'"' + self.texts[0].encode() + b'"' + sep + b'"'
        return Markers(
            counts=_findall_spaced if spaced else _findall,
            unfinished=b'"finish_reason"' + sep + b"null",
            usage_object=b'"usage"' + sep + b"{",
            # a non-empty first text field: its opening quote, then anything but the closing one
            spoken=re.compile(re.escape(text) + rb'[^"]').findall,
        )

    def text_of(self, choice: dict[str, Any]) -> tuple[str | None, bool]:
        """(what is wrong with the choice's text fields or None, whether one is non-empty)."""
        holder: object = choice
        if self.holder is not None:
            holder = choice.get(self.holder)
            if holder is None:
                return None, False
            if type(holder) is not dict:
                return f"a choice's {self.holder} is not an object", False
        assert type(holder) is dict
        spoke = False
        for key in self.texts:
            text = holder.get(key)
            if text is not None:
                if type(text) is not str:
                    return f"a {self.holder or 'choice'}'s {self.texts[0]} is not a string", False
                spoke = spoke or bool(text)
        return None, spoke


# Chat completions: `choices[0].delta.content` (and a reasoning model's `reasoning_content`).
CHAT_SHAPE: Final = ChunkShape(holder="delta", texts=("content", "reasoning_content"))


_MARKERS: dict[tuple[ChunkShape, bool], Markers] = {}


def _markers(shape: ChunkShape, spaced: bool) -> Markers:
    marks = _MARKERS.get((shape, spaced))
    if marks is None:
        marks = _MARKERS[shape, spaced] = shape.markers(spaced)
    return marks


class StreamParser:
    """Incremental SSE parser for one response. Not thread-safe; one per request.

    It reads chat completion chunks; another API's parser is a subclass with its own `_SHAPE`
    (`loadgen.endpoints`)."""

    _SHAPE: ClassVar[ChunkShape] = CHAT_SHAPE

    __slots__ = (
        "_buf",
        "_continuous",
        "_long",
        "_marks",
        "_origin",
        "_prev_tokens",
        "_skip",
        "_spacing_known",
        "_usage",
        "_usage_event",
        "done",
        "error",
        "finish_reason",
        "malformed",
        "token_counts",
        "token_times",
    )

    def __init__(self, origin: float = 0.0, rec: RequestRecord | None = None) -> None:
        self._origin = origin  # times are kept on the run clock: arrival - origin
        self._buf = b""
        # A partial event over _LONG bytes, appended to in place (None: it is in `_buf`), and
        # whether it is an event over MAX_EVENT_BYTES being skipped up to its end.
        self._long: bytearray | None = None
        self._skip = False
        self._prev_tokens = 0
        self._continuous = False
        # The fast paths' markers, as the server writes its JSON: compact (vLLM) until the
        # first decoded chunk shows `": ` after its first key (Python's json, other servers).
        self._marks = _markers(self._SHAPE, False)
        self._spacing_known = False
        self.done = False  # saw `data: [DONE]`
        self._usage: dict[str, Any] | None = None  # the latest usage object decoded
        self._usage_event: bytes | None = None  # the latest event with usage, when read fast
        self.error: str | None = None  # an error object inside the 200 stream
        self.malformed: str | None = None  # the first undecodable event
        self.finish_reason: str | None = None
        # Arrival of each token-bearing chunk (run clock), and the tokens in each (continuous
        # usage only). Given the request's record, these are its own (empty) lists, so what has
        # streamed so far is visible on the record while it is in flight (live progress).
        self.token_times: list[float] = rec.chunk_times if rec is not None else []
        self.token_counts: list[int] = rec.chunk_tokens if rec is not None else []

    @property
    def usage(self) -> dict[str, Any] | None:
        """The latest usage object seen (one read on the fast path is decoded here, once)."""
        event = self._usage_event
        if event is not None:
            self._usage_event = None
            payload = event[6:] if event.startswith(b"data: ") else _data_of(event)
            if b"\n" in payload:
                payload = _data_of(event)
            try:
                obj = _loads(payload)
            except _JSONDecodeError:
                self._bad("undecodable data line", payload)
                return self._usage
            usage = obj.get("usage") if type(obj) is dict else None
            if usage:
                problem = _usage_problem(usage)
                if problem is None:
                    self._usage = usage
                else:
                    self._bad(problem, payload)
        return self._usage

    def _bad(self, what: str, payload: bytes) -> None:
        """The first event that is not what a chunk must be: the outcome is MALFORMED."""
        if self.malformed is None:
            self.malformed = f"{what}: {_line(payload)}"

    def feed(self, data: bytes, t: float) -> None:
        """Bytes of one network read, and when they arrived (perf_counter)."""
        t -= self._origin
        if self._long is not None:  # a long event: only the new bytes are scanned
            rest = self._more(data)
            if rest is None:
                return
            data = rest
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:  # SSE allows CRLF; vLLM sends LF. Normalise only when needed.
            buf = buf.replace(b"\r\n", b"\n")
        last = buf.rfind(b"\n\n")
        if last < 0:
            if len(buf) > _LONG:
                self._buf, self._long = b"", bytearray(buf)
            else:
                self._buf = buf
            return
        self._buf = buf[last + 2 :]  # at most one read: the next read's concatenation is bounded
        if not self._spacing_known:
            self._learn_spacing(buf, last)
        self._read(buf, 0, last, t)

    def _learn_spacing(self, buf: bytes, last: int) -> None:
        """How the server writes its JSON, from the first key of its first data line: with
        markers that cannot match, a whole response read at once would fail the fast paths at
        every level of halving on its way to the first event."""
        i = buf.find(b'data: {"', 0, last)
        if i < 0:
            return
        k = buf.find(b'":', i + 8, min(last, i + 200))
        if k < 0:
            return
        self._spacing_known = True
        if buf[k + 2 : k + 3] == b" ":
            self._marks = _markers(self._SHAPE, True)

    def _more(self, data: bytes) -> bytes | None:
        """A read while a long event is pending: the bytes to parse from its end on (the whole
        event, once its blank line arrived), or None while it goes on."""
        long = self._long
        assert long is not None
        old = len(long)
        long += data
        end = _event_end(long, max(0, old - 2))  # a blank line may straddle the two reads
        if end >= 0:
            self._long = None
            if self._skip:
                self._skip = False
                return bytes(long[end:])
            return bytes(long)
        if self._skip:
            del long[:-2]  # only what a blank line straddling the next read needs
        elif len(long) > MAX_EVENT_BYTES:
            mib = MAX_EVENT_BYTES // (1024 * 1024)
            self._bad(f"an SSE event over {mib} MiB without its blank line", bytes(long[:256]))
            self._skip = True
            del long[:-2]
        return None

    def _read(self, buf: bytes, start: int, last: int, t: float) -> None:
        """The events of buf[start : last + 2], in order; the last one ends at `last`."""
        end = last + 2
        # Both fast paths need the read to open with a chunk and end with one (`}`): checked
        # first, as it costs nothing, while each scan below costs about a microsecond per KB. A
        # whole response read at once ends with `data: [DONE]`, so every halving on the way to
        # its last events would otherwise scan its part twice over.
        if buf.startswith(b"data: {", start) and buf[last - 1] == 0x7D:  # "}"
            marks = self._marks
            found = marks.counts(buf, start, end)
            n = len(found)
            newlines = buf.count(b"\n", start, end)
            # n one-line events, each a `data: {...}` line: the only newlines are the n - 1
            # event boundaries `}\n\ndata: {` and the final blank line.
            if (
                n
                and newlines == 2 * n
                and buf.count(_BETWEEN, start, last) == n - 1
                and buf.count(marks.unfinished, start, end) == n
                and buf.find(b'"error"', start, end) < 0
            ):
                self._fast(buf, start, last, found, t)
                return
            if not n and not self._continuous and self._fast_unmetered(buf, start, last, newlines):
                # Content chunks without usage (no continuous usage stats): one arrival each.
                self.token_times.extend([t] * (newlines // 2))
                return
            many = newlines >= 2 * _SPLIT_EVENTS
        else:
            many = _newlines_at_least(buf, start, end, 2 * _SPLIT_EVENTS)
        if many and (mid := _boundary(buf, start, last)) > 0:
            # Most events of a read that fails are fine (the finish, usage and [DONE] events
            # come last): halve it, so they still take the fast path.
            self._read(buf, start, mid, t)
            self._read(buf, mid + 2, last, t)
        else:
            find = buf.find
            while start <= last:
                stop = find(b"\n\n", start)
                self._event(buf[start:stop], t)
                start = stop + 2

    def _fast_unmetered(self, buf: bytes, start: int, last: int, newlines: int) -> bool:
        """Whether buf[start : last + 2] is k one-line content chunks without usage, none
        finished, each with non-empty text: then each is one token's arrival, as on the
        decoding path."""
        k = newlines // 2
        end = last + 2
        marks = self._marks
        return (
            newlines == 2 * k
            and buf.count(_BETWEEN, start, last) == k - 1
            and buf.startswith(b"data: {", start)
            and buf[last - 1] == 0x7D  # "}"
            and buf.count(marks.unfinished, start, end) == k
            and len(marks.spoken(buf, start, end)) == k
            and buf.find(marks.usage_object, start, end) < 0
            and buf.find(b'"error"', start, end) < 0
        )

    def _fast(self, buf: bytes, start: int, last: int, found: list[bytes], t: float) -> None:
        """Content chunks with continuous usage; `found` holds their cumulative counts."""
        self._continuous = True
        prev = self._prev_tokens
        n = len(found)
        if n == 1:
            count = int(found[0])
            if count > prev:
                self.token_times.append(t)
                self.token_counts.append(count - prev)
                self._prev_tokens = count
            self._usage_event = buf[start:last]
            return
        counts = list(map(int, found))
        if counts == list(range(prev + 1, prev + n + 1)):  # one token per chunk
            self.token_times.extend([t] * n)
            self.token_counts.extend([1] * n)
            prev += n
        else:
            times, tokens = self.token_times, self.token_counts
            for count in counts:
                if count > prev:
                    times.append(t)
                    tokens.append(count - prev)
                    prev = count
        self._prev_tokens = prev
        self._usage_event = buf[buf.rfind(b"\n\n", start, last) + 2 : last]

    def _event(self, event: bytes, t: float) -> None:
        if event.startswith(b"data: "):
            payload = event[6:]
            if b"\n" in payload:  # a multi-line event: reassemble per the SSE rules
                payload = _data_of(event)
        else:
            payload = _data_of(event)
            if not payload:  # a comment (": ping") or an event with no data
                return
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            obj = _loads(payload)
        except _JSONDecodeError:
            self._bad("undecodable data line", payload)
            return
        if type(obj) is not dict:
            self._bad("data line is not a JSON object", payload)
            return
        err = obj.get("error")
        if err is not None:
            if self.error is None:
                self.error = _error_text(err)
            return
        if not self._spacing_known:
            self._spacing_known = True
            key_end = payload.find(b'":', 2)
            if payload[key_end + 2 : key_end + 3] == b" ":
                self._marks = _markers(self._SHAPE, True)
        self._chunk(obj, payload, t)

    def _chunk(self, obj: dict[str, Any], payload: bytes, t: float) -> None:
        """One decoded chunk. Every field is checked before any is used: a chunk of the wrong
        shape counts nothing."""
        usage = obj.get("usage")
        count = None
        if usage is not None:
            if type(usage) is not dict:
                self._bad("usage is not an object", payload)
                return
            if usage:
                problem = _usage_problem(usage)
                if problem is not None:
                    self._bad(problem, payload)
                    return
                count = usage.get("completion_tokens")
        choices = obj.get("choices")
        if choices is not None and type(choices) is not list:
            self._bad("choices is not a list", payload)
            return
        choice = reason = None
        spoke = False
        if choices:
            choice = choices[0]
            if type(choice) is not dict:
                self._bad("a choice is not an object", payload)
                return
            reason = choice.get("finish_reason")
            problem, spoke = self._SHAPE.text_of(choice)
            if problem is not None:
                self._bad(problem, payload)
                return
            if reason is not None and type(reason) is not str:
                self._bad("a choice's finish_reason is not a string", payload)
                return
        if usage:
            self._usage = usage
            self._usage_event = None
        if choice is None:
            return  # the usage-only chunk: no token arrives with it
        if reason:
            self.finish_reason = reason
        if count is not None:
            self._continuous = True
            new = int(count) - self._prev_tokens
            if new > 0:
                self._prev_tokens += new
                self.token_times.append(t)
                self.token_counts.append(new)
            return
        if spoke:
            self.token_times.append(t)

    def close(self, t: float) -> None:
        """The stream ended (EOF) at `t`. A trailing event without its blank line still counts."""
        buf = self._buf
        if self._long is not None:
            buf = b"" if self._skip else bytes(self._long)
            self._long, self._skip = None, False
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        if buf.strip():
            self._event(buf.strip(b"\n"), t - self._origin)
        self._buf = b""

    def fill(self, rec: RequestRecord) -> None:
        """Copy what the stream said into `rec` (times on the run clock)."""
        times = self.token_times
        rec.chunk_times = times
        rec.chunk_tokens = self.token_counts if self._continuous else []
        rec.first_token = times[0] if times else None
        rec.finish_reason = self.finish_reason
        usage = self.usage
        if usage:  # checked by _usage_problem when it was kept
            rec.prompt_tokens = _as_count(usage.get("prompt_tokens"))
            rec.completion_tokens = _as_count(usage.get("completion_tokens"))
            details = usage.get("prompt_tokens_details")
            if details:
                rec.cached_tokens = _as_count(details.get("cached_tokens"))
        if self.error is not None:
            rec.outcome, rec.error = Outcome.STREAM_ERROR, self.error
        elif self.malformed is not None:
            rec.outcome, rec.error = Outcome.MALFORMED, self.malformed
        elif not self.done:
            rec.outcome, rec.error = Outcome.DROPPED, "stream ended before data: [DONE]"
        elif usage is None or usage.get("completion_tokens") is None:
            rec.outcome = Outcome.MISSING_USAGE
            rec.error = "no usage in the stream (stream_options.include_usage ignored?)"
        else:
            rec.outcome = Outcome.OK


def _newlines_at_least(buf: bytes, start: int, end: int, k: int) -> bool:
    """Whether buf[start:end] holds k newlines or more: k finds (memchr), where counting them
    all would step through every byte."""
    find = buf.find
    for _ in range(k):
        start = find(b"\n", start, end) + 1
        if not start:
            return False
    return True


def _boundary(buf: bytes, start: int, last: int) -> int:
    """An event end (a blank line) near the middle of buf[start:last], that reading event by
    event from `start` also finds: one not preceded by another newline. 0 if there is none."""
    pos = buf.find(b"\n\n", (start + last) // 2, last)
    while pos > start and buf[pos - 1] == 0x0A:
        pos = buf.find(b"\n\n", pos + 1, last)
    if pos > start:
        return pos
    pos = buf.rfind(b"\n\n", start, (start + last) // 2 + 1)
    while pos > start and buf[pos - 1] == 0x0A:
        pos = buf.rfind(b"\n\n", start, pos)
    return pos if pos > start else 0


def _event_end(buf: bytearray, start: int) -> int:
    """Where the first event of buf[start:] ends, past its blank line (LF or CRLF), or -1."""
    lf = buf.find(b"\n\n", start)
    crlf = buf.find(b"\n\r\n", start, lf + 2 if lf >= 0 else len(buf))
    if crlf >= 0:
        return crlf + 3
    return lf + 2 if lf >= 0 else -1


def _is_count(value: object) -> bool:
    """A token count: a non-negative integer (written as a float too, e.g. 5.0)."""
    if type(value) is int:
        return 0 <= value <= _MAX_COUNT
    return type(value) is float and value.is_integer() and 0 <= value <= _MAX_COUNT


def _as_count(value: object) -> int | None:
    return int(value) if _is_count(value) else None  # type: ignore[call-overload]


def _usage_problem(usage: object) -> str | None:
    """What is wrong with a usage object, or None: the fields read from it are counts or null."""
    if type(usage) is not dict:
        return "usage is not an object"
    for key in ("completion_tokens", "prompt_tokens"):
        value = usage.get(key)
        if value is not None and not _is_count(value):
            return f"usage.{key} is not a token count"
    details = usage.get("prompt_tokens_details")
    if details is not None:
        if type(details) is not dict:
            return "usage.prompt_tokens_details is not an object"
        cached = details.get("cached_tokens")
        if cached is not None and not _is_count(cached):
            return "usage.prompt_tokens_details.cached_tokens is not a token count"
    return None


def _line(payload: bytes) -> str:
    """An offending line for an error text: its start, control characters escaped."""
    text = repr(payload[:_LINE_CHARS])
    if len(text) > _LINE_CHARS or len(payload) > _LINE_CHARS:
        text = text[:_LINE_CHARS] + "..."
    return text


def _data_of(event: bytes) -> bytes:
    """The data of a multi-line SSE event: its `data:` lines joined by newlines."""
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts)


def _error_text(err: Any) -> str:
    try:
        if isinstance(err, dict):
            message = err.get("message") or err
            code = err.get("code")
            text = f"{message} (code {code})" if code is not None else str(message)
        else:
            text = str(err)
    except RecursionError:  # nested too deeply for str(): the server's text is no use anyway
        text = "an error object nested too deeply to print"
    return text[:_MAX_ERROR_CHARS]


def http_error_text(status: int, body: bytes) -> str:
    """A short message for an HTTP error response, from vLLM's error body when it is one."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:_MAX_ERROR_CHARS].decode("utf-8", "replace").strip()
        return f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if isinstance(obj, dict):
        if "error" in obj:
            return f"HTTP {status}: {_error_text(obj['error'])}"
        if "message" in obj:  # older vLLM: a flat ErrorResponse
            return f"HTTP {status}: {str(obj['message'])[:_MAX_ERROR_CHARS]}"
    return f"HTTP {status}: {_error_text(obj)}"


def outcome_for_status(status: int) -> Outcome:
    if status == 429:
        return Outcome.HTTP_429
    if 400 <= status < 500:
        return Outcome.HTTP_4XX
    if status >= 500:
        return Outcome.HTTP_5XX
    return Outcome.OTHER
