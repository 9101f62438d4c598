"""The unit of measurement: one streamed request, as the client saw it.

Every time is in seconds on the run's clock: 0.0 is the run's common start instant, shared by all
shards (worker processes or machines), so records from different shards merge without shifting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """What happened to one request. Exactly one per request; summaries count each kind."""

    OK = "ok"
    MISSING_USAGE = "missing_usage"  # the stream completed but carried no usage: tokens unknown
    HTTP_429 = "http_429"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    CONNECT = "connect_error"  # refused, unreachable, DNS
    TLS = "tls_error"
    TIMEOUT = "timeout"  # connect, read or pool timeout
    DROPPED = "dropped_stream"  # the connection ended before `data: [DONE]`
    MALFORMED = "malformed_stream"  # a data line that is not JSON, or not a chunk
    STREAM_ERROR = "stream_error"  # an `{"error": ...}` object inside a 200 stream
    CANCELLED = "cancelled"  # cancelled by the user (second Ctrl-C) or the run's deadline
    OTHER = "other_error"
    # A deliberately bad request (`[workload] invalid_share`, loadgen.workload.invalid): the
    # server refused it with a 4xx (other than 429), as it should; answered it as a good one; or
    # failed otherwise (5xx, 429, timeout, dropped, cancelled).
    INVALID_REJECTED = "invalid_rejected"
    INVALID_ACCEPTED = "invalid_accepted"
    INVALID_FAILED = "invalid_failed"

    @property
    def is_success(self) -> bool:
        return self in (Outcome.OK, Outcome.MISSING_USAGE)

    @property
    def is_invalid(self) -> bool:
        """The outcome of a deliberately bad request."""
        return self in INVALID_OUTCOMES

    def as_invalid(self) -> Outcome:
        """What this outcome of a deliberately bad request counts as (the same if it already is
        one of INVALID_OUTCOMES)."""
        if self.is_invalid:
            return self
        if self.is_success:
            return Outcome.INVALID_ACCEPTED
        if self is Outcome.HTTP_4XX:
            return Outcome.INVALID_REJECTED
        return Outcome.INVALID_FAILED


INVALID_OUTCOMES = frozenset(
    {Outcome.INVALID_REJECTED, Outcome.INVALID_ACCEPTED, Outcome.INVALID_FAILED}
)


@dataclass(slots=True)
class RequestRecord:
    """One request's measurements. Written to requests.jsonl as soon as the request ends."""

    index: int  # position in the run's schedule (unique within a run, across shards)
    phase: str  # scenario phase name ("warmup" records are never part of the results)
    shard: int  # which shard (worker) sent it
    target: str  # base URL it was sent to
    intended: float  # when the schedule wanted it sent (closed loop: when a slot freed up)
    sent: float  # when the request actually started (just before the HTTP call)
    end: float  # when the stream ended (last byte, error or cancel)
    outcome: Outcome = Outcome.OK
    status: int | None = None  # HTTP status, None if no response arrived
    error: str | None = None  # short message for non-OK outcomes
    headers_at: float | None = None  # when the response headers arrived
    first_token: float | None = None  # arrival of the first chunk with non-empty content
    # Arrival time of every chunk that carried generated tokens (content or not), in order,
    # and how many tokens each carried (from continuous usage deltas; 1 each when unknown).
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int | None = None  # from the server's usage
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, when sent
    completion_tokens: int | None = None  # from the server's usage
    finish_reason: str | None = None
    images: list[str] = field(default_factory=list)  # workload image ids used by this request
    body: int | None = None  # body number in its image stream: equal numbers, identical bodies
    # A 429 or 503 answer's Retry-After, in seconds (closed-loop streams wait at least this long
    # before their next request: loadgen.backoff).
    retry_after: float | None = None
    # False: the response was read whole (`"stream": false`), one arrival at its end: no chunks,
    # `first_token` = `end` (TTFT = E2E) and no time per output token.
    streamed: bool = True
    # The way a deliberately bad request was broken (loadgen.workload.invalid); "" for the rest.
    invalid: str = ""

    # ---- derived figures (no I/O, used by metrics and reports) ----
    @property
    def ttft(self) -> float | None:
        """Time to first token from the actual send."""
        return None if self.first_token is None else self.first_token - self.sent

    @property
    def ttft_intended(self) -> float | None:
        """Time to first token from the intended send (corrected for coordinated omission)."""
        return None if self.first_token is None else self.first_token - self.intended

    @property
    def e2e(self) -> float:
        return self.end - self.sent

    @property
    def e2e_intended(self) -> float:
        return self.end - self.intended

    @property
    def schedule_lag(self) -> float:
        return self.sent - self.intended

    @property
    def tpot(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1): the per-request mean time per output token (None
        for a response read whole: its tokens arrived together)."""
        if (
            self.first_token is None
            or not self.completion_tokens
            or self.completion_tokens < 2
            or not self.streamed
        ):
            return None
        last = self.chunk_times[-1] if self.chunk_times else self.end
        return (last - self.first_token) / (self.completion_tokens - 1)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "index": self.index,
            "phase": self.phase,
            "shard": self.shard,
            "target": self.target,
            "intended": self.intended,
            "sent": self.sent,
            "headers_at": self.headers_at,
            "first_token": self.first_token,
            "end": self.end,
            "outcome": str(self.outcome),
            "status": self.status,
            "error": self.error,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "images": self.images,
            "body": self.body,
            "retry_after": self.retry_after,
            "chunk_times": self.chunk_times,
            "chunk_tokens": self.chunk_tokens,
        }
        if not self.streamed:  # written only when false: a streamed run's lines are unchanged
            doc["streamed"] = False
        if self.invalid:  # likewise only for a deliberately bad request
            doc["invalid"] = self.invalid
        return doc

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RequestRecord:
        return cls(
            index=d["index"],
            phase=d["phase"],
            shard=d["shard"],
            target=d["target"],
            intended=d["intended"],
            sent=d["sent"],
            end=d["end"],
            outcome=Outcome(d["outcome"]),
            status=d.get("status"),
            error=d.get("error"),
            headers_at=d.get("headers_at"),
            first_token=d.get("first_token"),
            chunk_times=list(d.get("chunk_times") or []),
            chunk_tokens=list(d.get("chunk_tokens") or []),
            prompt_tokens=d.get("prompt_tokens"),
            cached_tokens=d.get("cached_tokens"),
            completion_tokens=d.get("completion_tokens"),
            finish_reason=d.get("finish_reason"),
            images=list(d.get("images") or []),
            body=d.get("body"),
            retry_after=d.get("retry_after"),
            streamed=d.get("streamed", True) is not False,
            invalid=str(d.get("invalid") or ""),
        )
