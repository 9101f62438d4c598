"""Every fault, by header and by flag, and every kind of bad input, against the real process."""

from __future__ import annotations

import base64
import io
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image
from sim_helpers import TIMEOUT, chat_body, chunks, image_url, sse_events, stream_chat

from loadgen.sim.process import SimulatorProcess


def read_stream(
    base_url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, bytes, Exception | None, list[float]]:
    """Status, the bytes received, the error that ended the read (if any), arrival times."""
    data = b""
    arrivals: list[float] = []
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as client:
        try:
            with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                for part in r.iter_raw():
                    data += part
                    arrivals.append(time.monotonic())
                return r.status_code, data, None, arrivals
        except httpx.HTTPError as exc:
            return 200, data, exc, arrivals


def assert_error_body(response: httpx.Response, status: int, err_type: str) -> None:
    assert response.status_code == status
    doc = response.json()
    assert list(doc) == ["error"]
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["code"] == status and doc["error"]["type"] == err_type
    assert doc["error"]["message"]


def post(base_url: str, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(
        base_url + "/v1/chat/completions", content=content, headers=hdrs, timeout=TIMEOUT
    )


# -- faults by header -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "status", "err_type"),
    [("http_429", 429, "TooManyRequestsError"), ("http_500", 500, "InternalServerError"),
     ("http_503", 503, "ServiceUnavailableError")],
)  # fmt: skip
def test_http_error_by_header(sim: SimulatorProcess, item: str, status: int, err_type: str) -> None:
    response = post(sim.base_url, chat_body(max_tokens=2), {"X-Sim-Fault": item})
    assert_error_body(response, status, err_type)
    if status in (429, 503):
        assert response.headers["Retry-After"] == "1"


def test_drop_mid_stream_by_header(sim: SimulatorProcess) -> None:
    status, data, error, _ = read_stream(
        sim.base_url, chat_body(max_tokens=20), {"X-Sim-Fault": "drop_after=3"}
    )
    assert status == 200 and isinstance(error, httpx.RemoteProtocolError | httpx.ReadError)
    events = sse_events(data)
    assert len(events) == 3 and "[DONE]" not in events


def test_error_object_inside_200_stream_by_header(sim: SimulatorProcess) -> None:
    status, events = stream_chat(
        sim.base_url, chat_body(max_tokens=20), {"X-Sim-Fault": "stream_error_after=2"}
    )
    assert status == 200
    assert len(events) == 4 and events[-1] == "[DONE]"
    error = orjson.loads(events[2])
    assert list(error) == ["error"]
    assert error["error"]["code"] == 500 and error["error"]["type"] == "InternalServerError"
    assert set(error["error"]) == {"message", "type", "param", "code"}


def test_malformed_line_by_header(sim: SimulatorProcess) -> None:
    status, events = stream_chat(
        sim.base_url, chat_body(max_tokens=5), {"X-Sim-Fault": "malformed_after=1"}
    )
    assert status == 200 and events[-1] == "[DONE]"
    bad = []
    for e in events[:-1]:
        try:
            orjson.loads(e)
        except orjson.JSONDecodeError:
            bad.append(e)
    assert len(bad) == 1 and events.index(bad[0]) == 1
    good = [orjson.loads(e) for e in events[:-1] if e not in bad]
    assert good[-1]["usage"]["completion_tokens"] == 5


def test_missing_usage_by_header(sim: SimulatorProcess) -> None:
    body = chat_body(max_tokens=4, continuous=True)
    status, events = stream_chat(sim.base_url, body, {"X-Sim-Fault": "no_usage"})
    assert status == 200 and events[-1] == "[DONE]"
    assert all("usage" not in c for c in chunks(events))


def test_slow_headers_by_header(sim: SimulatorProcess) -> None:
    started = time.monotonic()
    response = post(sim.base_url, chat_body(max_tokens=2), {"X-Sim-Fault": "slow_headers=0.4"})
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.4  # a lower bound: noise can only add to it


def test_stall_by_header_pauses_the_whole_engine(sim: SimulatorProcess) -> None:
    # A long stream is running when another request asks for a 1 s stall: the long stream's
    # tokens stop for that second too.
    result: dict[str, Any] = {}

    def long_stream() -> None:
        result["r"] = read_stream(sim.base_url, chat_body(max_tokens=600))

    thread = threading.Thread(target=long_stream)
    thread.start()
    time.sleep(0.2)
    response = post(sim.base_url, chat_body(max_tokens=1), {"X-Sim-Fault": "stall=1"})
    thread.join(30)
    assert response.status_code == 200
    status, data, error, arrivals = result["r"]
    assert status == 200 and error is None and sse_events(data)[-1] == "[DONE]"
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) >= 0.9


def test_bad_fault_header_is_a_400(sim: SimulatorProcess) -> None:
    assert_error_body(
        post(sim.base_url, chat_body(), {"X-Sim-Fault": "explode"}), 400, "BadRequestError"
    )


# -- faults by flag ---------------------------------------------------------------------------


def _check_503(base: str) -> None:
    assert_error_body(post(base, chat_body(max_tokens=2)), 503, "ServiceUnavailableError")


