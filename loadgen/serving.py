"""A run's image server (`--serve-images`, `[workload.images] serve = true`): started before the
run for the scenario's folder, named in the scenario as its `url_base` (so every shard's requests
carry `http://HOST:PORT/images/NAME`), asked at the end how many fetches it answered, and
stopped with the run, like the simulator."""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from loadgen.config import Scenario

Say = Callable[[str], None]
LOG_NAME = "imageserver.log"
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def bind_host(public: str) -> str:
    """Where the server listens: loopback unless the target reaches this host by another name
    (then every interface, of the name's address family)."""
    if not public or public in _LOOPBACK or public.startswith("127."):
        return "::1" if public == "::1" else "127.0.0.1"
    # The user named a host other machines reach this one by: every interface.
    return "::" if ":" in public else "0.0.0.0"


@asynccontextmanager
async def serving_images(scenario: Scenario, run_dir: Path, say: Say) -> AsyncIterator[Scenario]:
    """The scenario as the run sends it: unchanged, or with its folder served and named by URL."""
    images = scenario.workload.images
    if not images.serve:
        yield scenario
        return
    from loadgen.imageserver import ImageServerProcess

    host = bind_host(images.serve_host)
    server = ImageServerProcess(images.folder, host=host, public_host=images.serve_host)
    server.log_path = str(run_dir / LOG_NAME)
    base = await server.astart()
    try:
        url_base = f"{base}/images/"
        say(f"serving the images of {images.folder} at {url_base}: requests carry their URLs")
        served = dataclasses.replace(images, url_base=url_base)
        workload = dataclasses.replace(scenario.workload, images=served)
        yield dataclasses.replace(scenario, workload=workload)
        local = "[::1]" if host == "::1" else "127.0.0.1"
        port = urllib.parse.urlsplit(base).port
        stats = await anyio.to_thread.run_sync(_stats, f"http://{local}:{port}")
        if stats is not None:
            say(
                f"image server: answered {stats.get('served', 0)} image fetches "
                f"({stats.get('refused', 0)} refused)"
            )
    finally:
        await server.astop()


def _stats(base_url: str) -> dict[str, Any] | None:
    try:
        with _OPENER.open(base_url + "/stats", timeout=5) as r:
            doc = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
