"""A real headless Chromium for the report tests, driven over the DevTools protocol.

The page is opened from a file:// URL; every console message, uncaught exception, log entry and
network request is collected, the images' natural sizes are read, and a screenshot is taken.
Chromium is found as `chromium`, `chromium-browser` or `google-chrome`; when it is absent the tests
that need it skip, unless LOADGEN_REQUIRE_CHROMIUM is set, which makes its absence a failure.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
TIMEOUT_S = 30.0


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What a page did while loading, and how it looked."""

    url: str
    title: str = ""
    images: list[tuple[int, int, bool]] = field(default_factory=list)  # natural w, h, complete
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    screenshot: bytes = b""
    text: str = ""

    @property
    def problems(self) -> list[str]:
        return [*self.console_errors, *self.exceptions, *self.log_errors]


class _Cdp:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.last_id = 0
        self.events: list[dict[str, Any]] = []

    async def _receive(self) -> dict[str, Any]:
        msg: dict[str, Any] = await self.ws.receive_json(timeout=TIMEOUT_S)
        return msg

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        ident = self.last_id
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            msg = await self._receive()
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self.events.append(msg)

    async def wait_for(self, method: str) -> None:
        if any(e.get("method") == method for e in self.events):
            return
        while True:
            msg = await self._receive()
            self.events.append(msg)
            if msg.get("method") == method:
                return


_IMAGES_JS = """
Promise.all(Array.from(document.images, i => i.decode().then(() => null, () => null)))
  .then(() => JSON.stringify(Array.from(document.images,
                                        i => [i.naturalWidth, i.naturalHeight, i.complete])))
"""


class Chromium:
    def __init__(self, executable: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="loadgen-chromium-")
        self.log = open(Path(self.profile) / "stderr.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                executable,
                *FLAGS,
                f"--user-data-dir={self.profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self.port = self._wait_port()

    def _wait_port(self) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if marker.is_file():
                first = marker.read_text().split("\n", 1)[0].strip()
                if first.isdigit():
                    return int(first)
            time.sleep(0.05)
        self.close()
        tail = (Path(self.profile) / "stderr.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"chromium did not open its DevTools port:\n{tail}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, path: Path, width: int = 1200, height: int = 1500) -> PageCheck:
        return asyncio.run(
            asyncio.wait_for(self._open(path.resolve().as_uri(), width, height), TIMEOUT_S * 2)
        )

    async def _open(self, url: str, width: int, height: int) -> PageCheck:
        base = f"http://127.0.0.1:{self.port}"
        check = PageCheck(url)
        async with aiohttp.ClientSession() as http:
            async with http.put(f"{base}/json/new?about:blank") as resp:
                target = await resp.json(content_type=None)
            try:
                async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    cdp = _Cdp(ws)
                    for domain in ("Page", "Runtime", "Log", "Network"):
                        await cdp.call(f"{domain}.enable")
                    await cdp.call(
                        "Emulation.setDeviceMetricsOverride",
                        width=width,
                        height=height,
                        deviceScaleFactor=1,
                        mobile=False,
                    )
                    await cdp.call("Page.navigate", url=url)
                    await cdp.wait_for("Page.loadEventFired")
                    images = await cdp.call(
                        "Runtime.evaluate",
                        expression=_IMAGES_JS,
                        awaitPromise=True,
                        returnByValue=True,
                    )
                    check.images = [tuple(i) for i in json.loads(images["result"]["value"])]
                    info = await cdp.call(
                        "Runtime.evaluate",
                        expression="JSON.stringify([document.title, document.body.innerText])",
                        returnByValue=True,
                    )
                    check.title, check.text = json.loads(info["result"]["value"])
                    shot = await cdp.call("Page.captureScreenshot", format="png")
                    check.screenshot = base64.b64decode(shot["data"])
                    _collect(check, cdp.events)
            finally:
                async with http.get(f"{base}/json/close/{target['id']}") as resp:
                    await resp.read()
        return check


def _collect(check: PageCheck, events: list[dict[str, Any]]) -> None:
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            check.console_errors.append(json.dumps(params.get("args", []))[:300])
        elif method == "Runtime.exceptionThrown":
            check.exceptions.append(json.dumps(params.get("exceptionDetails", {}))[:300])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            check.log_errors.append(str(params["entry"].get("text", ""))[:300])
        elif method == "Network.requestWillBeSent":
            check.requests.append(str(params.get("request", {}).get("url", "")))


def screenshot_stats(png: bytes) -> tuple[int, float]:
    """(distinct colours, share of pixels that are not near-white) of a screenshot."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20) or []
    grey = img.convert("L")
    hist = grey.histogram()
    dark = sum(hist[:240]) / (img.width * img.height)
    return len(colours), dark


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    exe = find_chromium()
    if exe is None:
        if os.environ.get("LOADGEN_REQUIRE_CHROMIUM"):
            pytest.fail("LOADGEN_REQUIRE_CHROMIUM is set but no chromium is installed")
        pytest.skip(
            "no headless Chromium (apt-get install chromium); "
            "set LOADGEN_REQUIRE_CHROMIUM=1 to make this a failure"
        )
    browser = Chromium(exe)
    try:
        yield browser
    finally:
        browser.close()


def assert_renders(check: PageCheck, min_images: int) -> None:
    """The page loaded cleanly, offline, showing its plots, and does not look blank."""
    assert check.problems == [], check.problems
    offline = [u for u in check.requests if not u.startswith(("file:", "data:"))]
    assert offline == [], offline
    assert len(check.images) >= min_images
    assert all(w > 0 and h > 0 and complete for w, h, complete in check.images), check.images
    colours, dark = screenshot_stats(check.screenshot)
    assert colours > 50, colours
    assert dark > 0.02, dark


def test_chromium_reports_a_broken_page(chromium: Chromium, tmp_path: Path) -> None:
    """The checker itself: a console error, a network request and a broken image are all seen."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<html><body><p>text</p><img src='missing.png'>"
        "<script>console.error('boom')</script></body></html>"
    )
    check = chromium.open(page)
    assert any("boom" in m for m in check.console_errors)
    assert any(u.endswith("missing.png") for u in check.requests)
    assert check.images and check.images[0][0] == 0
    with pytest.raises(AssertionError):
        assert_renders(check, 1)
