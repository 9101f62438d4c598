"""What a misbehaving server sends is a counted outcome of that request, the same with every
transport: wrong-shaped JSON, bytes that are not HTTP, silence, a connection closed mid-body, an
enormous error body, a stream that never ends. Servers here are tiny scripted asyncio servers on
127.0.0.1, run in a thread so that worker processes reach them too."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType

import anyio
import orjson
import pytest

from loadgen.client import ClientSettings, TransportName, make_transport
from loadgen.orchestrator import TERMINATE_GRACE_S, RunOptions, RunResult, run_scenario
from loadgen.records import Outcome, RequestRecord
from loadgen.results.files import read_json, read_requests
from loadgen.results.schema import to_builtins
from loadgen.scenario import Overrides, load_scenario
from tests.conftest import start_loadgen
from tests.test_client_native import sse
from tests.test_run_e2e import _wait_lines

TRANSPORTS: list[TransportName] = ["native", "aiohttp", "httpx"]
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
MODELS = orjson.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]})


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def stream_head(writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    await writer.drain()


class Server:
    """A scripted HTTP server in its own thread: GET /v1/models answers, a POST runs the script
    (which returns whether the connection may serve another request), anything else is a 404."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.posts = 0
        self.written = 0  # bytes a script wrote, where it counts them
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.url = ""

    def __enter__(self) -> Server:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        ).result(10)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ", 2)[:2]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                if method == b"GET" and path.endswith(b"/v1/models"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(MODELS))
                    writer.write(MODELS)
                elif method == b"POST":
                    self.posts += 1
                    if not await self.script(reader, writer):
                        break
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


# ---- the faults ---------------------------------------------------------------------------------
WRONG_SHAPES = [
    b'{"choices": [], "usage": 5}',
    b'{"choices": 3}',
    b'{"choices": [{"index": 0, "delta": [], "finish_reason": null}]}',
    b'{"choices": [{"index": 0, "delta": {"content": 7}, "finish_reason": null}]}',
    b'{"choices": [], "usage": {"completion_tokens": 1, "prompt_tokens_details": 2}}',
    b'{"choices": [{"index": 0, "delta": {}, "finish_reason": 9}]}',
]


def wrong_shape_script(server_: list[Server]) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        line = WRONG_SHAPES[server_[0].posts % len(WRONG_SHAPES)]
        await stream_head(writer)
        body = sse(3).replace(b"data: [DONE]", b"data: " + line + b"\n\ndata: [DONE]")
        writer.write(chunked(body) + b"0\r\n\r\n")
        return True

    return script


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02\xff garbage, not HTTP\r\n\r\nmore bytes")
    await writer.drain()
    return False


async def garbage_kept_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 no HTTP here")
    await writer.drain()
    await asyncio.sleep(3600)
    return False


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(3600)
    return False


async def closed_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    return False


async def closed_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    await stream_head(writer)
    writer.write(chunked(sse(8)[:300]))
    await writer.drain()
    return False


def enormous_error(server_: list[Server]) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\n")
        piece = b"E" * (1024 * 1024)
        with contextlib.suppress(ConnectionError):
            for _ in range(256):  # 256 MiB unless the client stops reading
                writer.write(piece)
                await writer.drain()
                server_[0].written += len(piece)
        return False

    return script


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    await stream_head(writer)
    for k in itertools.count(1):  # never a finish reason, never [DONE]
        choice = {"index": 0, "delta": {"content": "w"}, "finish_reason": None}
        usage = {"prompt_tokens": 5, "completion_tokens": k, "total_tokens": 5 + k}
        event = orjson.dumps({"id": "c", "choices": [choice], "usage": usage})
        writer.write(chunked(b"data: " + event + b"\n\n"))
        await writer.drain()
        await asyncio.sleep(0.01)
    return False


@contextlib.contextmanager
def serving(make: Callable[[list[Server]], Script]) -> Iterator[Server]:
    box: list[Server] = []
    with Server(make(box)) as server:
        box.append(server)
        yield server


async def send(transport_name: TransportName, url: str, **timeouts: float) -> RequestRecord:
    settings = ClientSettings(
        pool_size=0,
        connect_timeout=5.0,
        read_timeout=timeouts.get("read_timeout", 10.0),
        request_timeout=timeouts.get("request_timeout"),
    )
    transport = make_transport(transport_name, settings)
    rec = RequestRecord(index=0, phase="p", shard=0, target="t", intended=0.0, sent=0.0, end=0.0)
    try:
        with anyio.fail_after(30):  # a hang fails the test instead of stalling the suite
            await transport.send(
                rec, url + "/v1/chat/completions", b'{"x": 1}', time.perf_counter()
            )
    finally:
        await transport.aclose()
    return rec


# ---- one outcome per fault, whatever the transport ----------------------------------------------
FAULTS: list[tuple[str, Callable[[list[Server]], Script], Outcome, dict[str, float]]] = [
    ("garbage", lambda _: garbage, Outcome.MALFORMED, {}),
    ("garbage, kept open", lambda _: garbage_kept_open, Outcome.MALFORMED, {}),
    ("never answers", lambda _: silent, Outcome.TIMEOUT, {"read_timeout": 0.5}),
    ("closed before answering", lambda _: closed_at_once, Outcome.DROPPED, {}),
    ("closed mid-body", lambda _: closed_mid_body, Outcome.DROPPED, {}),
    ("enormous error body", enormous_error, Outcome.HTTP_5XX, {}),
    ("never ends", lambda _: endless, Outcome.TIMEOUT, {"request_timeout": 1.0}),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("make", "outcome", "timeouts"),
    [pytest.param(*f[1:], id=f[0]) for f in FAULTS],
)
def test_one_outcome_per_fault_whatever_the_transport(
    transport: TransportName,
    make: Callable[[list[Server]], Script],
    outcome: Outcome,
    timeouts: dict[str, float],
) -> None:
    with serving(make) as server:
        rec = anyio.run(lambda: send(transport, server.url, **timeouts))
        written = server.written
    assert rec.outcome is outcome, rec.error
    assert rec.error
    if outcome is Outcome.HTTP_5XX:  # the client read what it needed and let the rest go
        assert written < 128 * 1024 * 1024
        assert len(rec.error) <= 400
    if "request_timeout" in timeouts:
        assert "request_timeout" in rec.error


