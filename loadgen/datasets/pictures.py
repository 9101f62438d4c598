"""Synthetic pictures drawn from a seed, reproducible for a given Pillow version.

Content kinds, chosen for what they do to the server and the network:
- `noise`: uniform random pixels; incompressible, the worst case for bandwidth and decoding.
- `gradient`: a two-colour linear gradient at a random angle; tiny when encoded, and each image
  differs, so nothing repeats in the multimodal cache unless the workload repeats it.
- `solid`: one colour. Colours are distinct within a stream (an injective map of the image key),
  so solid images only repeat when the workload repeats them (pool_size = 1: all identical).
- `photo`: smooth colour field, blurred shapes and light grain; encodes to photo-like JPEG sizes.
"""

from __future__ import annotations

import math
import random
from typing import Final

from PIL import Image, ImageDraw, ImageFilter, ImageOps

from loadgen.config import ImageContent

# Odd, so key -> (base + key * _SOLID_STEP) mod 2**24 is a bijection on 24-bit colours.
_SOLID_STEP: Final = 0x9E3779
_PHOTO_GRAIN: Final = 0.06  # share of the grey noise image blended into a photo


def synthesize(content: ImageContent, width: int, height: int, seed: int, key: int) -> Image.Image:
    """The picture number `key` of the stream seeded by `seed` (an RGB image)."""
    rng = random.Random(f"{seed}:{key}")
    if content == "noise":
        return Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    if content == "gradient":
        return _gradient(rng, width, height)
    if content == "solid":
        rgb = (seed + key * _SOLID_STEP) & 0xFFFFFF
        return Image.new("RGB", (width, height), (rgb >> 16, (rgb >> 8) & 0xFF, rgb & 0xFF))
    return _photo(rng, width, height)


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _gradient(rng: random.Random, width: int, height: int) -> Image.Image:
    # Rotate a square ramp whose side is the diagonal, then crop the middle: no empty corners.
    side = math.ceil(math.hypot(width, height))
    ramp = Image.linear_gradient("L").resize((side, side), Image.Resampling.BILINEAR)
    ramp = ramp.rotate(rng.uniform(0.0, 360.0), resample=Image.Resampling.BILINEAR)
    left, top = (side - width) // 2, (side - height) // 2
    ramp = ramp.crop((left, top, left + width, top + height))
    return ImageOps.colorize(ramp, black=_colour(rng), white=_colour(rng))


def _photo(rng: random.Random, width: int, height: int) -> Image.Image:
    # A coarse random colour grid blown up smoothly stands in for sky, walls and lighting.
    grid = Image.frombytes("RGB", (4, 3), rng.randbytes(4 * 3 * 3))
    image = grid.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    for _ in range(rng.randint(6, 14)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.35) * short, rng.uniform(0.05, 0.35) * short
        if rng.random() < 0.6:
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=_colour(rng))
        else:
            corners = rng.randint(3, 6)
            start = rng.uniform(0, 2 * math.pi)
            points = [
                (
                    cx + rx * math.cos(start + 2 * math.pi * n / corners),
                    cy + ry * math.sin(start + 2 * math.pi * n / corners),
                )
                for n in range(corners)
            ]
            draw.polygon(points, fill=_colour(rng))
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, short / 200)))
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height)).convert("RGB")
    return Image.blend(image, grain, _PHOTO_GRAIN)
