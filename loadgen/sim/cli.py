"""`loadgen sim`: serve the built-in vLLM simulator.

Only argparse is imported here; the server (aiohttp, Pillow, prometheus_client) is imported when
the command runs, so `loadgen --help` and other commands stay quick.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING

from loadgen.sim.profiles import PROFILES

if TYPE_CHECKING:
    from loadgen.sim.server import SimConfig


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _rate(text: str) -> float:
    value = _finite(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a rate must be within 0..1, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# Engine flags whose default is the profile's value: (profile field, factor to the flag's unit).
_FROM_PROFILE: dict[str, tuple[str, float]] = {
    "max_num_seqs": ("max_num_seqs", 1.0),
    "max_num_batched_tokens": ("max_num_batched_tokens", 1.0),
    "kv_blocks": ("kv_blocks", 1.0),
    "block_size": ("block_size", 1.0),
    "max_model_len": ("max_model_len", 1.0),
    "step_base_ms": ("step_base", 1e3),
    "step_per_seq_ms": ("step_per_seq", 1e3),
    "step_per_prefill_token_ms": ("step_per_prefill_token", 1e3),
    "mm_process_us_per_token": ("mm_process_per_token", 1e6),
    "eos_mean_tokens": ("eos_mean_tokens", 1.0),
}


def _number(value: float, factor: float) -> str:
    return str(value) if isinstance(value, int) else f"{value * factor:.6g}"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, and for engine flags the value each profile gives (not "None")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        spec = _FROM_PROFILE.get(action.dest)
        if spec is None or action.default is not None:
            return super()._get_help_string(action)
        field, factor = spec
        values = ", ".join(
            f"{name} {_number(getattr(p, field), factor)}" for name, p in sorted(PROFILES.items())
        )
        return f"{action.help or ''} (default: the profile's: {values})".strip()


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, got {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve a simulated vLLM (OpenAI-compatible chat completions with images, /metrics, the "
        "stats log line) with a continuous-batching engine model. No GPU, no model weights. "
        "A profile is a model, not a measurement of any GPU."
    )
    parser.formatter_class = _HelpFormatter
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=_port, default=8000, help="0 = pick a free port")
    g.add_argument(
        "--served-model-name", nargs="+", default=["sim-vlm"], metavar="NAME",
        help="model name(s) to answer to; the first is listed first",
    )  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="seeds output text, EOS and fault draws")
    g.add_argument(
        "--log-interval", type=_non_negative, default=10.0, help="seconds between stats lines"
    )
    g.add_argument("--enable-prompt-tokens-details", action="store_true",
                   help="report usage.prompt_tokens_details.cached_tokens")  # fmt: skip
    g.add_argument("--max-image-bytes", type=_positive_int, default=20 * 1024 * 1024)
    g.add_argument("--max-image-pixels", type=_positive_int, default=50_000_000)
    g.add_argument("--max-images-per-prompt", type=_positive_int, default=16)

    e = parser.add_argument_group("engine (defaults come from the profile)")
    e.add_argument("--profile", choices=sorted(PROFILES), default="default")
    e.add_argument("--max-num-seqs", type=_positive_int, help="requests running at once")
    e.add_argument(
        "--max-num-batched-tokens", type=_positive_int, help="tokens computed per engine step"
    )
    e.add_argument("--kv-blocks", type=_positive_int, help="KV cache capacity in blocks")
    e.add_argument("--block-size", type=_positive_int, help="tokens per KV block")
    e.add_argument("--max-model-len", type=_positive_int, help="longest prompt + output, tokens")
    e.add_argument("--step-base-ms", type=_non_negative, help="fixed time per engine step")
    e.add_argument("--step-per-seq-ms", type=_non_negative, help="step time per decoding request")
    e.add_argument("--step-per-prefill-token-ms", type=_non_negative,
                   help="step time per prompt token computed")  # fmt: skip
    e.add_argument("--mm-process-us-per-token", type=_non_negative,
                   help="frontend image processing per image token (skipped on MM cache hit)")  # fmt: skip
    e.add_argument("--eos-mean-tokens", type=_non_negative,
                   help="mean output length when ignore_eos is false")  # fmt: skip
    e.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    e.add_argument("--mm-processor-cache-gb", type=_non_negative, default=4.0,
                   help="multimodal processor cache size; 0 disables it")  # fmt: skip

    f = parser.add_argument_group(
        "faults (per request also via the X-Sim-Fault header; see docs/simulator.md)"
    )
    f.add_argument("--fault-429-rate", type=_rate, default=0.0, help="answer HTTP 429 at this rate")
    f.add_argument("--fault-500-rate", type=_rate, default=0.0, help="answer HTTP 500 at this rate")
    f.add_argument("--fault-503-rate", type=_rate, default=0.0, help="answer HTTP 503 at this rate")
    f.add_argument("--fault-drop-rate", type=_rate, default=0.0,
                   help="close the connection mid-stream at this rate")  # fmt: skip
    f.add_argument("--fault-drop-after", type=int, default=3, help="... after this many chunks")
    f.add_argument("--fault-stream-error-rate", type=_rate, default=0.0,
                   help="send an error object inside the 200 stream at this rate")  # fmt: skip
    f.add_argument("--fault-stream-error-after", type=int, default=3,
                   help="... after this many chunks")  # fmt: skip
    f.add_argument("--fault-malformed-rate", type=_rate, default=0.0,
                   help="send one malformed JSON line at this rate")  # fmt: skip
    f.add_argument(
        "--fault-malformed-after", type=int, default=2, help="... after this many chunks"
    )
    f.add_argument("--fault-missing-usage-rate", type=_rate, default=0.0,
                   help="omit the usage chunk at this rate")  # fmt: skip
    f.add_argument("--fault-slow-headers", type=_non_negative, default=0.0,
                   help="delay (s) before response headers")  # fmt: skip
    f.add_argument("--fault-slow-headers-rate", type=_rate, default=1.0,
                   help="... applied at this rate")  # fmt: skip
    f.add_argument("--fault-stall", type=_non_negative, default=0.0,
                   help="global stall: the whole engine pauses this many seconds ...")  # fmt: skip
    f.add_argument("--fault-stall-every", type=_non_negative, default=0.0,
                   help="... every this many seconds, counted from the first chat request")  # fmt: skip


def build_config(args: argparse.Namespace) -> SimConfig:
    from loadgen.sim.faults import FaultConfig
    from loadgen.sim.images import ImageLimits
    from loadgen.sim.profiles import get_profile
    from loadgen.sim.server import SimConfig

    def ms(value: float | None) -> float | None:
        return None if value is None else value / 1000.0

    profile = get_profile(
        args.profile,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_blocks=args.kv_blocks,
        block_size=args.block_size,
        max_model_len=args.max_model_len,
        step_base=ms(args.step_base_ms),
        step_per_seq=ms(args.step_per_seq_ms),
        step_per_prefill_token=ms(args.step_per_prefill_token_ms),
        mm_process_per_token=(
            None if args.mm_process_us_per_token is None else args.mm_process_us_per_token / 1e6
        ),
        eos_mean_tokens=args.eos_mean_tokens,
    )
    faults = FaultConfig(
        rate_429=args.fault_429_rate,
        rate_500=args.fault_500_rate,
        rate_503=args.fault_503_rate,
        drop_rate=args.fault_drop_rate,
        drop_after=args.fault_drop_after,
        stream_error_rate=args.fault_stream_error_rate,
        stream_error_after=args.fault_stream_error_after,
        malformed_rate=args.fault_malformed_rate,
        malformed_after=args.fault_malformed_after,
        missing_usage_rate=args.fault_missing_usage_rate,
        slow_headers=args.fault_slow_headers,
        slow_headers_rate=args.fault_slow_headers_rate,
        stall=args.fault_stall,
        stall_every=args.fault_stall_every,
    )
    return SimConfig(
        profile=profile,
        models=tuple(args.served_model_name),
        seed=args.seed,
        enable_prefix_caching=args.enable_prefix_caching,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
        mm_cache_gb=args.mm_processor_cache_gb,
        log_interval=args.log_interval,
        faults=faults,
        image_limits=ImageLimits(args.max_image_bytes, args.max_image_pixels),
        max_images=args.max_images_per_prompt,
    )


def execute(args: argparse.Namespace) -> int:
    import asyncio

    from loadgen import lifeline
    from loadgen.sim.server import configure_logging, serve

    configure_logging()
    try:
        config = build_config(args)
        if config.log_interval <= 0:
            raise ValueError("--log-interval must be > 0")
        with asyncio.Runner(loop_factory=lifeline.uvloop_factory()) as runner:
            runner.run(serve(config, args.host, args.port))
    except ValueError as exc:
        print(f"loadgen sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the port is taken, or the host is not this machine's
        print(
            f"loadgen sim: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    return 0
