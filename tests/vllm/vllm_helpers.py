"""Plain-HTTP helpers for the real-vLLM suite: request bodies, raw SSE capture, /metrics reading,
and Qwen2-VL's image token rule. Independent of loadgen's client on purpose: these tests pin down
what the server does, so they must not share the code under test."""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image

PATCH_SIZE = 14  # Qwen2-VL's vision patch, pixels
MERGE_SIZE = 2  # 2x2 patches merge into one language-model token


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the tests know about the running server and its model."""

    base_url: str
    model: str
    log: str  # path of the server's log file
    block_size: int
    min_pixels: int
    max_pixels: int


@dataclass(slots=True)
class Stream:
    """One streamed response as it came off the wire."""

    status: int
    raw: bytes
    events: list[dict[str, Any]] = field(default_factory=list)  # parsed `data:` objects
    done: bool = False  # saw `data: [DONE]`

    @property
    def usage(self) -> dict[str, Any]:
        """The final usage chunk's usage (the chunk with no choices)."""
        finals = [e for e in self.events if e.get("choices") == [] and "usage" in e]
        assert len(finals) == 1, f"expected one final usage chunk, got {len(finals)}"
        usage: dict[str, Any] = finals[0]["usage"]
        return usage

    @property
    def choice_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("choices")]


def parse_sse(raw: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The JSON objects of the `data:` lines, and whether `[DONE]` ended the stream."""
    events: list[dict[str, Any]] = []
    done = False
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in block.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
            else:
                events.append(json.loads(payload))
    return events, done


def image_data_url(width: int, height: int, colour: tuple[int, int, int]) -> str:
    """A PNG of one colour: distinct colours make distinct images for the caches."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_body(
    model: str,
    *,
    images: list[str] | None = None,
    text: str = "Describe this image in one sentence.",
    max_tokens: int = 16,
    continuous_usage: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A streamed captioning request; text first, then the images (as loadgen sends them)."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in images or []]
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": continuous_usage},
    }
    body.update(extra)
    return body


def post_stream(client: httpx.Client, body: dict[str, Any]) -> Stream:
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        raw = response.read()
    if response.status_code != 200:
        return Stream(response.status_code, raw)
    events, done = parse_sse(raw)
    return Stream(response.status_code, raw, events, done)


async def post_stream_async(client: httpx.AsyncClient, body: dict[str, Any]) -> Stream:
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        raw = await response.aread()
    if response.status_code != 200:
        return Stream(response.status_code, raw)
    events, done = parse_sse(raw)
    return Stream(response.status_code, raw, events, done)


def scrape(client: httpx.Client) -> dict[str, float]:
    """GET /metrics: each sample name summed over its label sets (text format, no parser)."""
    response = client.get("/metrics")
    response.raise_for_status()
    totals: dict[str, float] = {}
    for line in response.text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_and_labels, _, value = line.rpartition(" ")
        name = name_and_labels.split("{", 1)[0]
        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of 28, area within [min, max] pixels."""
    factor = PATCH_SIZE * MERGE_SIZE
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_tokens(width: int, height: int, min_pixels: int, max_pixels: int) -> int:
    """Language-model tokens one image expands to (between <|vision_start|> and <|vision_end|>)."""
    h, w = smart_resize(height, width, min_pixels, max_pixels)
    return (h // PATCH_SIZE) * (w // PATCH_SIZE) // (MERGE_SIZE * MERGE_SIZE)
