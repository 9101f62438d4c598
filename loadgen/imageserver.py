"""`--serve-images`: a small static file server for a folder of images, on the loadgen host, so
that requests can carry http:// image URLs and the server's own fetch path is load-tested too.

It serves only the image files the folder held when it started (by name, from a fixed list: no
path from a request ever reaches the file system), answers /health, and counts what it served
(GET /stats), so a run can tell that the server did fetch. It runs as a child process, off the
client's event loop, and dies with loadgen.

    python -m loadgen.imageserver FOLDER [--host 127.0.0.1] [--port 0] [--public-host NAME]

The target server must be allowed to fetch from it: vLLM fetches http(s) image URLs itself
(`--allowed-media-domains` limits the hosts; `VLLM_IMAGE_FETCH_TIMEOUT` bounds each fetch).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from loadgen.childserver import ChildServer, serve_until_signalled
from loadgen.datasets.images import list_folder
from loadgen.errors import LoadgenError

LISTENING_PREFIX = "loadgen-images listening on "
_MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def image_path(name: str) -> str:
    """The URL path of one file of the folder."""
    return "/images/" + quote(name, safe="")


class ImageFiles:
    """The folder's image files by name, and how often each was fetched."""

    def __init__(self, folder: str | Path) -> None:
        files, _skipped = list_folder(folder, skip_bad=True)
        self.files = {p.name: p for p in files}
        self.served = 0
        self.refused = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/stats", self._stats)
        app.router.add_get("/images/{name}", self._image)
        return app

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"files": len(self.files), "served": self.served, "refused": self.refused}
        )

    async def _image(self, request: web.Request) -> web.StreamResponse:
        path = self.files.get(request.match_info["name"])
        if path is None:
            self.refused += 1
            return web.Response(status=404, text="no such image\n")
        self.served += 1
        headers = {"Content-Type": _MEDIA[path.suffix.lower()], "Cache-Control": "no-store"}
        return web.FileResponse(path, headers=headers)


async def serve(folder: str, host: str, port: int, public_host: str = "") -> None:
    """Serve until SIGTERM/SIGINT; the first stdout line is LISTENING_PREFIX and the base URL,
    named by `public_host` (how the target reaches this host) when given, else by `host`."""
    files = ImageFiles(folder)
    await serve_until_signalled(files.app(), host, port, LISTENING_PREFIX, public_host=public_host)


class ImageServerProcess(ChildServer):
    """The image server as a child process; `base_url` is what requests name images by."""

    listening_prefix = LISTENING_PREFIX
    what = "the image server"

    def __init__(
        self, folder: str, host: str = "127.0.0.1", port: int = 0, public_host: str = ""
    ) -> None:
        extra = ["--public-host", public_host] if public_host else []
        super().__init__([folder, *extra], host=host, port=port)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "loadgen.imageserver", *self.args,
            "--host", self.host, "--port", str(self.port),
        ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen.imageserver", description=__doc__)
    parser.add_argument("folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--public-host", default="", help="the host name or address the target reaches us by"
    )
    args = parser.parse_args(argv)
    from loadgen import lifeline

    lifeline.die_with_parent()
    try:
        asyncio.run(serve(args.folder, args.host, args.port, args.public_host))
    except LoadgenError as exc:
        print(f"loadgen-images: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
