"""Closed-loop backoff: a stream whose requests fail fast waits before sending its next one.

A closed loop sends a stream's next request as soon as the previous one ended. When requests fail
at once (a refused port, a server answering 429 or 503 to everything) that turns into a flood:
tens of thousands of requests a second, all of them measuring nothing. So after a connect error,
a 429 or a 503 the stream waits before its next request: an exponential delay per consecutive
failure (`BASE_S` doubling up to `CAP_S`, "equal jitter": between half and all of it, drawn from
the stream's seeded RNG), and at least the server's `Retry-After` (up to `RETRY_AFTER_CAP_S`).
Any other outcome resets the stream's count. The wait is schedule lag: the next request's
intended time is when the stream became free, its send time after the wait.

The open loop does not back off: it follows its schedule whatever the server answers.

Pure: no I/O, the RNG and the wall clock are arguments.
"""

from __future__ import annotations

import math
import random
from email.utils import parsedate_to_datetime

from loadgen.records import Outcome, RequestRecord

BASE_S = 0.1  # the first failure's delay (before jitter)
CAP_S = 5.0  # the longest exponential delay
RETRY_AFTER_CAP_S = 30.0  # a server's Retry-After is honoured up to this
BACKOFF_STATUSES = (429, 503)


def shortest_delay(failures: int) -> float:
    """The least a stream waits after `failures` (>= 1) consecutive failures, without a
    Retry-After: half of the exponential delay (the jitter draws between half and all)."""
    return _exponential(failures) / 2


def _exponential(failures: int) -> float:
    return min(CAP_S, BASE_S * 2.0 ** min(failures - 1, 64))


def backs_off(rec: RequestRecord) -> bool:
    """The outcomes after which a closed-loop stream waits before its next request."""
    return rec.outcome is Outcome.CONNECT or rec.status in BACKOFF_STATUSES


class Backoff:
    """One closed-loop stream's backoff state: its consecutive failures and its RNG."""

    __slots__ = ("_rng", "failures")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.failures = 0

    def after(self, rec: RequestRecord) -> float:
        """Seconds to wait before the stream's next request, now that `rec` ended (0: none)."""
        if not backs_off(rec):
            self.failures = 0
            return 0.0
        self.failures += 1
        delay = _exponential(self.failures) * (0.5 + 0.5 * self._rng.random())
        if rec.retry_after is not None:
            delay = max(delay, min(rec.retry_after, RETRY_AFTER_CAP_S))
        return delay


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header in seconds from `now` (epoch seconds), None when absent or
    unreadable. RFC 9110: delay-seconds (a non-negative integer) or an HTTP-date."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit() and text.isascii():
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
