"""The native HTTP/1.1 transport: the same records as aiohttp's against the simulator, every way a
response can be framed or split, and every failure mapped to its outcome. Servers here are tiny
scripted asyncio servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from time import perf_counter
from typing import TypeVar

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.client import (
    AiohttpTransport,
    ClientSettings,
    NativeTransport,
    Transport,
    TransportName,
    _Exchange,
    make_transport,
)
from loadgen.records import Outcome, RequestRecord
from loadgen.results.schema import to_builtins
from loadgen.sim.process import SimulatorProcess
from loadgen.stream import StreamParser

SETTINGS = ClientSettings(pool_size=0, connect_timeout=5.0, read_timeout=10.0)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
T = TypeVar("T")


def record() -> RequestRecord:
    return RequestRecord(index=0, phase="p", shard=0, target="t", intended=0.0, sent=0.0, end=0.0)


def sse(n: int, prompt: int = 7) -> bytes:
    """A vLLM-shaped stream of n tokens with continuous usage, as SSE bytes."""

    def event(choices: list[object], k: int) -> bytes:
        usage = {"prompt_tokens": prompt, "total_tokens": prompt + k, "completion_tokens": k}
        return b"data: " + orjson.dumps({"id": "c", "choices": choices, "usage": usage}) + b"\n\n"

    out = [event([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}], 0)]
    for k in range(1, n + 1):
        finish = "length" if k == n else None
        out.append(
            event([{"index": 0, "delta": {"content": f" w{k}"}, "finish_reason": finish}], k)
        )
    out.append(event([], n))
    return b"".join(out) + b"data: [DONE]\n\n"


def chunked(body: bytes, size: int = 97, extension: bytes = b"") -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in parts)
    return framed + b"0\r\n\r\n"


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat/completions"


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(bounded())


async def send_once(transport: Transport, url: str, body: bytes = b'{"x":1}') -> RequestRecord:
    rec = record()
    await transport.send(rec, url, body, perf_counter())
    return rec


# ---- against a real server: the simulator -------------------------------------------------------
def test_same_record_as_the_aiohttp_transport(sim: SimulatorProcess) -> None:
    body = orjson.dumps(
        {
            "model": "sim-vlm",
            "messages": [{"role": "user", "content": "Describe this image."}],
            "max_tokens": 24,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
    )
    url = sim.base_url + "/v1/chat/completions"

    async def main() -> list[RequestRecord]:
        out = []
        for transport in (NativeTransport(SETTINGS), AiohttpTransport(SETTINGS)):
            try:
                out.append(await send_once(transport, url, body))
            finally:
                await transport.aclose()
        return out

    native, reference = run(main())
    assert native.outcome is reference.outcome is Outcome.OK
    assert native.status == reference.status == 200
    assert native.completion_tokens == reference.completion_tokens == 24
    assert native.prompt_tokens == reference.prompt_tokens
    assert sum(native.chunk_tokens) == sum(reference.chunk_tokens) == 24
    assert native.finish_reason == reference.finish_reason == "length"
    assert native.headers_at is not None and native.first_token is not None
    assert native.sent <= native.headers_at <= native.first_token <= native.end


@pytest.mark.parametrize("name", ["native", "aiohttp", "httpx"])
def test_waiting_for_a_pool_connection_is_before_the_send_time(
    sim: SimulatorProcess, name: TransportName
) -> None:
    """A pool of one connection and two requests at once: the second waits for the first to
    end, and that wait is before its `sent` (schedule lag), never in its TTFT or E2E."""
    body = orjson.dumps(
        {
            "model": "sim-vlm",
            "messages": [{"role": "user", "content": "Describe this image."}],
            "max_tokens": 48,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
    )
    url = sim.base_url + "/v1/chat/completions"
    transport = make_transport(name, dataclasses.replace(SETTINGS, pool_size=1))

    async def main() -> list[RequestRecord]:
        origin = perf_counter()
        recs = [record(), record()]
        try:
            await asyncio.gather(*(transport.send(r, url, body, origin) for r in recs))
        finally:
            await transport.aclose()
        return sorted(recs, key=lambda r: r.sent)

    first, second = run(main())
    assert first.outcome is second.outcome is Outcome.OK
    assert second.sent >= first.end - 0.005  # it waited for the only connection ...
    assert second.e2e < 0.75 * (second.end - first.sent)  # ... and the wait is not its latency
    assert second.ttft is not None and second.ttft < 0.5 * first.e2e


# ---- the response parser, fed any split of the bytes ------------------------------------------
class _NoConnection:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


def exchange_of(
    parts: list[bytes], parser: StreamParser | None = None
) -> tuple[_Exchange, StreamParser]:
    """An exchange fed `parts` (the i-th read at time i), then the connection's end."""

    async def main(parser: StreamParser) -> tuple[_Exchange, StreamParser]:
        ex = _Exchange(_NoConnection(), parser, 0.0)  # type: ignore[arg-type]
        for i, p in enumerate(parts):
            ex.feed(p, float(i))
        ex.eof(99.0)
        await asyncio.sleep(0)
        return ex, parser

    return asyncio.run(main(parser or StreamParser()))


