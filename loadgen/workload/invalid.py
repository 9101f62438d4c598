"""Deliberately bad requests: `[workload] invalid_share` of each phase's requests, sent broken on
purpose to load-test a server's error path.

Which requests are bad is drawn per request of a stream from the seed (`loadgen.datasets.mix`'s
`uniform`), so every shard and every run of the same scenario agree, and a replay (`repeat_of`)
sends the same bad requests as its source. Warm-up requests are never bad. A bad request is the
request the dataset gives, broken one way (`INVALID_KINDS`):

- `undecodable_image`: every image part (one is added to a request without images) is a data URL
  whose bytes are no image;
- `oversized_image`: its first image (one is added to a request without images) is a real PNG of
  8192x8192 pixels (67 Mpixel, 64 KB), over the simulator's default limit of 50 Mpixel;
- `min_tokens_above_max`: the body asks `min_tokens` = `max_tokens` + 1.

The server's answer is recorded as for any request, then settled (`settle`) into an outcome of
its own: `invalid_rejected` (a 4xx other than 429, as expected), `invalid_accepted` (answered as a
good request) or `invalid_failed` (anything else: a 5xx, a 429, a timeout, a dropped stream,
a cancel). The record keeps the kind in `invalid`; phase summaries count these requests apart
(`requests.invalid` and their outcomes) and leave them out of every other figure.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
from collections.abc import Callable, Sequence
from typing import Final

import orjson

from loadgen.config import WorkloadConfig
from loadgen.datasets.mix import uniform
from loadgen.endpoints import BodyTemplate
from loadgen.records import RequestRecord

OVERSIZED_SIDE: Final = 8192  # pixels: 67 Mpixel, over the simulator's 50 Mpixel default


def _image_part(url: str) -> bytes:
    return orjson.dumps({"type": "image_url", "image_url": {"url": url}})


# Valid base64 of bytes that are no image: the server must fail to decode it, not to parse it.
UNDECODABLE_PART: Final = _image_part(
    "data:image/jpeg;base64," + base64.b64encode(b"this is not an image " * 16).decode("ascii")
)


@functools.cache
def oversized_part() -> bytes:
    """A solid grey PNG of OVERSIZED_SIDE squared pixels as an image part (built once: ~0.4 s)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (OVERSIZED_SIDE, OVERSIZED_SIDE), 128).save(buf, "PNG")
    return _image_part("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))


def invalid_kind(cfg: WorkloadConfig, seed: int, stream: str, r: int) -> str:
    """The way request r of `stream` is broken, or "" for a good request."""
    share = cfg.invalid_share
    if not share or uniform(seed, "invalid\x1f" + stream, r) >= share:
        return ""
    kinds = cfg.invalid_kind
    if len(kinds) == 1:
        return kinds[0]
    return kinds[int(uniform(seed, "invalid-kind\x1f" + stream, r) * len(kinds))]


def render_invalid(
    kind: str,
    template: BodyTemplate,
    min_above_max: Callable[[], BodyTemplate],
    text: bytes,
    parts: Sequence[bytes],
) -> bytes:
    """The body of a request broken in the way `kind` says: `template` is the request's body
    template, `min_above_max()` the same asking min_tokens = max_tokens + 1."""
    if kind == "undecodable_image":
        return template.render(text, [UNDECODABLE_PART] * max(1, len(parts)))
    if kind == "oversized_image":
        return template.render(text, [oversized_part(), *parts[1:]])
    if kind == "min_tokens_above_max":
        return min_above_max().render(text, list(parts))
    raise ValueError(f"unknown invalid_kind {kind!r}")


def min_above_max(cfg: WorkloadConfig, max_tokens: int) -> WorkloadConfig:
    """The workload asking one token more at least than it allows at most."""
    return dataclasses.replace(cfg, min_tokens=max_tokens + 1)


def settle(rec: RequestRecord) -> None:
    """A deliberately bad request's outcome, from the server's answer (kept in `status` and
    `error`)."""
    rec.outcome = rec.outcome.as_invalid()
