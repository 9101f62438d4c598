"""Small helpers for the simulator tests: payloads, SSE parsing, /metrics reading."""

from __future__ import annotations

import base64
import io
import random
from typing import Any

import httpx
import orjson
from PIL import Image

TIMEOUT = httpx.Timeout(10.0)
PROMPT = "Describe this image in one sentence."


def image_url(width: int = 448, height: int = 336, seed: int = 0, fmt: str = "JPEG") -> str:
    """A distinct image per seed (solid colour from the seed), as a data URL."""
    rng = random.Random(seed)
    color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt)
    media = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}[fmt]
    return f"data:image/{media};base64," + base64.b64encode(buf.getvalue()).decode()


def chat_body(
    images: list[str] | None = None,
    text: str = PROMPT,
    max_tokens: int = 8,
    stream: bool = True,
    usage: bool = True,
    continuous: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": url}} for url in images or []
    ]
    content.append({"type": "text", "text": text})
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": stream,
    }
    if stream and (usage or continuous):
        body["stream_options"] = {"include_usage": usage, "continuous_usage_stats": continuous}
    body.update(extra)
    return body


def sse_events(raw: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [
        block[len(b"data: ") :].decode()
        for block in raw.split(b"\n\n")
        if block.startswith(b"data: ")
    ]


def stream_chat(
    base_url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, list[str]]:
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as client:
        response = client.post("/v1/chat/completions", json=body, headers=headers)
        return response.status_code, sse_events(response.content)


def chunks(events: list[str]) -> list[dict[str, Any]]:
    """Parsed JSON events (everything but [DONE])."""
    return [orjson.loads(e) for e in events if e != "[DONE]"]


def metrics(base_url: str) -> dict[str, float]:
    """Sample name (with labels) -> value, from GET /metrics."""
    text = httpx.get(base_url + "/metrics", timeout=TIMEOUT).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in values.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total