def _check_drop_and_slow_headers(base: str) -> None:
    started = time.monotonic()
    _status, data, error, _ = read_stream(base, chat_body(max_tokens=10))
    assert time.monotonic() - started >= 0.3
    assert error is not None and len(sse_events(data)) == 1


def _check_missing_usage_and_malformed(base: str) -> None:
    status, events = stream_chat(base, chat_body(max_tokens=3))
    assert status == 200 and events[-1] == "[DONE]"
    parsed = []
    malformed = 0
    for e in events[:-1]:
        try:
            parsed.append(orjson.loads(e))
        except orjson.JSONDecodeError:
            malformed += 1
    assert malformed == 1 and all("usage" not in c for c in parsed)


def _check_stream_error(base: str) -> None:
    status, events = stream_chat(base, chat_body(max_tokens=10))
    assert status == 200 and "error" in orjson.loads(events[-2]) and events[-1] == "[DONE]"


def _check_global_stall(base: str) -> None:
    # Stalls of 0.5 s every 1 s: a stream of ~2 s sees at least one pause.
    _status, data, error, arrivals = read_stream(base, chat_body(max_tokens=1500))
    assert error is None and sse_events(data)[-1] == "[DONE]"
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) >= 0.4


@pytest.mark.parametrize(
    ("flags", "check"),
    [
        (["--fault-503-rate", "1"], _check_503),
        (["--fault-drop-rate", "1", "--fault-drop-after", "1", "--fault-slow-headers", "0.3"],
         _check_drop_and_slow_headers),
        (["--fault-missing-usage-rate", "1", "--fault-malformed-rate", "1",
          "--fault-malformed-after", "1"], _check_missing_usage_and_malformed),
        (["--fault-stream-error-rate", "1", "--fault-stream-error-after", "2"], _check_stream_error),
        (["--fault-stall", "0.5", "--fault-stall-every", "1"], _check_global_stall),
    ],
    ids=["http-503", "drop+slow-headers", "no-usage+malformed", "stream-error", "global-stall"],
)  # fmt: skip
def test_faults_by_flag(sim_server: Callable[..., SimulatorProcess], flags: list[str],
                        check: Callable[[str], None]) -> None:  # fmt: skip
    server = sim_server(*flags)
    check(server.base_url)
    assert server.poll() is None


# -- bad input --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_sim() -> Iterator[SimulatorProcess]:
    args = ["--profile", "fast", "--max-image-pixels", "1000000", "--max-image-bytes", "300000"]
    with SimulatorProcess(args) as process:
        yield process


def _png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _noise_jpeg(side: int) -> str:
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "JPEG", quality=95)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _image_body(url: str) -> dict[str, Any]:
    return chat_body([url], max_tokens=2)


BAD_INPUTS: list[tuple[str, object]] = [
    ("malformed-json", b'{"messages": [}'),
    ("not-an-object", b"[1, 2]"),
    ("missing-messages", {"max_tokens": 2}),
    ("empty-messages", {"messages": []}),
    ("messages-not-list", {"messages": "hi"}),
    ("bad-part-type", {"messages": [{"role": "user", "content": [{"type": "video"}]}]}),
    ("http-image-url", _image_body("https://example.invalid/cat.jpg")),
    ("not-base64", _image_body("data:image/jpeg;base64,@@@not base64@@@")),
    ("not-an-image", _image_body("data:image/png;base64," + base64.b64encode(b"hello" * 50).decode())),
    ("unsupported-media", _image_body("data:image/gif;base64,R0lGODlhAQABAAAAACw=")),
    ("too-many-pixels", _image_body(_png(1100, 1000))),
    ("too-many-bytes", _image_body(_noise_jpeg(800))),
    ("min-over-max", chat_body(max_tokens=5, min_tokens=6)),
    ("min-null", chat_body(max_tokens=5, min_tokens=None)),
    ("max-zero", chat_body(max_tokens=0)),
    ("max-not-int", chat_body(max_tokens="ten")),
    ("n-2", chat_body(max_tokens=2, n=2)),
    ("stream-options-without-stream", {**chat_body(max_tokens=2, stream=False),
                                       "stream_options": {"include_usage": True}}),
    ("over-context", chat_body(max_tokens=10**7)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body"), BAD_INPUTS, ids=[n for n, _ in BAD_INPUTS])
def test_bad_input_is_a_400_in_vllms_shape(
    strict_sim: SimulatorProcess, name: str, body: object
) -> None:
    assert_error_body(post(strict_sim.base_url, body), 400, "BadRequestError")


def test_server_is_fine_after_bad_input(strict_sim: SimulatorProcess) -> None:
    for _, body in BAD_INPUTS:
        post(strict_sim.base_url, body)
    assert httpx.get(strict_sim.base_url + "/health", timeout=TIMEOUT).status_code == 200
    status, events = stream_chat(strict_sim.base_url, chat_body([image_url(seed=1)], max_tokens=3))
    assert status == 200 and chunks(events)[-1]["usage"]["completion_tokens"] == 3
    assert strict_sim.poll() is None
