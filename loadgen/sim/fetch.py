"""http(s) image URLs, fetched as vLLM fetches them, from loopback hosts only (a test's image
server on the same machine), within a size and time bound: each is replaced in the request by
the data URL of what was fetched, so the rest of the simulator sees data URLs only."""

from __future__ import annotations

import base64
import ipaddress
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from loadgen.sim.images import ImageError

FETCH_TIMEOUT: Final = 10.0  # seconds a fetch may take (vLLM: VLLM_IMAGE_FETCH_TIMEOUT)
_MEDIA: Final = ("image/jpeg", "image/png", "image/webp")


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class ImageFetcher:
    def __init__(self, max_bytes: int, timeout: float = FETCH_TIMEOUT) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.fetched = 0
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def inline(self, body: Any) -> None:
        """Replace every http(s) image URL of a chat body by the data URL of its bytes."""
        messages = body.get("messages") if isinstance(body, dict) else None
        for message in messages if isinstance(messages, list) else ():
            content = message.get("content") if isinstance(message, dict) else None
            for part in content if isinstance(content, list) else ():
                holder = part.get("image_url") if isinstance(part, dict) else None
                url = holder.get("url") if isinstance(holder, dict) else None
                if isinstance(url, str) and url.startswith(("http://", "https://")):
                    assert isinstance(holder, dict)
                    holder["url"] = await self._fetch(url)

    async def _fetch(self, url: str) -> str:
        if not _loopback(urlsplit(url).hostname):
            raise ImageError(f"the simulator fetches image URLs from loopback hosts only: {url}")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(self.timeout))
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise ImageError(f"fetching {url}: HTTP {response.status}")
                media = response.content_type
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ImageError(
                            f"image at {url} is larger than the limit of {self.max_bytes} bytes"
                        )
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ImageError(f"fetching {url}: {type(exc).__name__}: {exc}") from None
        data = b"".join(chunks)
        self.fetched += 1
        media = media if media in _MEDIA else "image/jpeg"
        return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"
