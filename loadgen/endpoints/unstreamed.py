"""Chat and text completions unstreamed (`"stream": false`), for servers or gateways that cannot
stream.

The body is the streamed endpoint's without streaming (`loadgen.endpoints.chat`,
`loadgen.endpoints.completions`); the answer is one JSON object, read whole when the response
ends. For chat:

    {"id": .., "object": "chat.completion", "choices": [{"index": 0, "message": {"role":
     "assistant", "content": TEXT, ...}, "finish_reason": "length", ...}], "usage": {
     "prompt_tokens": .., "completion_tokens": .., "prompt_tokens_details": {"cached_tokens":
     ..}?}}

and for text completions the same with `"text": TEXT` in the choice instead of `message`.

Nothing arrives before the whole answer, so the request's one arrival is its end: TTFT = E2E,
and there is no inter-token latency nor time per output token (the record says
`streamed: false`, and so does the run's summary). The transports know only a parser factory:
`UnstreamedParser` is a `StreamParser` whose `feed` collects the body (at most
`MAX_BODY_BYTES`; a longer one is MALFORMED and dropped, so memory stays bounded) and whose
`close` reads it, with the stream parser's checks of every field it uses.
"""

from __future__ import annotations

from typing import ClassVar, Final

import orjson
from orjson import JSONDecodeError, loads

from loadgen.config import WorkloadConfig
from loadgen.endpoints.base import BodyTemplate, ParserFactory
from loadgen.endpoints.chat import chat_template, text_part
from loadgen.endpoints.completions import COMPLETIONS_SHAPE, completions_template
from loadgen.records import Outcome, RequestRecord
from loadgen.stream import (
    MAX_EVENT_BYTES,
    ChunkShape,
    StreamParser,
    _error_text,
    _usage_problem,
)

MAX_BODY_BYTES: Final = MAX_EVENT_BYTES  # one whole answer; a longer one is MALFORMED
_QUOTED = 256  # bytes of an offending body quoted in the error
# A whole chat completion's choice holds its text in `message` (as a chunk's does in `delta`).
MESSAGE_SHAPE: Final = ChunkShape(holder="message", texts=("content", "reasoning_content"))


class UnstreamedParser(StreamParser):
    """Reads one whole (unstreamed) answer; a subclass sets where a choice holds its text."""

    __slots__ = ("_answered", "_body", "_over")
    _SHAPE: ClassVar[ChunkShape] = MESSAGE_SHAPE

    def __init__(self, origin: float = 0.0, rec: RequestRecord | None = None) -> None:
        super().__init__(origin, rec)
        self._body = bytearray()
        self._over = False  # the body went over MAX_BODY_BYTES: the rest is dropped
        self._answered: float | None = None  # when the answer was read (run clock)

    def feed(self, data: bytes, t: float) -> None:
        if self._over:
            return
        if len(self._body) + len(data) > MAX_BODY_BYTES:
            self._over = True
            head = bytes(self._body[:_QUOTED]) if self._body else data[:_QUOTED]
            self._body = bytearray()
            self._bad(f"a response body over {MAX_BODY_BYTES // (1024 * 1024)} MiB", head)
            return
        self._body += data

    def close(self, t: float) -> None:
        """The response ended at `t`: read its body."""
        if self._over or self.done:
            return
        self.done = True  # the whole body arrived; what it holds decides the outcome
        body, self._body = self._body, bytearray()
        if not body.strip():
            self._bad("an empty response body", b"")
            return
        try:
            obj = loads(body)
        except JSONDecodeError:
            self._bad("an undecodable response body", bytes(body[:_QUOTED]))
            return
        if type(obj) is not dict:
            self._bad("the response body is not a JSON object", bytes(body[:_QUOTED]))
            return
        err = obj.get("error")
        if err is not None:
            self.error = _error_text(err)
            return
        problem = self._answer_problem(obj)
        if problem is not None:
            self._bad(problem, bytes(body[:_QUOTED]))
            return
        self._answered = t - self._origin

    def _answer_problem(self, obj: dict[str, object]) -> str | None:
        """What is wrong with a whole answer, or None; kept (usage, finish reason) when right."""
        usage = obj.get("usage")
        if usage is not None and (problem := _usage_problem(usage)) is not None:
            return problem
        choices = obj.get("choices")
        if type(choices) is not list or not choices:
            return "an answer without choices"
        choice = choices[0]
        if type(choice) is not dict:
            return "a choice is not an object"
        problem, _ = self._SHAPE.text_of(choice)
        if problem is not None:
            return problem
        reason = choice.get("finish_reason")
        if reason is not None and type(reason) is not str:
            return "a choice's finish_reason is not a string"
        if type(usage) is dict and usage:
            self._usage = usage
        self.finish_reason = reason if type(reason) is str and reason else None
        return None

    def fill(self, rec: RequestRecord) -> None:
        super().fill(rec)
        rec.streamed = False
        rec.chunk_times, rec.chunk_tokens = [], []  # no chunks: one arrival, the end
        rec.first_token = self._answered
        if rec.outcome is Outcome.MISSING_USAGE:
            rec.error = "no usage in the answer"


class UnstreamedChatEndpoint:
    name: Final = "chat-unstreamed"
    path: Final = "/v1/chat/completions"
    accepts_images: Final = True
    streamed: Final = False
    parser: Final[ParserFactory] = UnstreamedParser

    def template(self, cfg: WorkloadConfig, model: str, max_tokens: int) -> BodyTemplate:
        return chat_template(cfg, model, max_tokens, stream=False)

    def prompt_part(self, prompt: str) -> bytes:
        return text_part(prompt)


class UnstreamedCompletionsParser(UnstreamedParser):
    __slots__ = ()
    _SHAPE: ClassVar[ChunkShape] = COMPLETIONS_SHAPE


class UnstreamedCompletionsEndpoint:
    name: Final = "completions-unstreamed"
    path: Final = "/v1/completions"
    accepts_images: Final = False
    streamed: Final = False
    parser: Final[ParserFactory] = UnstreamedCompletionsParser

    def template(self, cfg: WorkloadConfig, model: str, max_tokens: int) -> BodyTemplate:
        return completions_template(cfg, model, max_tokens, stream=False)

    def prompt_part(self, prompt: str) -> bytes:
        return orjson.dumps(prompt)
