"""`/v1/chat/completions` with images as `image_url` content parts. A body is

    {"model": M, "messages": [{"role": "system", "content": S}?, {"role": "user", "content": [
        PARTS]}], "max_tokens": .., "temperature": .., "stream": true,
     "stream_options": {"include_usage": true, "continuous_usage_stats": true},
     "min_tokens": ..?, "ignore_eos": true?, ...extra_body}

where PARTS are the prompt's text part and the image parts, the text first. Written unstreamed
(`loadgen.endpoints.unstreamed`), the body has `"stream": false` and no `stream_options`.
"""

from __future__ import annotations

from typing import Final

import orjson

from loadgen.config import RESERVED_BODY_KEYS, WorkloadConfig
from loadgen.endpoints.base import BodyTemplate, ParserFactory
from loadgen.stream import StreamParser


def sampling_fields(cfg: WorkloadConfig, max_tokens: int, stream: bool = True) -> dict[str, object]:
    """What follows the prompt in an OpenAI completions body, in body order: sampling, streaming
    with usage in every chunk (or `"stream": false`: the usage comes with the whole answer),
    then `extra_body`."""
    fields: dict[str, object] = {"max_tokens": max_tokens, "temperature": cfg.temperature}
    fields["stream"] = stream
    if stream:
        fields["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    if cfg.min_tokens is not None:
        fields["min_tokens"] = cfg.min_tokens
    if cfg.ignore_eos:
        fields["ignore_eos"] = True
    for key, value in cfg.extra_body:
        if key in RESERVED_BODY_KEYS:
            raise ValueError(f"extra_body may not set {key!r}")
        fields[key] = value
    return fields


def members(fields: dict[str, object]) -> bytes:
    """`fields` serialized as object members (`"a":1,"b":2`), to splice into a body."""
    try:
        return orjson.dumps(fields)[1:-1]
    except TypeError as exc:
        raise ValueError(f"extra_body is not JSON-serializable: {exc}") from exc


def chat_template(
    cfg: WorkloadConfig, model: str, max_tokens: int, stream: bool = True
) -> BodyTemplate:
    """A chat completions body (streamed or not) with its hole for the user's content parts."""
    head = [b'{"model":', orjson.dumps(model), b',"messages":[']
    if cfg.system_prompt:
        head += [orjson.dumps({"role": "system", "content": cfg.system_prompt}), b","]
    head.append(b'{"role":"user","content":[')
    rest = members(sampling_fields(cfg, max_tokens, stream))
    return BodyTemplate(head=b"".join(head), tail=b"]}]," + rest + b"}", text_first=True)


def text_part(prompt: str) -> bytes:
    """A prompt as a chat message's text content part."""
    return orjson.dumps({"type": "text", "text": prompt})


class ChatEndpoint:
    name: Final = "chat"
    path: Final = "/v1/chat/completions"
    accepts_images: Final = True
    streamed: Final = True
    parser: Final[ParserFactory] = StreamParser

    def template(self, cfg: WorkloadConfig, model: str, max_tokens: int) -> BodyTemplate:
        return chat_template(cfg, model, max_tokens)

    def prompt_part(self, prompt: str) -> bytes:
        return text_part(prompt)
