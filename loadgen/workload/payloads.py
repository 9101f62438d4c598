"""Request bodies, assembled by concatenating pre-serialized JSON fragments.

A body is

    {"model": M, "messages": [{"role": "system", "content": S}?, {"role": "user", "content": [
        PARTS]}], "max_tokens": .., "temperature": .., "stream": true,
     "stream_options": {"include_usage": true, "continuous_usage_stats": true},
     "min_tokens": ..?, "ignore_eos": true?, ...extra_body}

where PARTS are the text part (`prompts.text_part`) and the image parts (`ImageItem.part`), in
the order TEXT_BEFORE_IMAGES says. Every fragment comes out of orjson, and the glue is only the
JSON punctuation between them, so a body is valid JSON by construction while costing one bytes
join per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from loadgen.config import RESERVED_BODY_KEYS, WorkloadConfig

# The prompt's text part comes before the image parts in the user message.
TEXT_BEFORE_IMAGES: Final = True
RESERVED_KEYS: Final = RESERVED_BODY_KEYS


def top_level_fields(cfg: WorkloadConfig) -> dict[str, object]:
    """Everything after "messages", in body order."""
    fields: dict[str, object] = {
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    if cfg.min_tokens is not None:
        fields["min_tokens"] = cfg.min_tokens
    if cfg.ignore_eos:
        fields["ignore_eos"] = True
    for key, value in cfg.extra_body:
        if key in RESERVED_KEYS:
            raise ValueError(f"extra_body may not set {key!r}")
        fields[key] = value
    return fields


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    head: bytes  # up to and including the opening bracket of the user content list
    tail: bytes  # from the closing bracket of the user content list to the end

    def render(self, text: bytes, images: Sequence[bytes]) -> bytes:
        content = [text, *images] if TEXT_BEFORE_IMAGES else [*images, text]
        parts = [self.head]
        for n, part in enumerate(content):
            if n:
                parts.append(b",")
            parts.append(part)
        parts.append(self.tail)
        return b"".join(parts)


def build_template(cfg: WorkloadConfig, model: str) -> BodyTemplate:
    head = [b'{"model":', orjson.dumps(model), b',"messages":[']
    if cfg.system_prompt:
        head += [orjson.dumps({"role": "system", "content": cfg.system_prompt}), b","]
    head.append(b'{"role":"user","content":[')
    try:
        rest = orjson.dumps(top_level_fields(cfg))
    except TypeError as exc:
        raise ValueError(f"extra_body is not JSON-serializable: {exc}") from exc
    # rest is a non-empty object "{...}": splice its members in after "messages".
    return BodyTemplate(head=b"".join(head), tail=b"]}]," + rest[1:])