def framings(body: bytes) -> list[bytes]:
    return [
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, 97),
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, 1000, b";a=b"),
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body)[:-2] + b"X-T: 1\r\n\r\n",
        OK_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body,
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        + OK_HEAD
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + chunked(body),
        b"HTTP/1.0 200 OK\r\n\r\n" + body,  # until the server closes
    ]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5), st.lists(st.integers(1, 4000), max_size=12))
def test_any_framing_and_split_of_the_response_gives_the_same_tokens(
    which: int, cuts: list[int]
) -> None:
    body = sse(9)
    data = framings(body)[which]
    points = sorted({c % len(data) for c in cuts} - {0})
    parts = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    ex, parser = exchange_of(parts)
    assert ex.finished and ex.status == 200
    rec = record()
    parser.close(99.0)
    parser.fill(rec)
    assert rec.outcome is Outcome.OK
    assert rec.completion_tokens == sum(rec.chunk_tokens) == 9
    assert ex.keep_alive is (which < 5)  # HTTP/1.0 without keep-alive: not reusable


def test_malformed_responses() -> None:
    for data, what in [
        (b"SPDY/3 200 OK\r\n\r\n", "bad HTTP response"),
        (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", "bad chunk size"),
        (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXY", "no CRLF after a chunk"),
        (OK_HEAD + b"Content-Length: -4\r\n\r\n", "Content-Length"),
    ]:
        ex, _ = exchange_of([data])
        assert ex.done.done()
        failure = ex.done.exception()
        assert failure is not None and what in str(failure), (data, failure)


# ---- a whole request against scripted servers ------------------------------------------------------
def test_request_bytes_keep_alive_and_pool_reuse() -> None:
    seen: list[bytes] = []
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                seen.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                break
            writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(sse(3)))
            await writer.drain()
        writer.close()

    async def main() -> list[RequestRecord]:
        server, url = await serve(handler)
        transport = make_transport("native", SETTINGS)
        try:
            return [await send_once(transport, url, b'{"n":%d}' % i) for i in range(5)]
        finally:
            await transport.aclose()
            server.close()

    records = run(main())
    assert [r.outcome for r in records] == [Outcome.OK] * 5
    assert connections == 1  # one kept-alive connection for all five
    head, body = seen[0].split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert any(line.startswith(b"Host: 127.0.0.1:") for line in lines)
    assert b"Content-Length: 7" in lines and b"Accept: text/event-stream" in lines
    assert body == b'{"n":0}' and seen[4].endswith(b'{"n":4}')


def test_connection_close_and_pool_limit() -> None:
    open_now = peak = connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, peak, connections
        connections += 1
        open_now += 1
        peak = max(peak, open_now)
        await read_request(reader)
        await asyncio.sleep(0.05)
        body = sse(2)
        writer.write(OK_HEAD + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()
        writer.close()
        open_now -= 1

    async def main() -> list[RequestRecord]:
        server, url = await serve(handler)
        transport = NativeTransport(
            ClientSettings(pool_size=2, connect_timeout=5.0, read_timeout=10.0)
        )
        try:
            return list(await asyncio.gather(*(send_once(transport, url) for _ in range(6))))
        finally:
            await transport.aclose()
            server.close()

    records = run(main())
    assert all(r.outcome is Outcome.OK for r in records)
    assert connections == 6  # "Connection: close": never reused
    assert peak <= 2  # the pool's limit


class _Follow:
    """A closed-loop stream as the transport sees it: `count` more requests, then none."""

    def __init__(self, count: int, url: str) -> None:
        self.left = count
        self.url = url
        self.sent: list[RequestRecord] = []
        self.task_resumed = False
        self.asked_before_resume: list[bool] = []
        self.on_ask: Callable[[], None] | None = None

    def next_request(self, url: str) -> tuple[RequestRecord, bytes] | None:
        assert url == self.url
        self.asked_before_resume.append(not self.task_resumed)
        if self.on_ask is not None:
            self.on_ask()
        if not self.left:
            return None
        self.left -= 1
        rec = record()
        rec.index = len(self.sent) + 1
        self.sent.append(rec)
        return rec, b'{"n":%d}' % rec.index


def keep_alive_server(tokens: int, stall_from: int = 0) -> tuple[Handler, list[int]]:
    """Answers every request of a connection in turn; from request `stall_from` (1-based, 0:
    never) it sends the head only and waits. Returns the handler and [connections, requests]."""
    counts = [0, 0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts[0] += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await read_request(reader)
                counts[1] += 1
                if stall_from and counts[1] >= stall_from:
                    writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
                    await writer.drain()
                    await reader.read()
                    break
                writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(sse(tokens)))
                await writer.drain()
        writer.close()

    return handler, counts


def test_a_streams_next_request_goes_out_from_the_io_callback() -> None:
    """With `follow`, the next request is written the moment the response ends, before the
    waiting task wakes up, on the same connection and under the same pool slot; the task then
    takes that request over with `send()`."""
    one_slot = ClientSettings(pool_size=1, connect_timeout=5.0, read_timeout=10.0)

    async def main() -> tuple[list[RequestRecord], _Follow, list[int], RequestRecord]:
        handler, counts = keep_alive_server(3)
        server, url = await serve(handler)
        transport = NativeTransport(one_slot)
        follow = _Follow(2, url)
        origin = perf_counter()
        try:
            first = record()
            records = [first]
            await transport.send(first, url, b'{"n":0}', origin, follow)
            follow.task_resumed = True
            while len(records) <= len(follow.sent):
                rec = follow.sent[len(records) - 1]
                follow.task_resumed = False
                records.append(rec)
                await transport.send(rec, url, b"unused: already sent", origin, follow)
                follow.task_resumed = True
            # the pool slot came back: a plain request still gets through
            after = await send_once(transport, url)
            return records, follow, counts, after
        finally:
            await transport.aclose()
            server.close()

    records, follow, counts, after = run(main())
    assert [r.outcome for r in records] == [Outcome.OK] * 3, [r.error for r in records]
    assert [r.completion_tokens for r in records] == [3, 3, 3]
    # asked at each end, before the task resumed; the last answer was "no more"
    assert follow.asked_before_resume == [True, True, True]
    assert counts == [1, 4]  # one connection: three chained requests and the plain one
    for prev, nxt in itertools.pairwise(records):
        assert nxt.sent >= prev.end
    assert after.outcome is Outcome.OK


def test_responses_that_end_before_the_task_takes_over_keep_the_chain_going() -> None:
    """A busy task may wake after its next request's whole response arrived: that response's
    end sends the one after it too, and the task takes them over in order."""
    one_slot = ClientSettings(pool_size=1, connect_timeout=5.0, read_timeout=10.0)

    async def main() -> tuple[list[RequestRecord], _Follow, list[int]]:
        handler, counts = keep_alive_server(3)
        server, url = await serve(handler)
        transport = NativeTransport(one_slot)
        follow = _Follow(3, url)
        origin = perf_counter()
        try:
            records = [record()]
            await transport.send(records[0], url, b"{}", origin, follow)
            async with asyncio.timeout(10):  # the task stays away until all three went out
                while len(follow.sent) < 3 or not follow.sent[-1].end:
                    await asyncio.sleep(0.01)
                    if len(follow.asked_before_resume) == 4:
                        break
            for rec in follow.sent:
                records.append(rec)
                await transport.send(rec, url, b"unused", origin, follow)
            return records, follow, counts
        finally:
            await transport.aclose()
            server.close()

    records, follow, counts = run(main())
    assert [r.outcome for r in records] == [Outcome.OK] * 4
    assert counts == [1, 4]
    assert len(follow.asked_before_resume) == 4  # three sent ahead, then "no more"


def test_a_request_sent_ahead_is_cancelled_with_its_stream() -> None:
    """The stream's task is cancelled after the next request went out but before it took it
    over: that request is marked cancelled (it was sent), its connection dropped and the pool
    slot freed."""
    one_slot = ClientSettings(pool_size=1, connect_timeout=5.0, read_timeout=10.0)

    async def main() -> tuple[RequestRecord, _Follow, RequestRecord]:
        handler, _ = keep_alive_server(3, stall_from=2)
        server, url = await serve(handler)
        transport = NativeTransport(one_slot)
        follow = _Follow(1, url)
        first = record()
        task = asyncio.create_task(transport.send(first, url, b"{}", perf_counter(), follow))
        follow.on_ask = task.cancel  # the response has ended; the task has not run yet
        try:
            with pytest.raises(asyncio.CancelledError):
                await task
            return first, follow, await send_once(transport, url)
        finally:
            await transport.aclose()
            server.close()

    first, follow, after = run(main())
    assert len(follow.sent) == 1
    ahead = follow.sent[0]
    assert ahead.outcome is Outcome.CANCELLED and ahead.sent > 0
    assert first.outcome is Outcome.CANCELLED  # as any send cancelled while it waits
    assert after.outcome is not Outcome.CANCELLED  # the slot was freed: it got a connection


def scripted(response: bytes, *, then_close: bool = True, stall: float = 0.0) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()
        if stall:  # until the client goes away, or `stall` seconds
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(stall):
                    await reader.read()
        if then_close:
            writer.close()

    return handler


def outcome_of(handler: Handler, settings_: ClientSettings = SETTINGS) -> RequestRecord:
    async def main() -> RequestRecord:
        server, url = await serve(handler)
        transport = NativeTransport(settings_)
        try:
            return await send_once(transport, url)
        finally:
            await transport.aclose()
            server.close()

    return run(main())


def test_http_errors_carry_the_servers_message() -> None:
    body = b'{"error": {"message": "slow down", "type": "RateLimit", "code": 429}}'
    rec = outcome_of(
        scripted(b"HTTP/1.1 429 Too Many\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    )
    assert rec.outcome is Outcome.HTTP_429 and rec.status == 429
    assert rec.error == "HTTP 429: slow down (code 429)"
    body = b'{"object": "error", "message": "engine dead"}'
    rec = outcome_of(
        scripted(
            b"HTTP/1.1 503 Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, 5)
        )
    )
    assert rec.outcome is Outcome.HTTP_5XX and rec.error == "HTTP 503: engine dead"


def test_dropped_streams_keep_what_arrived() -> None:
    partial = chunked(sse(6))[:700]
    rec = outcome_of(scripted(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + partial))
    assert rec.outcome is Outcome.DROPPED and rec.status == 200
    assert rec.chunk_tokens and sum(rec.chunk_tokens) < 6
    rec = outcome_of(scripted(b""))  # closed before any response
    assert rec.outcome is Outcome.DROPPED and rec.status is None
    assert rec.error is not None and "before any response" in rec.error


def test_read_timeout_and_connect_refused() -> None:
    first = chunked(sse(6))[:300]
    short = ClientSettings(pool_size=0, connect_timeout=5.0, read_timeout=0.3)
    rec = outcome_of(
        scripted(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + first, stall=5.0), short
    )
    assert rec.outcome is Outcome.TIMEOUT and rec.status == 200
    assert 0.25 < rec.end - rec.sent < 5.0

    async def refused() -> RequestRecord:
        server, url = await serve(scripted(b""))
        server.close()
        await server.wait_closed()
        transport = NativeTransport(SETTINGS)
        try:
            return await send_once(transport, url)
        finally:
            await transport.aclose()

    rec = run(refused())
    assert rec.outcome is Outcome.CONNECT


def test_cancel_marks_the_record_and_propagates() -> None:
    rec = record()

    async def main() -> None:
        server, url = await serve(
            scripted(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n", stall=10.0)
        )
        transport = NativeTransport(SETTINGS)
        task = asyncio.create_task(transport.send(rec, url, b"{}", perf_counter()))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await transport.aclose()
        server.close()

    run(main())
    assert rec.outcome is Outcome.CANCELLED and rec.status == 200


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_verified_or_not(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    response = OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(sse(4))

    async def main(verify: bool) -> RequestRecord:
        server = await asyncio.start_server(scripted(response), "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        transport = NativeTransport(
            ClientSettings(pool_size=0, connect_timeout=5.0, read_timeout=10.0, verify_tls=verify)
        )
        try:
            return await send_once(transport, f"https://127.0.0.1:{port}/v1/chat/completions")
        finally:
            await transport.aclose()
            server.close()

    trusting = run(main(False))
    assert trusting.outcome is Outcome.OK and trusting.completion_tokens == 4
    checking = run(main(True))
    assert checking.outcome is Outcome.TLS


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(sse(2)))
        await writer.drain()
        writer.close()  # keep-alive was not refused, but the server goes away

    async def main() -> list[RequestRecord]:
        server, url = await serve(handler)
        transport = NativeTransport(SETTINGS)
        out = []
        try:
            for _ in range(3):
                out.append(await send_once(transport, url))
                await asyncio.sleep(0.1)  # the server's FIN arrives while the connection idles
        finally:
            await transport.aclose()
            server.close()
        return out

    records = run(main())
    assert [r.outcome for r in records] == [Outcome.OK] * 3
    assert connections == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_a_whole_run_with_the_native_transport(
    tmp_path: Path, sim_server: Callable[..., SimulatorProcess], workers: int
) -> None:
    import anyio

    from loadgen.orchestrator import RunOptions, run_scenario
    from loadgen.results.files import read_requests
    from loadgen.scenario import Overrides, load_scenario

    sim = sim_server()
    path = tmp_path / "scenario.toml"
    path.write_text(
        'name = "native"\nseed = 1\n[workload]\nmax_tokens = 16\nignore_eos = true\n'
        "[workload.images]\nwidth = 64\nheight = 64\n"
        '[load]\nmode = "closed"\nconcurrency = 3\nrequests = 12\n'
    )
    scenario = load_scenario(path, Overrides(urls=(sim.base_url,)))
    options = RunOptions(
        run_dir=str(tmp_path / "run"),
        transport="native",
        handle_signals=False,
        workers=workers,
    )
    result = anyio.run(run_scenario, scenario, options, lambda _: None)
    records = read_requests(result.run_dir / "requests.jsonl")
    assert len(records) == 12 and all(r.outcome is Outcome.OK for r in records)
    phase = to_builtins(result.summary)["phases"]["main"]
    assert phase["tokens"]["generation"] == 12 * 16
    server = to_builtins(result.summary)["server"]["phases"]["main"]
    assert server["comparison"]["mismatch"] is False  # the simulator counted the same tokens
