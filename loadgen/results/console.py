"""What a person sees: a live progress line on a terminal, and the summary table at the end."""

from __future__ import annotations

import sys
from time import perf_counter
from typing import Any, Protocol

import anyio

_RECENT_SECONDS = 5.0


class _Counts(Protocol):
    done: int
    errors: int
    generation_tokens: int
    recent: list[tuple[float, int]]


class _Stopping(Protocol):
    @property
    def stopping(self) -> anyio.Event: ...


class Progress:
    """A one-line live display on stderr, refreshed twice a second; silent when not a terminal."""

    def __init__(self, counts: _Counts, stop: _Stopping, *, enabled: bool, origin: float) -> None:
        self.counts = counts
        self.stop = stop
        self.enabled = enabled
        self.origin = origin
        self.phase = ""
        self._shown = False

    def line(self, now: float) -> str:
        c = self.counts
        t = now - self.origin
        recent = [(e, n) for e, n in c.recent if e >= t - _RECENT_SECONDS]
        c.recent[:] = recent  # keep the list short
        rate = sum(n for _, n in recent) / _RECENT_SECONDS
        stopping = "  stopping..." if self.stop.stopping.is_set() else ""
        return (
            f"[{self.phase}] {t:6.1f} s  {c.done} done  {c.errors} errors  "
            f"{rate:8.1f} gen tok/s (last {_RECENT_SECONDS:.0f} s){stopping}"
        )

    async def run(self) -> None:
        if not self.enabled:
            return
        while True:
            sys.stderr.write("\r\x1b[2K" + self.line(perf_counter()))
            sys.stderr.flush()
            self._shown = True
            await anyio.sleep(0.5)

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self._shown = False


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


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
