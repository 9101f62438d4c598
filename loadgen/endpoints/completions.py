"""`/v1/completions`: text only. A body is

    {"model": M, "prompt": P, "max_tokens": .., "temperature": .., "stream": true,
     "stream_options": {"include_usage": true, "continuous_usage_stats": true},
     "min_tokens": ..?, "ignore_eos": true?, ...extra_body}

and its stream's chunks hold their text in `choices[0].text` (vLLM's shape: no role chunk,
finish reason, usage and errors as in chat completions).
"""

from __future__ import annotations

from typing import ClassVar, Final

import orjson

from loadgen.config import WorkloadConfig
from loadgen.endpoints.base import BodyTemplate, ParserFactory
from loadgen.endpoints.chat import members, sampling_fields
from loadgen.stream import ChunkShape, StreamParser

# A text completion's choice holds its text itself: `choices[0].text`.
COMPLETIONS_SHAPE: Final = ChunkShape(holder=None, texts=("text",))


class CompletionsParser(StreamParser):
    __slots__ = ()
    _SHAPE: ClassVar[ChunkShape] = COMPLETIONS_SHAPE


def completions_template(
    cfg: WorkloadConfig, model: str, max_tokens: int, stream: bool = True
) -> BodyTemplate:
    """A text completions body (streamed or not) with its hole for the prompt. A system
    prompt, a chat message, has no place in it: refused rather than dropped."""
    if cfg.system_prompt:
        raise ValueError("a text completions body has no system prompt: put it in the prompt")
    head = b'{"model":' + orjson.dumps(model) + b',"prompt":'
    return BodyTemplate(head, b"," + members(sampling_fields(cfg, max_tokens, stream)) + b"}")


class CompletionsEndpoint:
    name: Final = "completions"
    path: Final = "/v1/completions"
    accepts_images: Final = False
    streamed: Final = True
    parser: Final[ParserFactory] = CompletionsParser

    def template(self, cfg: WorkloadConfig, model: str, max_tokens: int) -> BodyTemplate:
        return completions_template(cfg, model, max_tokens)

    def prompt_part(self, prompt: str) -> bytes:
        return orjson.dumps(prompt)
