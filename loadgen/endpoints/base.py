"""What an endpoint is to loadgen: the path it is served at, how a request's body is written,
and how its streamed answer is read.

A body is assembled per request by concatenating pre-serialized JSON fragments: the endpoint
writes a `BodyTemplate` once (everything but the prompt and images, every fragment out of
orjson) and each request only joins the template's two halves around its encoded prompt and image
parts. A body is then valid JSON by construction while costing one bytes join per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from loadgen.config import WorkloadConfig
from loadgen.records import RequestRecord
from loadgen.stream import StreamParser


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    """A body with a hole where a request's prompt and images go: `head`, then the encoded
    prompt and image parts separated by commas (the prompt first if `text_first`, else last),
    then `tail`."""

    head: bytes
    tail: bytes
    text_first: bool = True

    def render(self, text: bytes, images: Sequence[bytes]) -> bytes:
        content = [text, *images] if self.text_first else [*images, text]
        parts = [self.head]
        for n, part in enumerate(content):
            if n:
                parts.append(b",")
            parts.append(part)
        parts.append(self.tail)
        return b"".join(parts)


class ParserFactory(Protocol):
    """Makes the parser of one response: `StreamParser` or a subclass of it (its `_SHAPE`)."""

    def __call__(self, origin: float = 0.0, rec: RequestRecord | None = None) -> StreamParser: ...


class Endpoint(Protocol):
    """One kind of OpenAI API, registered by name in `loadgen.endpoints.ENDPOINTS`."""

    @property
    def name(self) -> str:
        """Its name in a scenario (`[target] api`)."""
        ...

    @property
    def path(self) -> str:
        """The path it is served at, `[target] endpoint` when a scenario names none."""
        ...

    @property
    def accepts_images(self) -> bool:
        """Whether a request may carry images (`workload.images_per_request` > 0). Images go
        into the hole as built, OpenAI `image_url` content parts (`ImageItem.part`)."""
        ...

    @property
    def streamed(self) -> bool:
        """Whether its answers stream (SSE). False: each answer is one JSON object read whole,
        so a request's first token arrives with its end (TTFT = E2E) and results say so."""
        ...

    @property
    def parser(self) -> ParserFactory:
        """The parser of one response: of its stream, or of its whole body when not streamed."""
        ...

    def template(self, cfg: WorkloadConfig, model: str, max_tokens: int) -> BodyTemplate:
        """The body of every request of the workload asking for `max_tokens` (a dataset may
        set it per request). Raises ValueError for what cannot be sent (extra_body)."""
        ...

    def prompt_part(self, prompt: str) -> bytes:
        """A prompt as the JSON fragment the template's hole takes."""
        ...
