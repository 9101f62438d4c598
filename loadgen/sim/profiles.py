"""Named performance profiles: the numbers behind the simulator's engine model.

A profile is a model, not a measurement of any GPU. Its step-time formula is

    step = step_base + step_per_seq * decode_seqs + step_per_prefill_token * prefill_tokens

and the `default` profile's constants were tuned (scripts/sim_calibrate.py) so that the shipped
captioning seed case shows about 1301 prompt and 1924 generation tokens/s in the stats log line.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    # Engine step time model, seconds.
    step_base: float
    step_per_seq: float  # per request in its decode phase
    step_per_prefill_token: float  # per prompt token computed (cache hits cost nothing)
    # Frontend multimodal processing, seconds per image token; skipped on an MM cache hit.
    # Images are processed one at a time, as a single API server process does.
    mm_process_per_token: float
    # Scheduler and KV cache.
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_blocks: int
    block_size: int
    max_model_len: int
    # Mean output length when EOS is allowed (geometric; never before min_tokens).
    eos_mean_tokens: float


PROFILES: dict[str, Profile] = {
    "default": Profile(
        name="default",
        step_base=0.0050,
        step_per_seq=0.000355,
        step_per_prefill_token=0.00006,
        mm_process_per_token=0.00002,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        kv_blocks=20000,
        block_size=16,
        max_model_len=32768,
        eos_mean_tokens=120.0,
    ),
    "fast": Profile(
        name="fast",
        step_base=0.001,
        step_per_seq=0.00002,
        step_per_prefill_token=0.000002,
        mm_process_per_token=0.0,
        max_num_seqs=64,
        max_num_batched_tokens=4096,
        kv_blocks=8192,
        block_size=16,
        max_model_len=32768,
        eos_mean_tokens=40.0,
    ),
    "zero": Profile(
        name="zero",
        step_base=0.0,
        step_per_seq=0.0,
        step_per_prefill_token=0.0,
        mm_process_per_token=0.0,
        max_num_seqs=4096,
        max_num_batched_tokens=1 << 20,
        kv_blocks=1 << 20,
        block_size=16,
        max_model_len=32768,
        eos_mean_tokens=120.0,
    ),
}


def get_profile(name: str, **overrides: float | int | None) -> Profile:
    """The named profile with every non-None override applied."""
    try:
        base = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
    known = {f.name for f in fields(Profile)}
    changes: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - known
    if unknown:
        raise ValueError(f"unknown profile fields: {sorted(unknown)}")
    return replace(base, **changes)
