"""Encoded images as requests carry them: `ImageItem`, the encoders, and image files from a folder.

An image is encoded once, before any measured phase, straight into the JSON content part that
request bodies splice in byte for byte. The part holds the only copy of the data URL, so a pool of
images costs about 4/3 of its encoded size in memory.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson
from PIL import Image, ImageOps

from loadgen.config import ImageFormat

MIME: Final[dict[ImageFormat, str]] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
}
_PART_HEAD: Final = b'{"type":"image_url","image_url":{"url":"'
_PART_TAIL: Final = b'"}}'
_PIL_FORMATS: Final[dict[str, ImageFormat]] = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}
FOLDER_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".webp"})


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One distinct image of a workload, encoded."""

    id: str  # stable across runs with the same scenario: "syn-..." or the file name
    width: int
    height: int
    format: ImageFormat
    nbytes: int  # size of the encoded image (before base64)
    sha256: str  # hex digest of the encoded bytes
    # {"type":"image_url","image_url":{"url":"data:<mime>;base64,..."}} as serialized JSON
    part: bytes = field(repr=False)

    @property
    def data_url(self) -> str:
        """data:<mime>;base64,<encoded bytes>"""
        return self.part[len(_PART_HEAD) : -len(_PART_TAIL)].decode("ascii")

    @property
    def mime(self) -> str:
        return MIME[self.format]


def make_item(image_id: str, data: bytes, fmt: ImageFormat, width: int, height: int) -> ImageItem:
    url = f"data:{MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"
    part = orjson.dumps({"type": "image_url", "image_url": {"url": url}})
    if not (part.startswith(_PART_HEAD) and part.endswith(_PART_TAIL)):
        raise AssertionError("orjson serialized an image part unexpectedly")
    return ImageItem(
        id=image_id,
        width=width,
        height=height,
        format=fmt,
        nbytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        part=part,
    )


def decode_data_url(url: str) -> tuple[str, bytes]:
    """(mime type, encoded bytes) of a base64 data URL."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise ValueError(f"not a base64 data URL: {url[:40]!r}")
    return head[len("data:") : -len(";base64")], base64.b64decode(payload, validate=True)


def encode(image: Image.Image, fmt: ImageFormat, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        # Level 1 is three times faster than the default 6 and, on photo-like and noisy
        # pictures, within 2 % of its size.
        image.save(buf, "PNG", compress_level=1)
    else:
        image.save(buf, "WEBP", quality=quality)
    return buf.getvalue()


def list_folder(folder: str | Path) -> list[Path]:
    """The image files of a folder (not its subfolders), sorted by name."""
    root = Path(folder)
    files = sorted(
        (p for p in root.iterdir() if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES),
        key=lambda p: p.name,
    )
    if not files:
        suffixes = ", ".join(sorted(FOLDER_SUFFIXES))
        raise ValueError(f"no image files ({suffixes}) in folder {root}")
    return files


def load_file(path: Path, *, max_side: int, quality: int) -> ImageItem:
    """A file as an ImageItem: its original bytes, or re-encoded in its own format when it has to
    shrink so that its longer side is at most `max_side` (0 = never)."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        fmt = _PIL_FORMATS.get(image.format or "")
        if fmt is None:
            raise ValueError(f"{path}: unsupported image format {image.format!r}")
        width, height = image.size
        if max_side <= 0 or max(width, height) <= max_side:
            return make_item(path.name, data, fmt, width, height)
        # Re-encoding drops EXIF, so apply its orientation first or the picture turns sideways.
        upright = ImageOps.exif_transpose(image)
        scale = max_side / max(upright.size)
        size = (max(1, round(upright.width * scale)), max(1, round(upright.height * scale)))
        resized = upright.resize(size, Image.Resampling.LANCZOS)
    return make_item(path.name, encode(resized, fmt, quality), fmt, resized.width, resized.height)
