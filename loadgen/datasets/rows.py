"""What a dataset file holds, one request a row, before anything is encoded: the common form of
the `jsonl` and Hugging Face readers, checked whole before the run starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from loadgen.errors import LoadgenError

ImageSource = Literal["file", "url", "data", "bytes"]


class DatasetFileError(LoadgenError):
    """A dataset that cannot be used as it is: names the file, each row and the reason."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    source: ImageSource
    value: str  # the resolved path, the URL, the data URL, or (for bytes) a name for messages
    data: bytes = field(default=b"", repr=False)  # source "bytes": the encoded image

    @property
    def shown(self) -> str:
        """How the image is named in messages: data URLs shortened."""
        return self.value[:40] + "..." if self.source == "data" else self.value


@dataclass(frozen=True, slots=True)
class Row:
    origin: str  # where it came from, for messages: "line 3", "row 17"
    prompt: str | None  # None: the scenario's prompts
    images: tuple[ImageRef, ...]
    max_tokens: int | None  # None: the scenario's max_tokens
    reference: str | None  # an expected answer: checked, never sent
