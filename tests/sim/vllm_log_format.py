"""vLLM's stats log line, as its source builds it (vllm/v1/metrics/loggers.py,
LoggingStatLogger.log, v0.11/v0.12): a regex derived from those format strings, written out
independently of the simulator's code."""

from __future__ import annotations

import re

PREFIX = "Engine {:03d}: "
PARTS = [
    "Avg prompt throughput: %.1f tokens/s",
    "Avg generation throughput: %.1f tokens/s",
    "Running: %d reqs",
    "Waiting: %d reqs",
]
PREEMPTIONS = "Preemptions: %d"
CACHE_PARTS = ["GPU KV cache usage: %.1f%%", "Prefix cache hit rate: %.1f%%"]
MM_PART = "MM cache hit rate: %.1f%%"


def _to_regex(fmt: str) -> str:
    out = re.escape(fmt)
    out = out.replace(re.escape("%.1f"), r"(\d+\.\d)").replace(re.escape("%d"), r"(\d+)")
    return out.replace(re.escape("%%"), "%")


def line_regex() -> re.Pattern[str]:
    """The whole message, optional parts optional, anchored at the end of the line."""
    prefix = re.escape(PREFIX.format(0)).replace("000", r"\d{3}")
    body = ", ".join(_to_regex(p) for p in PARTS)
    body += f"(?:, {_to_regex(PREEMPTIONS)})?"
    body += ", " + ", ".join(_to_regex(p) for p in CACHE_PARTS)
    body += f"(?:, {_to_regex(MM_PART)})?"
    return re.compile(prefix + body + "$")
