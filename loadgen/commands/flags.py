"""Argument types for the commands' numeric flags: a malformed, non-finite or out-of-range value is
refused by argparse in one line, before anything runs. Flags that override a scenario value are
checked again, against the scenario's limits, by `loadgen.scenario.apply_overrides`."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Final

MAX_WORKERS: Final = 256  # worker processes (the default is one a core, at most 8)


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """A whole number, optionally within [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        _check(value, low, high, text)
        return value

    return parse


def number(
    low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> Callable[[str], float]:
    """A finite number, optionally within [low, high] ((low, high] with `low_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        # Infinity is let through when there is no upper bound: the scenario's own checks say
        # what it would mean (e.g. --rate inf).
        if math.isnan(value) or (high is not None and math.isinf(value)):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low_open and low is not None and not value > low:
            raise argparse.ArgumentTypeError(f"expected more than {low:g}, got {text}")
        _check(value, low, high, text)
        return value

    return parse


def _check(value: float, low: float | None, high: float | None, text: str) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f"{low:g} to {high:g}"
            if low is not None and high is not None
            else (f"{low:g} or more" if low is not None else f"at most {high:g}")
        )
        raise argparse.ArgumentTypeError(f"expected {bounds}, got {text}")
