"""Fault injection: server-wide flags (at a rate) and the per-request `X-Sim-Fault` header.

Header grammar: comma-separated items, each a name or name=value:

    http_429 | http_500 | http_503        answer with that status and vLLM's error body
    drop_after=N                          close the connection after N stream chunks
    stream_error_after=N                  after N chunks send `data: {"error": {...}}`, then [DONE]
    malformed_after=N                     after N chunks send one line that is not valid JSON
    no_usage                              send no usage at all (no chunk carries it), even when asked
    slow_headers=S                        wait S seconds before sending the response headers
    stall=S                               pause the whole engine for S seconds, starting now

Chunk counts include the role-only first chunk.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

HTTP_FAULTS = {"http_429": 429, "http_500": 500, "http_503": 503}
_COUNT_FAULTS = ("drop_after", "stream_error_after", "malformed_after")
_SECONDS_FAULTS = ("slow_headers", "stall")


class FaultHeaderError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class RequestFaults:
    http_status: int | None = None
    drop_after: int | None = None
    stream_error_after: int | None = None
    malformed_after: int | None = None
    no_usage: bool = False
    slow_headers: float = 0.0
    stall: float = 0.0


def parse_fault_header(value: str) -> RequestFaults:
    faults = RequestFaults()
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        name, _, arg = item.partition("=")
        name = name.strip().lower()
        arg = arg.strip()
        if name in HTTP_FAULTS and not arg:
            faults = replace(faults, http_status=HTTP_FAULTS[name])
        elif name == "no_usage" and not arg:
            faults = replace(faults, no_usage=True)
        elif name in _COUNT_FAULTS:
            try:
                n = int(arg)
            except ValueError:
                raise FaultHeaderError(
                    f"X-Sim-Fault: {name} needs an integer, got {arg!r}"
                ) from None
            if n < 0:
                raise FaultHeaderError(f"X-Sim-Fault: {name} must be >= 0, got {n}")
            if name == "drop_after":
                faults = replace(faults, drop_after=n)
            elif name == "stream_error_after":
                faults = replace(faults, stream_error_after=n)
            else:
                faults = replace(faults, malformed_after=n)
        elif name in _SECONDS_FAULTS:
            try:
                seconds = float(arg)
            except ValueError:
                raise FaultHeaderError(f"X-Sim-Fault: {name} needs seconds, got {arg!r}") from None
            if not 0 <= seconds <= 3600:
                raise FaultHeaderError(f"X-Sim-Fault: {name} must be within 0..3600 s")
            if name == "stall":
                faults = replace(faults, stall=seconds)
            else:
                faults = replace(faults, slow_headers=seconds)
        else:
            raise FaultHeaderError(f"X-Sim-Fault: unknown item {item!r}")
    return faults


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Server-wide faults, each applied to a request with its probability."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    drop_rate: float = 0.0
    drop_after: int = 3
    stream_error_rate: float = 0.0
    stream_error_after: int = 3
    malformed_rate: float = 0.0
    malformed_after: int = 2
    missing_usage_rate: float = 0.0
    slow_headers: float = 0.0
    slow_headers_rate: float = 1.0
    stall: float = 0.0  # global stall: the engine pauses this long ...
    stall_every: float = 0.0  # ... every this many seconds (both > 0 to enable)

    def __post_init__(self) -> None:
        if self.stall > 0 and self.stall_every > 0 and self.stall >= self.stall_every:
            # The engine would never run again (and the server's loop would spin finding the
            # end of a stall that has none).
            raise ValueError(
                f"--fault-stall ({self.stall:g} s) must be shorter than --fault-stall-every "
                f"({self.stall_every:g} s)"
            )

    def draw(self, rng: random.Random) -> RequestFaults:
        """This request's faults from the server-wide rates (one draw per kind)."""
        status = None
        for code, rate in ((429, self.rate_429), (500, self.rate_500), (503, self.rate_503)):
            if rate > 0 and rng.random() < rate and status is None:
                status = code
        return RequestFaults(
            http_status=status,
            drop_after=self.drop_after if _hit(rng, self.drop_rate) else None,
            stream_error_after=(
                self.stream_error_after if _hit(rng, self.stream_error_rate) else None
            ),
            malformed_after=self.malformed_after if _hit(rng, self.malformed_rate) else None,
            no_usage=_hit(rng, self.missing_usage_rate),
            slow_headers=self.slow_headers if _hit(rng, self.slow_headers_rate) else 0.0,
        )


def _hit(rng: random.Random, rate: float) -> bool:
    return rate > 0 and rng.random() < rate


def merge(flags: RequestFaults, header: RequestFaults) -> RequestFaults:
    """The header's faults win over those drawn from the flags."""
    return RequestFaults(
        http_status=header.http_status or flags.http_status,
        drop_after=_first(header.drop_after, flags.drop_after),
        stream_error_after=_first(header.stream_error_after, flags.stream_error_after),
        malformed_after=_first(header.malformed_after, flags.malformed_after),
        no_usage=header.no_usage or flags.no_usage,
        slow_headers=header.slow_headers or flags.slow_headers,
        stall=header.stall,
    )


def _first(a: int | None, b: int | None) -> int | None:
    return a if a is not None else b


@dataclass(slots=True)
class StallSchedule:
    """When the engine may not start a step: periodic global stalls plus ad-hoc ones.

    The periodic windows count from `origin`; the server sets it at the first chat request
    (`begin`), so a run sees the same stalls at the same offsets however long it took to start."""

    origin: float | None
    every: float = 0.0
    duration: float = 0.0
    windows: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.every > 0 and self.duration >= self.every:
            raise ValueError(f"a stall of {self.duration} s every {self.every} s never ends")

    def begin(self, t: float) -> None:
        """Count the periodic windows from `t`, unless they already count from earlier."""
        if self.origin is None:
            self.origin = t

    def add(self, start: float, duration: float) -> None:
        if duration > 0:
            self.windows.append((start, start + duration))

    def resume_time(self, t: float) -> float:
        """The earliest time >= t outside every stall window."""
        changed = True
        while changed:
            changed = False
            if self.every > 0 and self.duration > 0 and self.origin is not None:
                # Periodic windows [origin + k*every, origin + k*every + duration), k >= 1.
                k = int((t - self.origin) // self.every)
                window_start = self.origin + k * self.every
                if k >= 1 and window_start <= t < window_start + self.duration:
                    t = window_start + self.duration
                    changed = True
            self.windows = [w for w in self.windows if w[1] > t]
            for start, end in self.windows:
                if start <= t < end:
                    t = end
                    changed = True
        return t
