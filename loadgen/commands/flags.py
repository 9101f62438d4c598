"""What the commands share about their flags: argument types for numeric flags (a malformed,
non-finite or out-of-range value is refused by argparse in one line, before anything runs), the
workload flags, the scenario overrides the flags make, the scenario a command runs (a file's, or
one of flags alone), and how a command speaks on stderr. Flags that override a scenario value are
checked again, against the scenario's limits, by `loadgen.scenario.apply_overrides`."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from loadgen.config import Scenario
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


def image_size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT in pixels, e.g. 448x336 (the range is the scenario's, checked with it)."""
    width, sep, height = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT in pixels, e.g. 448x336, got {text!r}"
        ) from None


def ray_address(text: str) -> str:
    """`--ray`'s value: a Ray address, never a scenario file taken by mistake."""
    if text.endswith(".toml") or "/" in text.removeprefix("ray://"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Ray address (HOST:PORT, auto or local): give the scenario "
            "before --ray, or write --ray=auto"
        )
    return text


def add_target_flags(parser: argparse.ArgumentParser, title: str, url_default: str) -> None:
    """The flags of `[target]` that `run` and `sweep` share: where to send, as whom, how."""
    target = parser.add_argument_group(title)
    target.add_argument(
        "--url",
        "--base-url",
        dest="url",
        action="append",
        metavar="URL",
        help="base URL of the server (repeat for several, used round-robin); default: the "
        f"scenario's, then OPENAI_BASE_URL, then {url_default}",
    )
    target.add_argument(
        "--model", help="model name (default: the scenario's, or the first the server lists)"
    )
    target.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="read the API key from FILE (default: $OPENAI_API_KEY)",
    )
    target.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    target.add_argument(
        "--transport",
        choices=("native", "aiohttp", "httpx"),
        default="native",
        help="HTTP transport for the streamed requests (default: native, loadgen's own HTTP/1.1 "
        "client, the cheapest per token; aiohttp and httpx for comparison; none uses proxies)",
    )
    target.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        type=ray_address,
        metavar="ADDRESS",
        help="run the shards as Ray actors (pip install 'loadgen[ray]'): on the Ray cluster at "
        "ADDRESS (HOST:PORT of its head), the one this host belongs to (auto, the default), or "
        "a private one-node Ray (local); the scenario's [distributed] keys size it",
    )


def add_workload_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of `[workload]` and `[target] api`/`endpoint` (README "Using it"), shared by
    `run` and `sweep`. Each replaces the scenario key of the same meaning."""
    w = parser.add_argument_group("workload (each replaces the scenario key of the same meaning)")
    w.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="the prompt (repeat for several, used round-robin): [workload] prompts",
    )
    w.add_argument("--system-prompt", metavar="TEXT", help="a shared system prompt")
    w.add_argument("--min-tokens", type=integer(), help="output tokens each request must reach")
    w.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        help="generate exactly --max-tokens (vLLM's ignore_eos)",
    )
    w.add_argument("--temperature", type=number(), help="sampling temperature")
    w.add_argument(
        "--images-per-request", type=integer(), metavar="N", help="images in each request"
    )
    w.add_argument(
        "--image-size", type=image_size, metavar="WxH", help="synthetic images, e.g. 448x336"
    )
    w.add_argument("--image-format", metavar="FORMAT", help="synthetic images: jpeg, png or webp")
    w.add_argument(
        "--image-content",
        metavar="KIND",
        help="synthetic images: photo, noise, gradient or solid",
    )
    w.add_argument(
        "--image-pool",
        type=integer(),
        metavar="N",
        help="N distinct images cycled through ([workload.images] pool_size; 0 = a fresh image "
        "per request)",
    )
    w.add_argument(
        "--api",
        metavar="NAME",
        help="the kind of request (default chat: /v1/chat/completions); its path unless "
        "--endpoint is given",
    )
    w.add_argument("--endpoint", metavar="PATH", help="the request path, e.g. /v1/chat/completions")
    w.add_argument(
        "--warmup-requests",
        type=integer(),
        metavar="N",
        help="requests sent first and left out of the results",
    )


def scenario_overrides(args: argparse.Namespace, **fixed: object) -> Overrides:
    """The scenario values a command's flags override. Both `run` and `sweep` name their flags
    alike; a flag a command lacks overrides nothing. `fixed` sets values the command decides."""
    from loadgen.scenario import Overrides

    def flag(name: str) -> Any:
        return getattr(args, name, None)

    urls = flag("url")
    names: tuple[str, ...] = ("model", "mode", "concurrency", "rate", "requests", "duration")
    names += ("seed",)
    names += ("max_tokens", "output", "api_key_file", "window", "name")
    names += ("api", "endpoint", "system_prompt", "min_tokens", "ignore_eos", "temperature")
    names += ("images_per_request", "image_size", "image_format", "image_content")
    names += ("image_pool", "warmup_requests")
    values: dict[str, Any] = {name: flag(name) for name in names}
    values["urls"] = tuple(urls) if urls else None
    prompts = flag("prompt")
    values["prompts"] = tuple(prompts) if prompts else None
    values["insecure"] = bool(flag("insecure"))
    values["progress"] = False if flag("no_progress") else None
    values["serve_images"] = bool(flag("serve_images"))
    values["ray"] = flag("ray")
    values.update(fixed)
    return Overrides(**values)


def command_scenario(path: str | None, overrides: Overrides) -> Scenario:
    """The scenario a command runs: the file's with the flags' overrides, or, without a file,
    the built-in defaults and the flags (`loadgen.scenario.scenario_from_flags`)."""
    from loadgen.scenario import load_scenario, scenario_from_flags

    if path is None:
        return scenario_from_flags(overrides)
    return load_scenario(path, overrides)


def say(message: str) -> None:
    """A message on stderr. Messages quote the server (model ids, errors): no escape sequence
    reaches the terminal."""
    import sys

    from loadgen.safetext import for_terminal

    print(for_terminal(message), file=sys.stderr, flush=True)