# ---- whole runs ---------------------------------------------------------------------------------
SCENARIO = """
name = "hostile"
[target]
scrape_metrics = false
{target}
[workload]
max_tokens = 4
[workload.images]
width = 32
height = 32
[load]
mode = "closed"
concurrency = 2
{load}
"""


def run(
    tmp_path: Path, url: str, transport: TransportName, workers: int, target: str, load: str
) -> RunResult:
    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO.format(target=target, load=load))
    scenario = load_scenario(path, Overrides(urls=(url,), model="m"))
    options = RunOptions(
        run_dir=str(tmp_path / "run"),
        transport=transport,
        handle_signals=False,
        workers=workers,
    )

    async def bounded() -> RunResult:
        with anyio.fail_after(60):
            return await run_scenario(scenario, options, lambda _: None)

    return anyio.run(bounded)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wrong_shaped_json_is_counted_and_the_run_goes_on(
    tmp_path: Path, transport: TransportName, workers: int
) -> None:
    with serving(wrong_shape_script) as server:
        result = run(tmp_path, server.url, transport, workers, "", "requests = 12")
    assert result.status == "completed"
    records = read_requests(result.run_dir / "requests.jsonl")
    assert len(records) == 12
    assert all(r.outcome is Outcome.MALFORMED for r in records)
    for r in records:
        assert r.error is not None and any(repr(s[:12])[2:-1] in r.error for s in WRONG_SHAPES)
    assert to_builtins(result.summary)["phases"]["main"]["outcomes"]["malformed_stream"] == 12


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_endless_streams_end_at_request_timeout(tmp_path: Path, transport: TransportName) -> None:
    with serving(lambda _: endless) as server:
        result = run(tmp_path, server.url, transport, 1, "request_timeout = 1.0", "duration = 0.5")
    assert result.status == "completed"
    records = read_requests(result.run_dir / "requests.jsonl")
    assert len(records) == 2  # one per stream, each cut at its request_timeout
    assert all(r.outcome is Outcome.TIMEOUT for r in records)
    assert all(r.error and "request_timeout" in r.error for r in records)
    assert all(r.e2e > 0.9 for r in records)
    assert all(r.chunk_tokens for r in records)  # what streamed before the cut is kept


def test_one_ctrl_c_ends_a_run_of_endless_streams_within_request_timeout(tmp_path: Path) -> None:
    with serving(lambda _: endless) as server:
        path = tmp_path / "scenario.toml"
        path.write_text(SCENARIO.format(target="request_timeout = 2.0", load="duration = 600"))
        run_dir = tmp_path / "run"
        proc = start_loadgen(
            "run", str(path), "--url", server.url, "--model", "m", "--run-dir", str(run_dir),
            "--no-progress", "--workers", "2", "--no-report",
        )  # fmt: skip
        _wait_lines(run_dir / "requests.jsonl", 2)  # the first requests timed out
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)  # without a bound: never
    assert proc.returncode == 130, err.decode()
    summary = read_json(run_dir / "summary.json")
    records = read_requests(run_dir / "requests.jsonl")
    assert summary["phases"]["main"]["requests"]["total"] == len(records) >= 4
    assert all(r.outcome is Outcome.TIMEOUT for r in records)


@pytest.mark.parametrize("workers", [1, 2])
def test_one_sigterm_ends_endless_streams_without_any_timeout_set(
    tmp_path: Path, workers: int
) -> None:
    """No request_timeout, no drain_timeout: after one SIGTERM the requests in flight get
    TERMINATE_GRACE_S, then they are cancelled and everything is written (status 143)."""
    with serving(lambda _: endless) as server:
        path = tmp_path / "scenario.toml"
        path.write_text(SCENARIO.format(target="", load="duration = 600"))
        run_dir = tmp_path / "run"
        proc = start_loadgen(
            "run", str(path), "--url", server.url, "--model", "m", "--run-dir", str(run_dir),
            "--no-progress", "--workers", str(workers), "--no-report",
        )  # fmt: skip
        _wait_posts(server, 2)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)  # without the grace: never
    assert proc.returncode == 143, err.decode()
    assert f"at most {TERMINATE_GRACE_S:g} s" in err.decode()
    summary = read_json(run_dir / "summary.json")
    records = read_requests(run_dir / "requests.jsonl")
    assert summary["status"] == "interrupted"
    assert summary["phases"]["main"]["requests"]["total"] == len(records) == 2
    assert all(r.outcome is Outcome.CANCELLED for r in records)
    assert all(r.chunk_tokens for r in records)  # what streamed before the cut is kept


def _wait_posts(server: Server, n: int, timeout: float = 30.0) -> None:
    """Until the server has taken n requests (the streams are open and streaming)."""
    deadline = time.monotonic() + timeout
    while server.posts < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"the server took {server.posts} requests, not {n}")
        time.sleep(0.05)
    time.sleep(0.5)
