"""How many prompt tokens a request costs, the way a Qwen2-VL model would count them.

Three deterministic rules (docs/simulator.md states them for users):

- Text: the string is cut into pieces by `_PIECE`: a run of letters with at most one leading
  space (one token per started 10 letters), each digit (with an optional leading space), each
  other symbol or punctuation character (with an optional leading space), and each remaining run
  of whitespace. Every piece is one token.
- Images: Qwen2-VL's `smart_resize` (round height and width to multiples of 28 within
  min/max pixels), then one token per 28x28 cell, wrapped in `<|vision_start|>`/`<|vision_end|>`.
- Chat template, Qwen2-VL style: each message is `<|im_start|>ROLE\\nCONTENT<|im_end|>\\n`; when the
  first message is not a system message, the default system message "You are a helpful
  assistant." is prepended; the prompt ends with the generation prompt `<|im_start|>assistant\\n`.

Besides counting, the prompt is turned into one integer key per token so the prefix cache can
hash it in blocks; an image's tokens carry the image's content hash.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

PATCH_FACTOR = 28  # Qwen2-VL: patch 14 x spatial merge 2
DEFAULT_MIN_PIXELS = 56 * 56  # Qwen2-VL preprocessor_config.json
DEFAULT_MAX_PIXELS = 28 * 28 * 16384  # 12845056, Qwen2-VL preprocessor_config.json
MAX_ASPECT_RATIO = 200
LETTERS_PER_TOKEN = 10
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

_PIECE = re.compile(r"(?P<word> ?[^\W\d_]+)| ?\d| ?(?:[^\w\s]|_)|\s+")

# Special tokens get fixed keys far from crc32 values of ordinary pieces (which are < 2**32).
IM_START = 1 << 40
IM_END = IM_START + 1
VISION_START = IM_START + 2
VISION_END = IM_START + 3


class ImageSizeError(ValueError):
    """The image cannot be resized by the Qwen2-VL rule (extreme aspect ratio)."""


def text_pieces(text: str) -> list[str]:
    """The text's tokens as strings, by the documented piece rule."""
    out: list[str] = []
    for match in _PIECE.finditer(text):
        piece = match.group()
        if match.lastgroup == "word" and len(piece) > LETTERS_PER_TOKEN:
            # Long words: one token per started LETTERS_PER_TOKEN letters.
            lead = 1 if piece[0] == " " else 0
            cuts = range(lead, len(piece), LETTERS_PER_TOKEN)
            chunks = [piece[i : i + LETTERS_PER_TOKEN] for i in cuts]
            chunks[0] = piece[:lead] + chunks[0]
            out.extend(chunks)
        else:
            out.append(piece)
    return out


def smart_resize(
    height: int,
    width: int,
    factor: int = PATCH_FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of `factor`, area within min/max pixels."""
    if height <= 0 or width <= 0:
        raise ImageSizeError(f"image size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ImageSizeError(
            f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
            f"got {max(height, width) / min(height, width)}"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_tokens(
    width: int,
    height: int,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> int:
    """Placeholder tokens for one image of `width` x `height` pixels (vision markers excluded)."""
    h, w = smart_resize(height, width, PATCH_FACTOR, min_pixels, max_pixels)
    return (h // PATCH_FACTOR) * (w // PATCH_FACTOR)


@dataclass(frozen=True, slots=True)
class ImagePart:
    content_hash: int  # hash of the image's base64 text
    tokens: int  # placeholder tokens (smart_resize rule)


Part = str | ImagePart  # a message's content: text pieces and images, in order


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    parts: tuple[Part, ...]


def _text_keys(text: str, out: list[int]) -> None:
    out.extend(zlib.crc32(p.encode()) for p in text_pieces(text))


def text_token_keys(text: str) -> list[int]:
    """One key per token of a raw text prompt (no chat template: `/v1/completions`)."""
    keys: list[int] = []
    _text_keys(text, keys)
    return keys


def prompt_token_keys(messages: Sequence[Message]) -> list[int]:
    """One key per prompt token of the chat-templated prompt; len() is the prompt token count."""
    keys: list[int] = []
    if not messages or messages[0].role != "system":
        _message_keys(Message("system", (DEFAULT_SYSTEM_PROMPT,)), keys)
    for message in messages:
        _message_keys(message, keys)
    keys.append(IM_START)
    _text_keys("assistant\n", keys)
    return keys


def _message_keys(message: Message, keys: list[int]) -> None:
    keys.append(IM_START)
    _text_keys(message.role, keys)
    _text_keys("\n", keys)
    for part in message.parts:
        if isinstance(part, ImagePart):
            keys.append(VISION_START)
            # Every placeholder token of one image carries the image's hash, so a block holding
            # any of them only matches the same image at the same position.
            keys.extend([part.content_hash] * part.tokens)
            keys.append(VISION_END)
        else:
            _text_keys(part, keys)
    keys.append(IM_END)
    _text_keys("\n", keys)
