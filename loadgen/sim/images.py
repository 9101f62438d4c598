"""Images in requests: parse a data URL, learn the image's size and content hash.

Only the header is decoded (Pillow's `Image.open` is lazy), so a large image costs a base64
decode and a header parse. Pillow and its format plugins load with the server (this module is not
imported by `loadgen sim --help`), not on the first request, whose TTFT would show it. The hash is of the base64 text, which identifies the bytes without decoding;
a small memo of hash -> size lets a repeated image skip the decode entirely.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

_MEDIA_TYPES = ("image/jpeg", "image/jpg", "image/png", "image/webp")
_FORMATS = {"JPEG", "PNG", "WEBP", "MPO"}  # MPO: a JPEG with extra frames, as cameras write


class ImageError(ValueError):
    """The image part cannot be used; the message is for the client."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    content_hash: int
    width: int
    height: int
    nbytes: int  # decoded size


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000


class ImageDecoder:
    """Parses image URLs; remembers the sizes of the most recent images by hash."""

    def __init__(self, limits: ImageLimits, memo_size: int = 4096) -> None:
        self.limits = limits
        Image.preinit()  # JPEG/PNG plugins now, not during the first request
        self._memo: OrderedDict[int, ImageInfo] = OrderedDict()
        self._memo_size = memo_size

    def decode(self, url: object) -> ImageInfo:
        if not isinstance(url, str) or not url:
            raise ImageError("image_url.url must be a non-empty string")
        if not url.startswith("data:"):
            raise ImageError(
                "the simulator accepts data URLs (data:image/...;base64,...) and http(s) "
                "URLs of loopback hosts; it does not read local files"
            )
        header, sep, payload = url.partition(",")
        if not sep:
            raise ImageError("invalid data URL: no ',' separating the header from the data")
        media, _, encoding = header[5:].partition(";")
        if encoding != "base64":
            raise ImageError("invalid data URL: only ';base64' encoded images are supported")
        if media.lower() not in _MEDIA_TYPES:
            raise ImageError(f"unsupported image media type {media!r}: use JPEG, PNG or WebP")
        # The hash is of the base64 text: same bytes, same text, no decode needed.
        digest = hashlib.blake2b(payload.encode("ascii", "replace"), digest_size=8).digest()
        content_hash = int.from_bytes(digest, "big")
        known = self._memo.get(content_hash)
        if known is not None:
            self._memo.move_to_end(content_hash)
            return known
        info = self._decode_new(payload, content_hash)
        self._memo[content_hash] = info
        if len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
        return info

    def _decode_new(self, payload: str, content_hash: int) -> ImageInfo:
        if len(payload) * 3 // 4 > self.limits.max_bytes + 3:
            raise ImageError(f"image is larger than the limit of {self.limits.max_bytes} bytes")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageError(f"invalid base64 image data: {exc}") from None
        if not data:
            raise ImageError("empty image data")
        if len(data) > self.limits.max_bytes:
            raise ImageError(f"image is larger than the limit of {self.limits.max_bytes} bytes")
        try:
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format or ""
                width, height = image.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(f"cannot identify image data: {exc}") from None
        if fmt not in _FORMATS:
            raise ImageError(f"unsupported image format {fmt!r}: use JPEG, PNG or WebP")
        if width * height > self.limits.max_pixels:
            raise ImageError(
                f"image of {width}x{height} pixels is over the limit of "
                f"{self.limits.max_pixels} pixels"
            )
        return ImageInfo(content_hash, width, height, len(data))
