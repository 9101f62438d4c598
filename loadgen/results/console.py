"""What a person sees: a progress line on stderr while a run goes, and the summary table at the end.

The progress line is live (redrawn in place twice a second) on a terminal, and a plain line every
few seconds otherwise (CI logs, `docker compose logs`). Its figures come from the shards' progress
snapshots (`loadgen.shard.ShardProgress`), which count the tokens of requests still streaming, so
the token rate moves as tokens arrive, not when requests end.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Literal, Protocol, TextIO

import anyio

from loadgen.config import LoadConfig

ProgressMode = Literal["off", "live", "plain"]
_RATE_SECONDS = 5.0  # the token rate is over (at least) this many seconds
_TICK = 0.5  # seconds between two readings (and redraws of a live line)


class _Counts(Protocol):
    @property
    def phase(self) -> str: ...
    @property
    def done(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def tokens(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def at(self) -> float: ...  # when the counts were read (run clock); 0 = unknown


class _Stopping(Protocol):
    @property
    def stopping(self) -> anyio.Event: ...


@dataclass(frozen=True, slots=True)
class _Reading:
    t: float  # run clock
    done: int
    errors: int
    tokens: int
    in_flight: int


def _clock(seconds: float) -> str:
    s = max(0, int(seconds + 0.5))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """The progress display. `observe(now, shards)` and `line(now)` are pure (time injected);
    `run()` reads `sample()` (one count per shard) every half second and writes to `out`.

    Each shard's readings are kept apart and timed when the shard took them (a worker's arrive
    up to a second late), so the token rate is the sum of the shards' own rates."""

    def __init__(
        self,
        sample: Callable[[], Sequence[_Counts]],
        stop: _Stopping,
        *,
        mode: ProgressMode,
        origin: float,
        interval: float = 5.0,
        out: TextIO | None = None,
    ) -> None:
        self.sample = sample
        self.stop = stop
        self.mode = mode
        self.origin = origin
        self.interval = interval  # seconds between plain lines
        self.out = out
        self.phase = ""
        self._load = LoadConfig()
        self._start = 0.0
        self._readings: list[deque[_Reading]] = []  # per shard, oldest first
        self._printed: float | None = None
        self._shown = False

    def begin_phase(self, name: str, load: LoadConfig, start: float) -> None:
        """A phase starts at `start` (run clock): its counts start from zero."""
        self.phase = name
        self._load = load
        self._start = start
        self._readings = []
        self._printed = start

    def observe(self, now: float, shards: Sequence[_Counts]) -> None:
        """The shards' counts of the current phase, each taken at its `at` (else at `now`)."""
        while len(self._readings) < len(shards):
            self._readings.append(deque([_Reading(self._start, 0, 0, 0, 0)]))
        for counts, readings in zip(shards, self._readings, strict=False):
            if counts.phase != self.phase:
                continue  # not started this phase yet
            t = min(counts.at, now) if counts.at > 0 else now
            if t <= readings[-1].t:
                continue  # nothing newer (the worker has not reported since)
            readings.append(
                _Reading(t, counts.done, counts.errors, counts.tokens, counts.in_flight)
            )
            # keep the newest reading at least _RATE_SECONDS old, as the rate's base
            while len(readings) > 2 and readings[1].t <= t - _RATE_SECONDS:
                readings.popleft()

    def _latest(self) -> _Reading:
        done = errors = tokens = in_flight = 0
        for readings in self._readings:
            last = readings[-1]
            done += last.done
            errors += last.errors
            tokens += last.tokens
            in_flight += last.in_flight
        return _Reading(0.0, done, errors, tokens, in_flight)

    def rate(self) -> float | None:
        """Generated tokens per second over the last few seconds: the sum of the shards' rates
        (None before any shard has a reading after the phase's start)."""
        total, known = 0.0, False
        for readings in self._readings:
            first, last = readings[0], readings[-1]
            if last.t > first.t:
                total += max(0, last.tokens - first.tokens) / (last.t - first.t)
                known = True
        return total if known else None

    def eta(self, now: float) -> str:
        """Time left: from the request rate so far for a phase bounded by requests, from the
        clock for one bounded by time (then the wait for the requests in flight)."""
        load = self._load
        last = self._latest()
        elapsed = now - self._start
        left: list[float] = []
        if load.requests and last.done and elapsed > 0:
            left.append((load.requests - last.done) * elapsed / last.done)
        if load.duration:
            if elapsed < load.duration:
                left.append(load.duration - elapsed)
            elif load.drain_timeout is not None:
                cut = load.duration + load.drain_timeout - elapsed
                return f"draining, cut in {_clock(max(cut, 0.0))}"
            else:
                return "draining"
        return f"ETA {_clock(min(left))}" if left else "ETA -"

    def line(self, now: float) -> str:
        last = self._latest()
        total = self._load.requests
        done = f"{last.done:,}/{total:,} done" if total else f"{last.done:,} done"
        rate = self.rate()
        rate_text = "- tok/s" if rate is None else f"{rate:,.0f} tok/s"
        stopping = "  stopping..." if self.stop.stopping.is_set() else ""
        return (
            f"[{self.phase}] {now - self._start:6.1f} s  {done}  {last.in_flight:,} in flight  "
            f"{last.errors:,} errors  {last.tokens:,} tok  {rate_text}  {self.eta(now)}{stopping}"
        )

    def render(self, now: float) -> str | None:
        """What to write at `now`: a redrawn line when live, a whole line every `interval`
        seconds when plain, else None."""
        if self.mode == "off" or not self.phase:
            return None
        if self.mode == "live":
            return "\r\x1b[2K" + self.line(now)
        if self._printed is not None and now - self._printed < self.interval:
            return None
        self._printed = now
        return self.line(now) + "\n"

    async def run(self) -> None:
        if self.mode == "off":
            return
        while True:
            await anyio.sleep(_TICK)
            self.tick(perf_counter() - self.origin)

    def tick(self, now: float) -> None:
        """Read the shards at `now` (run clock) and write what is due."""
        if self.mode == "off" or not self.phase:
            return
        self.observe(now, self.sample())
        text = self.render(now)
        if text is not None:
            out = self.out or sys.stderr
            out.write(text)
            out.flush()
            self._shown = self.mode == "live"

    def clear(self) -> None:
        if self._shown:
            out = self.out or sys.stderr
            out.write("\r\x1b[2K")
            out.flush()
            self._shown = False


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = [
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)
