"""Throughput over time in fixed windows, counted the way vLLM's periodic stats log line counts it,
and concurrency (requests in flight) from each request's [sent, end) interval.

Everything here is pure and mergeable: shards bin their own records with the same window and origin,
and adding the bins (integers) gives exactly the bins of one process that saw every record.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from loadgen.records import Outcome, RequestRecord

_FOLD = 1 << 16  # pending interval ends folded into the sorted event arrays at once


def window_index(t: float, origin: float, window: float) -> int:
    """The window holding time t: window i is [origin + i*window, origin + (i+1)*window).

    Membership is decided by comparing t with those boundary values, so bisecting a sorted list
    of times on the boundaries agrees with this function to the last bit.
    """
    i = math.floor((t - origin) / window)
    if t < origin + i * window:
        i -= 1
    elif t >= origin + (i + 1) * window:
        i += 1
    return i


def to_us(seconds: float) -> int:
    """Seconds to whole microseconds, rounded half up: the one conversion of run-clock instants
    (windows, in-flight steps; a negative instant keeps its sign, hence floor and not int) and of
    durations (histograms, whose `add_us` counts a negative duration as 0)."""
    return math.floor(seconds * 1e6 + 0.5)


def generation_tokens_per_chunk(rec: RequestRecord) -> list[int] | None:
    """How many of the server-reported `completion_tokens` each chunk in `chunk_times` carried.

    The result always sums to `completion_tokens`, so windowed totals equal usage totals:
    - `chunk_tokens` as recorded when it has one entry per chunk and sums to the usage figure;
    - otherwise the usage figure is shared out over the chunks in proportion to `chunk_tokens`
      (or equally, when per-chunk counts are missing), rounding on the running total;
    - None when there are no chunk times at all (the caller counts the tokens at `end`).
    """
    total = rec.completion_tokens or 0
    n = len(rec.chunk_times)
    if not n:
        return None
    weights = rec.chunk_tokens
    if len(weights) != n or min(weights) < 0 or sum(weights) <= 0:
        weights = [1] * n
    weight_sum = sum(weights)
    if weight_sum == total:
        return list(weights)
    out: list[int] = []
    done = 0
    cumulative = 0
    for w in weights:
        cumulative += w
        upto = total * cumulative // weight_sum
        out.append(upto - done)
        done = upto
    return out


def first_token_time(rec: RequestRecord) -> float:
    """When vLLM counts the request's prompt tokens: the arrival of its first generated token.

    The earlier of `first_token` (first chunk with content) and the first token-bearing chunk; a
    request with neither falls back to `end`.
    """
    candidates = [t for t in (rec.first_token, *rec.chunk_times[:1]) if t is not None]
    return min(candidates) if candidates else rec.end


class ConcurrencyTracker:
    """Requests in flight over time, from each request's [sent, end) interval.

    Keeps +1/-1 events keyed by whole microseconds, so merging shards is exact and peak
    concurrency is the true peak over all shards together, not a sum of per-shard peaks.
    The events live in two sorted numpy arrays (time, summed change), 16 bytes per event time;
    `add` only appends to a list that is folded into them every `_FOLD` events and before any
    read. A dict of events cost about 170 bytes per request, the largest state of a long run.
    """

    __slots__ = ("_d", "_pending", "_steps_cache", "_t")

    def __init__(self) -> None:
        self._t: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)  # sorted, distinct
        self._d: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)  # nonzero changes
        self._pending: list[int] = []  # start, end, start, end... of intervals not folded yet
        # sorted times, level right after each, integral of the level from the first, in us
        self._steps_cache: tuple[npt.NDArray[np.int64], ...] | None = None

    def add(self, start: float, end: float) -> None:
        a, b = to_us(start), to_us(end)
        if b <= a:  # zero-length: never in flight
            return
        self._pending += (a, b)
        self._steps_cache = None
        if len(self._pending) >= _FOLD:
            self._fold()

    def _fold(
        self, t: npt.NDArray[np.int64] | None = None, d: npt.NDArray[np.int64] | None = None
    ) -> None:
        """Fold the pending intervals (and events t, d) into the sorted arrays."""
        parts_t, parts_d = [self._t], [self._d]
        if self._pending:
            parts_t.append(np.array(self._pending, dtype=np.int64))
            parts_d.append(np.tile(np.array([1, -1], dtype=np.int64), len(self._pending) // 2))
            self._pending.clear()
        if t is not None and d is not None:
            parts_t.append(t)
            parts_d.append(d)
        times = np.concatenate(parts_t)
        order = np.argsort(times, kind="stable")
        times = times[order]
        changes = np.concatenate(parts_d)[order]
        if not len(times):
            return
        firsts = np.flatnonzero(np.diff(times, prepend=times[0] - 1))
        sums = np.add.reduceat(changes, firsts)
        keep = sums != 0
        self._t, self._d = times[firsts][keep], sums[keep]
        self._steps_cache = None

    def merge(self, other: ConcurrencyTracker) -> None:
        other._fold()
        self._fold(other._t, other._d)

    def _steps(self) -> tuple[npt.NDArray[np.int64], ...]:
        if self._steps_cache is None:
            if self._pending:
                self._fold()
            times = self._t
            levels = np.cumsum(self._d)
            area = np.zeros(len(times), dtype=np.int64)
            if len(times) > 1:
                np.cumsum(levels[:-1] * np.diff(times), out=area[1:])
            self._steps_cache = (times, levels, area)
        return self._steps_cache

    @property
    def empty(self) -> bool:
        return not len(self._steps()[0])

    def peak(self) -> int:
        """Most requests in flight at one instant (0 when nothing was recorded)."""
        levels = self._steps()[1]
        return int(levels.max()) if len(levels) else 0

    def integral_us(self, start_us: int, end_us: int) -> int:
        """Integral of the in-flight count over [start_us, end_us], in request-microseconds."""
        return self._cumulative(end_us) - self._cumulative(start_us)

    def _cumulative(self, t: int) -> int:
        times, levels, area = self._steps()
        j = int(np.searchsorted(times, t, side="right")) - 1
        if j < 0:
            return 0
        return int(area[j]) + int(levels[j]) * (t - int(times[j]))

    def mean(self, start: float, end: float) -> float | None:
        """Time-weighted mean in-flight count over [start, end] (None for an empty span)."""
        a, b = to_us(start), to_us(end)
        if b <= a:
            return None
        return self.integral_us(a, b) / (b - a)

    def to_state(self) -> dict[str, Any]:
        self._steps()
        return {"t_us": self._t.tolist(), "delta": self._d.tolist()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ConcurrencyTracker:
        out = cls()
        out._fold(
            np.array([int(t) for t in state["t_us"]], dtype=np.int64),
            np.array([int(d) for d in state["delta"]], dtype=np.int64),
        )
        return out


# A window's bin: [prompt_tokens, generation_tokens, requests, errors, cached_prompt_tokens]
_PROMPT, _GEN, _REQ, _ERR, _CACHED = range(5)
_FIELDS = 5


class ThroughputWindows:
    """Tokens and requests per window of `window` seconds from `origin` on the run clock.

    Counting, per request (see docs/metrics.md):
    - prompt tokens (usage `prompt_tokens`) in full at the arrival of its first token, and, at the
      same instant, its cached prompt tokens (usage `prompt_tokens_details.cached_tokens`), so that
      the computed part (prompt - cached, what vLLM 0.32's log line counts) is known per window;
    - generation tokens at the arrival of each chunk, `chunk_tokens` tokens each (shared out so a
      request's chunks add up to its usage `completion_tokens`; counted at `end` when it has no
      chunk times);
    - the request itself at `end`, as a completed request if it succeeded, else as an error.
    Only requests with server usage (outcome ok) contribute tokens. Every request contributes its
    [sent, end) interval to the concurrency figures.
    """

    __slots__ = ("_bins", "concurrency", "last_end", "origin", "window")

    def __init__(self, window: float, origin: float = 0.0) -> None:
        if not window > 0:
            raise ValueError("window must be > 0 seconds")
        self.window = float(window)
        self.origin = float(origin)
        self._bins: dict[int, list[int]] = {}
        self.concurrency = ConcurrencyTracker()
        self.last_end: float | None = None  # the latest request end seen

    def index(self, t: float) -> int:
        return window_index(t, self.origin, self.window)

    def start_of(self, i: int) -> float:
        return self.origin + i * self.window

    def _bin(self, i: int) -> list[int]:
        b = self._bins.get(i)
        if b is None:
            b = self._bins[i] = [0] * _FIELDS
        return b

    def add(self, rec: RequestRecord) -> None:
        if self.last_end is None or rec.end > self.last_end:
            self.last_end = rec.end
        self._bin(self.index(rec.end))[_REQ if rec.outcome.is_success else _ERR] += 1
        self.concurrency.add(rec.sent, rec.end)
        if rec.outcome is not Outcome.OK:
            return
        if rec.prompt_tokens:
            b = self._bin(self.index(first_token_time(rec)))
            b[_PROMPT] += rec.prompt_tokens
            if rec.cached_tokens:
                b[_CACHED] += rec.cached_tokens
        if rec.completion_tokens:
            self._add_generation(rec)

    def _add_generation(self, rec: RequestRecord) -> None:
        times = rec.chunk_times
        if not times:
            self._bin(self.index(rec.end))[_GEN] += rec.completion_tokens or 0
            return
        first, last = self.index(times[0]), self.index(times[-1])
        if first >= last:  # the common case: the whole stream inside one window
            # generation_tokens_per_chunk always sums to completion_tokens: no need to share out
            self._bin(first)[_GEN] += rec.completion_tokens or 0
            return
        per_chunk = generation_tokens_per_chunk(rec)
        assert per_chunk is not None  # there are chunk times
        # Chunk times are in arrival order: cut them at the window boundaries.
        lo = 0
        for i in range(first, last):
            hi = bisect_left(times, self.start_of(i + 1), lo)
            if hi > lo:
                self._bin(i)[_GEN] += sum(per_chunk[lo:hi])
            lo = hi
        self._bin(last)[_GEN] += sum(per_chunk[lo:])

    def merge(self, other: ThroughputWindows) -> None:
        if (other.window, other.origin) != (self.window, self.origin):
            raise ValueError(
                f"cannot merge windows of {other.window}s from {other.origin} into windows of "
                f"{self.window}s from {self.origin}"
            )
        for i, theirs in other._bins.items():
            mine = self._bin(i)
            for k in range(_FIELDS):
                mine[k] += theirs[k]
        self.concurrency.merge(other.concurrency)
        if other.last_end is not None and (self.last_end is None or other.last_end > self.last_end):
            self.last_end = other.last_end

    def bins(self) -> dict[int, dict[str, int]]:
        """Window index -> counts, for windows where something was counted."""
        return {
            i: {
                "prompt_tokens": b[_PROMPT],
                "generation_tokens": b[_GEN],
                "requests": b[_REQ],
                "errors": b[_ERR],
                "cached_prompt_tokens": b[_CACHED],
            }
            for i, b in sorted(self._bins.items())
        }

    def totals(self) -> dict[str, int]:
        out = {
            "prompt_tokens": 0,
            "generation_tokens": 0,
            "requests": 0,
            "errors": 0,
            "cached_prompt_tokens": 0,
        }
        for b in self._bins.values():
            out["prompt_tokens"] += b[_PROMPT]
            out["generation_tokens"] += b[_GEN]
            out["requests"] += b[_REQ]
            out["errors"] += b[_ERR]
            out["cached_prompt_tokens"] += b[_CACHED]
        return out

    def series(self, until: float | None = None) -> list[dict[str, Any]]:
        """One dict per window, contiguous from the first window with an event to the window of
        `until` (default: the last event). The last window ends at `until`, so its rates are over
        the time it actually covered; a window of zero length has rates None.
        """
        if not self._bins or self.last_end is None:
            return []
        if until is None:
            until = self.last_end
        lo = min(self._bins)
        hi = max(max(self._bins), self.index(until))
        rows: list[dict[str, Any]] = []
        for i in range(lo, hi + 1):
            b = self._bins.get(i, [0] * _FIELDS)
            computed = b[_PROMPT] - b[_CACHED]
            start = self.start_of(i)
            end = max(start, min(self.start_of(i + 1), until)) if i == hi else self.start_of(i + 1)
            dur = end - start
            rows.append(
                {
                    "index": i,
                    "start": start,
                    "end": end,
                    "duration": dur,
                    "prompt_tokens": b[0],
                    "generation_tokens": b[1],
                    "requests": b[2],
                    "errors": b[3],
                    "cached_prompt_tokens": b[_CACHED],
                    "prompt_tokens_per_s": b[0] / dur if dur > 0 else None,
                    "computed_prompt_tokens_per_s": computed / dur if dur > 0 else None,
                    "generation_tokens_per_s": b[1] / dur if dur > 0 else None,
                    "requests_per_s": b[2] / dur if dur > 0 else None,
                    "mean_concurrency": self.concurrency.mean(start, end),
                }
            )
        return rows

    def to_state(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "origin": self.origin,
            "last_end": self.last_end,
            "bins": {str(i): list(b) for i, b in sorted(self._bins.items())},
            "concurrency": self.concurrency.to_state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ThroughputWindows:
        out = cls(state["window"], state["origin"])
        out._bins = {
            int(i): [int(x) for x in b] + [0] * (_FIELDS - len(b)) for i, b in state["bins"].items()
        }
        out.concurrency = ConcurrencyTracker.from_state(state["concurrency"])
        out.last_end = state.get("last_end")
        return out
