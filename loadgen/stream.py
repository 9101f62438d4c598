"""Server-sent events of a streamed chat completion -> the fields of one RequestRecord.

This is the per-chunk hot path. The transport calls `feed(data, t)` once per network read with
the time the bytes arrived (taken before any parsing); everything in that read shares the time.

Token accounting follows the server's usage, never the text:
- With `continuous_usage_stats`, every chunk carries cumulative `usage.completion_tokens`; a chunk
  with choices whose count rose by k carried k tokens (k may exceed 1; its text may be empty when a
  token is a partial UTF-8 character).
- Without it, a chunk with non-empty content counts as one token arrival for timing only
  (`chunk_tokens` stays empty) and the totals come from the final usage chunk.
- No final usage at all: the outcome is MISSING_USAGE and no token count is invented.
"""

from __future__ import annotations

from typing import Any

import orjson

from loadgen.records import Outcome, RequestRecord

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_MAX_ERROR_CHARS = 300


class StreamParser:
    """Incremental SSE parser for one response. Not thread-safe; one per request."""

    __slots__ = (
        "_buf",
        "_continuous",
        "_prev_tokens",
        "done",
        "error",
        "finish_reason",
        "malformed",
        "token_counts",
        "token_times",
        "usage",
    )

    def __init__(self) -> None:
        self._buf = b""
        self._prev_tokens = 0
        self._continuous = False
        self.done = False  # saw `data: [DONE]`
        self.usage: dict[str, Any] | None = None  # the latest usage object seen
        self.error: str | None = None  # an error object inside the 200 stream
        self.malformed: str | None = None  # the first undecodable event
        self.finish_reason: str | None = None
        self.token_times: list[float] = []  # arrival of each token-bearing chunk
        self.token_counts: list[int] = []  # tokens in each (continuous usage only)

    def feed(self, data: bytes, t: float) -> None:
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:  # SSE allows CRLF; vLLM sends LF. Normalise only when needed.
            buf = buf.replace(b"\r\n", b"\n")
        start = 0
        find = buf.find
        while True:
            end = find(b"\n\n", start)
            if end < 0:
                break
            self._event(buf[start:end], t)
            start = end + 2
        self._buf = buf[start:] if start else buf

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
            if self.malformed is None:
                self.malformed = f"undecodable data line: {payload[:80]!r}"
            return
        if type(obj) is not dict:
            if self.malformed is None:
                self.malformed = f"data line is not a JSON object: {payload[:80]!r}"
            return
        err = obj.get("error")
        if err is not None:
            if self.error is None:
                self.error = _error_text(err)
            return
        usage = obj.get("usage")
        if usage:
            self.usage = usage
        choices = obj.get("choices")
        if not choices:
            return  # the usage-only chunk: no token arrives with it
        choice = choices[0]
        reason = choice.get("finish_reason")
        if reason:
            self.finish_reason = reason
        if usage:
            count = usage.get("completion_tokens")
            if count is not None:
                self._continuous = True
                new = count - self._prev_tokens
                if new > 0:
                    self._prev_tokens = count
                    self.token_times.append(t)
                    self.token_counts.append(new)
                return
        delta = choice.get("delta")
        if delta and (delta.get("content") or delta.get("reasoning_content")):
            self.token_times.append(t)

    def close(self, t: float) -> None:
        """The stream ended (EOF). A trailing event without its blank line still counts."""
        if self._buf.strip():
            self._event(self._buf.strip(b"\n"), t)
        self._buf = b""

    def fill(self, rec: RequestRecord, origin: float) -> None:
        """Copy what the stream said into `rec`, times shifted onto the run clock."""
        times = self.token_times
        rec.chunk_times = [x - origin for x in times]
        rec.chunk_tokens = self.token_counts if self._continuous else []
        rec.first_token = rec.chunk_times[0] if times else None
        rec.finish_reason = self.finish_reason
        usage = self.usage
        if usage:
            rec.prompt_tokens = usage.get("prompt_tokens")
            rec.completion_tokens = usage.get("completion_tokens")
            details = usage.get("prompt_tokens_details")
            if details:
                rec.cached_tokens = details.get("cached_tokens")
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


def _data_of(event: bytes) -> bytes:
    """The data of a multi-line SSE event: its `data:` lines joined by newlines."""
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts)


def _error_text(err: Any) -> str:
    if isinstance(err, dict):
        message = err.get("message") or err
        code = err.get("code")
        text = f"{message} (code {code})" if code is not None else str(message)
    else:
        text = str(err)
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
    return f"HTTP {status}: {str(obj)[:_MAX_ERROR_CHARS]}"


def outcome_for_status(status: int) -> Outcome:
    if status == 429:
        return Outcome.HTTP_429
    if 400 <= status < 500:
        return Outcome.HTTP_4XX
    if status >= 500:
        return Outcome.HTTP_5XX
    return Outcome.OTHER
