"""What the commands share about their flags: argument types for numeric flags (a malformed,
non-finite or out-of-range value is refused by argparse in one line, before anything runs), the
scenario overrides the flags make, and how a command speaks on stderr. Flags that override a
scenario value are checked again, against the scenario's limits, by
`loadgen.scenario.apply_overrides`."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from loadgen.scenario import Overrides

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


def scenario_overrides(args: argparse.Namespace, **fixed: object) -> Overrides:
    """The scenario values a command's flags override. Both `run` and `sweep` name their flags
    alike; a flag a command lacks overrides nothing. `fixed` sets values the command decides."""
    from loadgen.scenario import Overrides

    def flag(name: str) -> Any:
        return getattr(args, name, None)

    urls = flag("url")
    names: tuple[str, ...] = ("model", "mode", "concurrency", "rate", "requests", "duration")
    names += ("seed",)
    names += ("max_tokens", "output", "api_key_file", "window")
    values: dict[str, Any] = {name: flag(name) for name in names}
    values["urls"] = tuple(urls) if urls else None
    values["insecure"] = bool(flag("insecure"))
    values["progress"] = False if flag("no_progress") else None
    values["serve_images"] = bool(flag("serve_images"))
    values.update(fixed)
    return Overrides(**values)


def say(message: str) -> None:
    """A message on stderr. Messages quote the server (model ids, errors): no escape sequence
    reaches the terminal."""
    import sys

    from loadgen.safetext import for_terminal

    print(for_terminal(message), file=sys.stderr, flush=True)
