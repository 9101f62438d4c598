"""Which prompt a request asks, and the prompt's pre-serialized content part.

Request r of a stream asks prompts[r % len(prompts)]: round-robin, so every prompt is asked equally
often and a replayed phase asks the same prompts in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson


def prompt_index(request: int, count: int) -> int:
    return request % count


def text_part(prompt: str) -> bytes:
    return orjson.dumps({"type": "text", "text": prompt})


def text_parts(prompts: Sequence[str]) -> tuple[bytes, ...]:
    if not prompts:
        raise ValueError("a workload needs at least one prompt")
    return tuple(text_part(p) for p in prompts)
