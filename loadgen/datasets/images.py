"""Encoded images as requests carry them: `ImageItem`, the encoders, and image files from a folder.

An image is encoded once, before any measured phase, straight into the JSON content part that
request bodies splice in byte for byte. The part holds the only copy of the data URL, so a pool of
images costs about 4/3 of its encoded size in memory.
"""

from __future__ import annotations

import base64
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import orjson
from PIL import Image, ImageOps, UnidentifiedImageError

from loadgen.config import ImageFormat
from loadgen.errors import LoadgenError

MIME: Final[dict[ImageFormat, str]] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
}
_PART_HEAD: Final = b'{"type":"image_url","image_url":{"url":"'
_PART_TAIL: Final = b'"}}'
# A multi-picture JPEG (Pillow's "MPO", as phones write) is a JPEG whose first picture every
# decoder shows; vLLM and the simulator accept it as image/jpeg.
_PIL_FORMATS: Final[dict[str, ImageFormat]] = {
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "PNG": "png",
    "WEBP": "webp",
}
FOLDER_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".webp"})
# Limits on a file of an image folder (README, "Scenario format"): beyond them a file is refused
# (or skipped with `skip_bad`) before any request, not found out mid-run.
MAX_FILE_BYTES: Final = 50 * 1024 * 1024
MAX_FILE_PIXELS: Final = 89_478_485  # Pillow's own decompression-bomb threshold


class ImageFileError(LoadgenError):
    """A file of an image folder that cannot be sent: names the file and the reason."""


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


def list_folder(folder: str | Path, *, skip_bad: bool = False) -> tuple[list[Path], list[str]]:
    """The image files of a folder (not its subfolders), sorted by name, each checked whole
    (check_file), and why each file left out was: with `skip_bad` a bad file is left out, else
    it is an ImageFileError."""
    root = Path(folder)
    try:
        candidates = sorted(
            (p for p in root.iterdir() if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES),
            key=lambda p: p.name,
        )
    except OSError as exc:
        raise ImageFileError(f"{root}: cannot list the image folder: {exc.strerror}") from None
    files: list[Path] = []
    skipped: list[str] = []
    for path in candidates:
        reason = check_file(path)
        if reason is None:
            files.append(path)
        elif skip_bad:
            skipped.append(f"{path.name}: {reason}")
        else:
            raise ImageFileError(
                f"{path}: {reason} (set workload.images.skip_bad = true to leave such files out)"
            )
    if not files:
        suffixes = ", ".join(sorted(FOLDER_SUFFIXES))
        left = f" ({len(skipped)} unusable, skipped)" if skipped else ""
        raise ImageFileError(f"no usable image files ({suffixes}) in folder {root}{left}")
    return files, skipped


def check_file(path: Path) -> str | None:
    """Why a file cannot be sent as an image (empty, too big, not an image, an unsupported
    format, too many pixels, truncated or corrupt), or None. Decodes it whole (a JPEG at 1/8
    scale, which still reads every byte), so that a bad file is found before any request."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        if size > MAX_FILE_BYTES:
            return f"{size:,} bytes, over the limit of {MAX_FILE_BYTES:,} for an image file"
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    return check_bytes(data)


def check_bytes(data: bytes) -> str | None:
    """Why an encoded image cannot be sent (as `check_file`), or None."""
    if not data:
        return "empty image"
    if len(data) > MAX_FILE_BYTES:
        return f"{len(data):,} bytes, over the limit of {MAX_FILE_BYTES:,} for an image"
    try:
        with _open(data) as image:
            fmt = _PIL_FORMATS.get(image.format or "")
            if fmt is None:
                return f"unsupported image format {image.format!r} (JPEG, PNG or WebP only)"
            width, height = image.size
            if width * height > MAX_FILE_PIXELS:
                return (
                    f"{width}x{height} pixels, over the limit of {MAX_FILE_PIXELS:,} pixels "
                    "for an image file"
                )
            if image.format in ("JPEG", "MPO"):
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    except UnidentifiedImageError:
        return "not an image file (Pillow cannot identify it)"
    except Image.DecompressionBombError:
        return f"over the limit of {MAX_FILE_PIXELS:,} pixels for an image file"
    except Exception as exc:  # a decoder meeting a corrupt file may raise anything
        return f"corrupt or truncated image ({type(exc).__name__}: {exc})"
    return None


def _open(data: bytes) -> Image.Image:
    # The pixel limit is checked here with its own message: Pillow's warning would only be noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def load_file(path: Path, *, max_side: int, quality: int) -> ImageItem:
    """A file as an ImageItem: its original bytes, or re-encoded in its own format when it has to
    shrink so that its longer side is at most `max_side` (0 = never). A file that cannot be read
    (even one that changed since list_folder checked it) is an ImageFileError."""
    try:
        return _load_file(path, max_side, quality)
    except ImageFileError:
        raise
    except Exception as exc:  # a decoder meeting a corrupt file may raise anything
        raise ImageFileError(f"{path}: {check_file(path) or f'cannot be read ({exc})'}") from None


def _load_file(path: Path, max_side: int, quality: int) -> ImageItem:
    return load_bytes(path.name, path.read_bytes(), max_side=max_side, quality=quality)


def load_bytes(image_id: str, data: bytes, *, max_side: int, quality: int) -> ImageItem:
    """Encoded image bytes as an ImageItem, as `load_file` makes one of a file's bytes."""
    with _open(data) as image:
        fmt = _PIL_FORMATS.get(image.format or "")
        if fmt is None:
            raise ImageFileError(f"{image_id}: unsupported image format {image.format!r}")
        width, height = image.size
        if max_side <= 0 or max(width, height) <= max_side:
            return make_item(image_id, data, fmt, width, height)
        # Re-encoding drops EXIF, so apply its orientation first or the picture turns sideways.
        upright = ImageOps.exif_transpose(image)
        scale = max_side / max(upright.size)
        size = (max(1, round(upright.width * scale)), max(1, round(upright.height * scale)))
        resized = upright.resize(size, Image.Resampling.LANCZOS)
    return make_item(image_id, encode(resized, fmt, quality), fmt, resized.width, resized.height)


def url_item(image_id: str, url: str) -> ImageItem:
    """An image the target fetches itself: its part carries the http(s) URL, not the bytes
    (`nbytes` 0, the size unknown here: 0 x 0; the format guessed from the URL's suffix)."""
    part = orjson.dumps({"type": "image_url", "image_url": {"url": url}})
    if not (part.startswith(_PART_HEAD) and part.endswith(_PART_TAIL)):
        raise AssertionError("orjson serialized an image part unexpectedly")
    suffix = Path(urlsplit(url).path).suffix.lower()
    fmt: ImageFormat = {".png": "png", ".webp": "webp"}.get(suffix, "jpeg")  # type: ignore[assignment]
    return ImageItem(
        id=image_id,
        width=0,
        height=0,
        format=fmt,
        nbytes=0,
        sha256=hashlib.sha256(url.encode()).hexdigest(),
        part=part,
    )
