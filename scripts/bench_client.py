#!/usr/bin/env python3
"""Is loadgen's client the bottleneck? Its CPU per streamed token against a minimal reference.

A target streams pre-rendered vLLM-shaped responses (role chunk, one content chunk per token with
continuous usage, the last with finish_reason, a usage chunk, [DONE]) as fast as it can: by
default a raw asyncio HTTP/1.1 server in this script, several chunks per socket write, each its
own HTTP chunk. On a machine with two cores or more the target runs on one core and each measured
client on another (os.sched_setaffinity), so the client can use all of its core.

Clients, each in its own subprocess (CPU and peak RSS are the child's own, from
resource.getrusage), run one after the other in every repetition, at each concurrency:
- `reference`: a few lines of aiohttp: iter_any(), split events on b"\\n\\n", one orjson.loads
  per data line, first-token time and a token count, nothing else;
- `loadgen`: what `loadgen run` does for a shard, with the run's default transport:
  loadgen.runner.run_phase (closed loop), the transport's send() and StreamParser, the shard's
  sink (RequestLog.write to a temporary file, PhaseAccumulator.add in the bookkeeper task) and
  the SelfCheck probe;
- `native`, `aiohttp`, `httpx`: the same with that transport; `base`: the same from --base DIR.
The table gives, per client, the median over repetitions of client CPU (user + sys, and the sys
part) per streamed token and per request, tokens/s, the client's CPU use in cores and the
target's, peak RSS, and the ratios to the reference.

Then an open-loop check drives loadgen.runner.run_phase at a constant rate (short responses) and
reports the achieved send rate and the schedule lag (actual minus intended send) p50 / p99.

    .venv/bin/python scripts/bench_client.py --json bench.json    # the full table, ~15 min
    .venv/bin/python scripts/bench_client.py --quick              # a small smoke run
    .venv/bin/python scripts/bench_client.py --target aiohttp     # the target: raw | aiohttp | sim
    .venv/bin/python scripts/bench_client.py --shape vllm,spaced,usage-at-end   # other servers'
                                                   # stream shapes, CPU per token against vLLM's
    .venv/bin/python scripts/bench_client.py --clients native --concurrency 1024 \\
        --requests 100000 --reps 1 --no-open-loop                 # RSS against request count
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any, cast

import orjson

# loadgen: the transport a run uses by default; aiohttp / native / httpx: loadgen with that
# transport; base: loadgen (default transport) imported from --base DIR, for before/after figures
CLIENTS = ("reference", "loadgen", "aiohttp", "native", "httpx", "base")
TARGETS = ("raw", "aiohttp", "sim")
SHAPES = ("vllm", "spaced", "usage-at-end")  # the static targets' stream shapes (sse_events)
MODEL = "sim-vlm"  # the simulator's model name; the static targets ignore it
PROMPT_TOKENS = 21
LISTENING = "bench-target listening on "


# ---------------------------------------------------------------- the stream the targets send
def sse_events(tokens: int, shape: str = "vllm") -> list[bytes]:
    """One response as SSE events in one of SHAPES: `vllm` is vLLM's exact shape with
    continuous usage; `spaced` the same written with spaces after `:` and `,` (Python's json,
    as several other servers write it); `usage-at-end` compact, with usage only in the last
    chunk (no continuous usage stats: OpenAI's API and most gateways)."""
    rid = "chatcmpl-0123456789abcdef0123456789abcdef"
    words = (" a", " cat", " on", " the", " red", " sofa", ",", " asleep", ".")

    def event(choices: list[dict[str, Any]], completion: int) -> bytes:
        obj: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": 1795974264,
            "model": MODEL,
            "choices": choices,
        }
        if shape != "usage-at-end" or not choices:
            obj["usage"] = {
                "prompt_tokens": PROMPT_TOKENS,
                "total_tokens": PROMPT_TOKENS + completion,
                "completion_tokens": completion,
            }
        if shape == "spaced":
            return b"data: " + json.dumps(obj).encode() + b"\n\n"
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    out = [
        event(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
            0,
        )
    ]
    for i in range(1, tokens + 1):
        choice: dict[str, Any] = {
            "index": 0,
            "delta": {"content": words[i % len(words)]},
            "logprobs": None,
            "finish_reason": None,
        }
        if i == tokens:
            choice.update(finish_reason="length", stop_reason=None)
        out.append(event([choice], i))
    out.append(event([], tokens))
    out.append(b"data: [DONE]\n\n")
    return out


def request_body(tokens: int) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Describe this image in one sentence."}],
            "max_tokens": tokens,
            "min_tokens": tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
    )


PHOTOS = Path(__file__).resolve().parent.parent / "scenarios" / "images"


def image_bodies(tokens: int) -> list[bytes]:
    """One captioning request per shipped photo, the photo as a data URL (25-55 KB of JPEG, so
    33-74 KB of base64): the bodies both clients send in turn in image mode."""
    import base64

    bodies = []
    for photo in sorted(PHOTOS.glob("*.jpg")):
        url = "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode()
        content = [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "Describe this image in one sentence."},
        ]
        doc = orjson.loads(request_body(tokens))
        doc["messages"] = [{"role": "user", "content": content}]
        bodies.append(orjson.dumps(doc))
    return bodies


_MAX_TOKENS = re.compile(rb'"max_tokens":\s*(\d+)')


def tokens_of(body: bytes, default: int) -> int:
    m = _MAX_TOKENS.search(body)
    return int(m.group(1)) if m else default


# ---------------------------------------------------------------- targets
class _RawServer:
    """HTTP/1.1 keep-alive over asyncio.Protocol, no framework: the cheapest streaming target.

    One stepper writes the next chunk of every active stream, then yields: like an engine step,
    each connection gets one chunk per step in its own write (`per_write` chunks, HTTP-framed one
    by one, when the client is faster than one chunk per write allows). A stream whose transport is above
    its write high-water mark (a slow reader) is skipped until it drains; the transport's buffer
    then coalesces what is pending, as a real server's would.
    """

    HEAD = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    def __init__(self, default_tokens: int, per_write: int = 1, shape: str = "vllm") -> None:
        self.default_tokens = default_tokens
        self.per_write = per_write
        self.shape = shape
        self._responses: dict[int, list[bytes]] = {}
        self.active: list[list[Any]] = []  # [protocol, parts, position]
        self.wake = asyncio.Event()

    def response(self, tokens: int) -> list[bytes]:
        parts = self._responses.get(tokens)
        if parts is None:
            framed = [b"%x\r\n%s\r\n" % (len(e), e) for e in sse_events(tokens, self.shape)]
            framed[0] = self.HEAD + framed[0]
            framed[-1] += b"0\r\n\r\n"
            k = self.per_write
            parts = [b"".join(framed[i : i + k]) for i in range(0, len(framed), k)]
            self._responses[tokens] = parts
        return parts

    def start(self, proto: _RawProtocol, tokens: int) -> None:
        self.active.append([proto, self.response(tokens), 0])
        self.wake.set()

    async def stepper(self) -> None:
        while True:
            wrote = 0
            keep = []
            for s in self.active:
                proto = s[0]
                if proto.closed:
                    continue
                if not proto.paused:
                    parts = s[1]
                    proto.transport.write(parts[s[2]])
                    s[2] += 1
                    wrote += 1
                    if s[2] == len(parts):
                        continue
                keep.append(s)
            self.active = keep
            if wrote:
                await asyncio.sleep(0)
            else:
                self.wake.clear()
                await self.wake.wait()


class _RawProtocol(asyncio.Protocol):
    def __init__(self, server: _RawServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.need = -1  # bytes of the current request (head + body), once its head is parsed
        self.head_end = 0
        self.paused = False
        self.closed = False
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need < 0:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", bytes(self.buf[:end]))
                self.head_end = end + 4
                self.need = self.head_end + (int(m.group(1)) if m else 0)
            if len(self.buf) < self.need:
                return
            body = bytes(self.buf[self.head_end : self.need])
            del self.buf[: self.need]
            self.need = -1
            self.server.start(self, tokens_of(body, self.server.default_tokens))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.server.wake.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.wake.set()


async def _serve_raw(port: int, tokens: int, per_write: int, shape: str) -> None:
    server = _RawServer(tokens, per_write, shape)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: _RawProtocol(server), "127.0.0.1", port, backlog=4096)
    print(LISTENING + f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", flush=True)
    await server.stepper()


async def _serve_aiohttp(port: int, tokens: int, per_write: int, shape: str) -> None:
    from aiohttp import web

    cache: dict[int, list[bytes]] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        n = tokens_of(await request.read(), tokens)
        events = cache.get(n)
        if events is None:
            events = cache[n] = sse_events(n, shape)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await resp.prepare(request)
        for e in events:
            await resp.write(e)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    assert site._server is not None
    sock = site._server.sockets[0]  # type: ignore[attr-defined]
    print(LISTENING + f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


class Target:
    """The target server as a child process, pinned to `core`."""

    def __init__(
        self, kind: str, core: int | None, tokens: int, per_write: int = 1, shape: str = "vllm"
    ) -> None:
        self.kind = kind
        self.shape = shape
        self.per_write = per_write
        self.core = core
        self.tokens = tokens
        self.url = ""
        self.pid = 0
        self._proc: subprocess.Popen[str] | None = None
        self._sim: Any = None

    def __enter__(self) -> Target:
        if self.kind == "sim":
            from loadgen.sim.process import SimulatorProcess

            self._sim = SimulatorProcess(["--profile", "zero", "--log-interval", "3600"])
            self.url = self._sim.start()
            self.pid = self._sim.pid
        else:
            cmd = [
                sys.executable, __file__, "--serve", self.kind, "--tokens", str(self.tokens),
                "--chunks-per-write", str(self.per_write), "--shape", self.shape,
            ]  # fmt: skip
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
            )
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()
            if not line.startswith(LISTENING):
                self._proc.kill()
                raise RuntimeError(f"target did not start: {line!r}")
            self.url = line[len(LISTENING) :].strip()
            self.pid = self._proc.pid
        if self.core is not None:
            os.sched_setaffinity(self.pid, {self.core})
        return self

    def __exit__(self, *_: object) -> None:
        if self._sim is not None:
            self._sim.stop()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far (all its threads, not its children), s."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- clients (run in a child)
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _mark() -> dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": r.ru_utime, "sys": r.ru_stime, "wall": perf_counter()}


async def reference_client(
    url: str, bodies: list[bytes], concurrency: int, requests: int
) -> dict[str, Any]:
    import aiohttp

    loads = orjson.loads
    left = requests
    done = tokens = first_tokens = reads = 0
    ttft_sum = 0.0
    slots = _SlotTimes()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def stream() -> None:
            nonlocal left, done, tokens, first_tokens, ttft_sum, reads
            slot = object()
            while left > 0:
                left -= 1
                body = bodies[left % len(bodies)]
                sent = perf_counter()
                first: float | None = None
                count = 0
                rest = b""
                async with session.post(url, data=body, headers=HEADERS) as resp:
                    async for data in resp.content.iter_any():
                        t = perf_counter()
                        reads += 1
                        events = (rest + data).split(b"\n\n")
                        rest = events.pop()
                        for ev in events:
                            if ev.startswith(b"data: {"):
                                usage = loads(ev[6:]).get("usage")
                                if usage:
                                    count = usage["completion_tokens"]
                                    if first is None and count:
                                        first = t
                    slots.add(slot, sent, perf_counter())  # the stream's end: its EOF
                done += 1
                tokens += count
                if first is not None:
                    first_tokens += 1
                    ttft_sum += first - sent

        await asyncio.gather(*(stream() for _ in range(concurrency)))
    return {
        "requests": done,
        "ok": done,
        "tokens": tokens,
        "first_tokens": first_tokens,
        "reads": reads,
        **slots.figures(concurrency),
    }


class _SlotTimes:
    """Per closed-loop stream slot: the gap from a request's end to the slot's next send, and
    every request's time in flight (for the time-weighted mean over the phase)."""

    def __init__(self) -> None:
        self.last_end: dict[object, float] = {}
        self.gaps: list[float] = []
        self.in_flight_s = 0.0
        self.first_sent: float | None = None
        self.last_end_any: float | None = None
        self.e2e: list[float] = []

    def add(self, slot: object, sent: float, end: float) -> None:
        prev = self.last_end.get(slot)
        if prev is not None:
            self.gaps.append(sent - prev)
        self.last_end[slot] = end
        self.in_flight_s += end - sent
        self.e2e.append(end - sent)
        if self.first_sent is None or sent < self.first_sent:
            self.first_sent = sent
        if self.last_end_any is None or end > self.last_end_any:
            self.last_end_any = end

    def figures(self, concurrency: int) -> dict[str, Any]:
        gaps = sorted(self.gaps)
        n = len(gaps)
        span = (
            self.last_end_any - self.first_sent
            if self.first_sent is not None and self.last_end_any is not None
            else 0.0
        )
        return {
            "gap_ms": {
                "p50": gaps[n // 2] * 1e3,
                "p99": gaps[min(n - 1, int(0.99 * n))] * 1e3,
                "mean": sum(gaps) / n * 1e3,
                "count": n,
            }
            if n
            else None,
            "e2e_mean_ms": sum(self.e2e) / len(self.e2e) * 1e3 if self.e2e else None,
            "mean_in_flight": self.in_flight_s / span if span > 0 else None,
        }


class _GapLog:
    """Wraps the request log: each record is written from its closed-loop stream's own task
    (the runner's sink writes at once), so the task is the slot."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.slots = _SlotTimes()

    def write(self, rec: Any) -> None:
        self.log.write(rec)
        self.slots.add(asyncio.current_task(), rec.sent, rec.end)

    def close(self) -> None:
        self.log.close()


class _Bodies:
    def __init__(self, bodies: list[bytes]) -> None:
        self._bodies = bodies

    def body(self, i: int) -> bytes:
        return self._bodies[i % len(self._bodies)]

    def image_ids(self, i: int) -> list[str]:
        return []

    def body_id(self, i: int) -> int | None:
        return None

    def invalid_kind(self, i: int) -> str:
        return ""

    def ready(self, i: int) -> bool:
        return True

    async def wait(self, i: int) -> None:
        return None


def _run_sink(log: Any) -> Any:
    """The sink a run gives its shard: the log line at once, the accumulator in a task."""
    try:
        from loadgen.shard import BookkeepingSink
    except ImportError:  # before shards existed the orchestrator owned it
        from loadgen.orchestrator import RunSink  # type: ignore[attr-defined]

        return RunSink(log)
    return BookkeepingSink(log.write)


async def loadgen_client(
    url: str,
    bodies: list[bytes],
    transport_name: str,
    load: Any,
    log_dir: str,
    marks: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """One phase as `loadgen run` drives it (its shard: run_phase, the transport, the sink with
    its bookkeeper task, the self-check probe; no /metrics scraping). The phase's end is marked
    in `marks` before the one-off summary work (self-check verdict, histogram totals)."""
    import anyio

    from loadgen.client import ClientSettings, make_transport
    from loadgen.config import PhaseConfig
    from loadgen.metrics.selfcheck import SelfCheck
    from loadgen.metrics.summary import PhaseAccumulator
    from loadgen.results.files import RequestLog
    from loadgen.runner import ShardContext, run_phase

    settings = ClientSettings(
        pool_size=load.concurrency if load.mode == "closed" else load.max_concurrency,
        connect_timeout=10.0,
        read_timeout=float(os.environ.get("BENCH_READ_TIMEOUT", "120")),
    )
    transport = make_transport(transport_name, settings)  # type: ignore[arg-type]
    measured = _GapLog(RequestLog(Path(log_dir) / "requests.jsonl"))
    log = measured
    sink = _run_sink(log)
    selfcheck = SelfCheck()
    origin = perf_counter()
    ctx = ShardContext(transport=transport, urls=[url], sink=sink, origin=origin)
    phase = PhaseConfig(name="bench", load=load)
    backlog = {"max_pending": 0, "samples": 0}

    async def watch_backlog() -> None:
        """Finished records waiting for the bookkeeper (a growing queue holds their memory)."""
        while True:
            await anyio.sleep(0.25)
            backlog["max_pending"] = max(backlog["max_pending"], len(sink.pending))
            backlog["samples"] += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(selfcheck.run)
        tg.start_soon(sink.bookkeeper)
        tg.start_soon(watch_backlog)
        start = perf_counter()
        sink.accumulators["bench"] = PhaseAccumulator("bench", window=10.0, origin=start - origin)
        timing = await run_phase(ctx, phase, _Bodies(bodies), start=start)
        sink.drain()
        tg.cancel_scope.cancel()
    await transport.aclose()
    log.close()
    marks["end"] = _mark()
    acc = sink.accumulators["bench"]
    ok = acc.outcomes.get("ok", 0)
    mean_in_flight = (
        acc.windows.concurrency.mean(acc.first_intended, acc.last_end)
        if acc.first_intended is not None and acc.last_end is not None
        else None
    )
    return {
        "requests": sum(acc.outcomes.values()),
        "ok": ok,
        "outcomes": acc.outcomes,
        "tokens": acc.generation_tokens,
        "first_tokens": acc.histograms.total().count("ttft"),
        "phase_started": timing.started,
        "phase_ended": timing.ended,
        "selfcheck": selfcheck.verdict(),
        "bookkeeping_backlog_max": backlog["max_pending"],
        "accumulator_windows": len(acc.histograms.windows),
        "concurrency_events": len(acc.windows.concurrency.to_state()["t_us"]),
        **measured.slots.figures(load.concurrency),
        "mean_in_flight": mean_in_flight,  # the phase summary's own figure
    }


def _open_loop_figures(log_path: Path, rate: float) -> dict[str, Any]:
    from loadgen.results.files import read_requests

    records = read_requests(log_path)
    sends = sorted(r.sent for r in records)
    lags = sorted((r.sent - r.intended) * 1000.0 for r in records)
    n = len(sends)
    span = sends[-1] - sends[0] if n > 1 else 0.0
    achieved = (n - 1) / span if span > 0 else None

    def pct(p: float) -> float:
        return lags[min(n - 1, int(p / 100.0 * n))]

    return {
        "target_rate": rate,
        "achieved_rate": achieved,
        "rate_error": (achieved / rate - 1.0) if achieved else None,
        "lag_ms": {"p50": pct(50), "p99": pct(99), "max": lags[-1]} if n else None,
        "ok": sum(1 for r in records if str(r.outcome) == "ok"),
    }


def _default() -> str:
    """The transport `loadgen run` uses unless told otherwise."""
    from loadgen.orchestrator import RunOptions

    return str(RunOptions().transport)


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measured client; the figures are this process's own."""
    import anyio

    from loadgen.config import LoadConfig

    client = spec["client"]
    bodies = image_bodies(spec["tokens"]) if spec.get("images") else [request_body(spec["tokens"])]
    url = spec["url"] + "/v1/chat/completions"
    if spec["core"] is not None:
        os.sched_setaffinity(0, {spec["core"]})
    # Imports before the clock starts: only the streaming is measured.
    import aiohttp  # noqa: F401
    import anyio._backends._asyncio
    import uvloop

    import loadgen.client
    import loadgen.metrics.selfcheck
    import loadgen.metrics.summary
    import loadgen.results.files
    import loadgen.runner
    import loadgen.shard

    marks: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        marks["start"] = _mark()
        transport = "reference"
        if client == "reference":
            out = uvloop.run(reference_client(url, bodies, spec["concurrency"], spec["requests"]))
        else:
            if client == "open-loop":
                load = LoadConfig(
                    mode="constant",
                    rate=spec["rate"],
                    requests=spec["requests"],
                    max_concurrency=0,
                )
                transport = spec.get("transport") or _default()
            else:
                load = LoadConfig(
                    mode="closed", concurrency=spec["concurrency"], requests=spec["requests"]
                )
                transport = client if client in ("aiohttp", "httpx", "native") else _default()
            out = anyio.run(
                loadgen_client,
                url,
                bodies,
                transport,
                load,
                tmp,
                marks,
                backend="asyncio",
                backend_options={"use_uvloop": True},
            )
        end = marks.get("end") or _mark()
        start = marks["start"]
        user, sys_ = end["user"] - start["user"], end["sys"] - start["sys"]
        wall, cpu = end["wall"] - start["wall"], user + sys_
        if client == "open-loop":
            out["open_loop"] = _open_loop_figures(Path(tmp) / "requests.jsonl", spec["rate"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.update(
        package=os.path.dirname(loadgen.client.__file__),
        process_cpu_s=usage.ru_utime + usage.ru_stime,
        client=client,
        transport=transport,
        concurrency=spec["concurrency"],
        wall_s=wall,
        cpu_s=cpu,
        user_s=user,
        sys_s=sys_,
        maxrss_mb=usage.ru_maxrss / 1024.0,
    )
    return out


# ---------------------------------------------------------------- the parent
def core_busy_seconds(core: int | None) -> float:
    """Non-idle seconds of one core so far, from /proc/stat (all processes on it)."""
    if core is None:
        return 0.0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def run_child(spec: dict[str, Any], target: Target, base: str | None = None) -> dict[str, Any]:
    env = None
    label = spec["client"]
    if label == "base":  # the same client code path, from another copy of the package
        if not base:
            raise SystemExit("client 'base' needs --base DIR (a folder holding a loadgen package)")
        env = {**os.environ, "PYTHONPATH": base}
        spec = {**spec, "client": "loadgen"}
    tcpu0 = target.cpu_seconds()
    busy0 = core_busy_seconds(spec["core"])
    wall0 = perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", orjson.dumps(spec).decode()],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
        env=env,
    )
    tcpu = target.cpu_seconds() - tcpu0
    busy = core_busy_seconds(spec["core"]) - busy0
    whole = perf_counter() - wall0
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['client']} child failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    out["client"] = label
    out["target_cpu_s"] = tcpu
    # The client core's busy share over the child's whole life (start-up included), beside the
    # child's own share of it: what else ran there.
    out["client_core_busy"] = busy / whole
    out["child_core_share"] = out["process_cpu_s"] / whole
    return out


def _derive(run: dict[str, Any]) -> dict[str, Any]:
    tokens = max(run["tokens"], 1)
    gap = run.get("gap_ms") or {}
    nan = float("nan")
    in_flight = run.get("mean_in_flight")
    return {
        "gap_p50_ms": gap.get("p50", nan),
        "gap_p99_ms": gap.get("p99", nan),
        "gap_mean_ms": gap.get("mean", nan),
        "e2e_mean_ms": run.get("e2e_mean_ms") or nan,
        "mean_in_flight": nan if in_flight is None else in_flight,
        "in_flight_over_c": nan if in_flight is None else in_flight / run["concurrency"],
        "us_per_token": run["cpu_s"] / tokens * 1e6,
        "sys_us_per_token": run.get("sys_s", 0.0) / tokens * 1e6,
        "us_per_request": run["cpu_s"] / max(run["requests"], 1) * 1e6,
        "tokens_per_s": run["tokens"] / run["wall_s"],
        "client_cores": run["cpu_s"] / run["wall_s"],
        "target_cores": run["target_cpu_s"] / run["wall_s"],
        "rss_mb": run["maxrss_mb"],
    }


FIELDS = (
    "gap_p50_ms",
    "gap_p99_ms",
    "gap_mean_ms",
    "e2e_mean_ms",
    "mean_in_flight",
    "in_flight_over_c",
    "us_per_token",
    "sys_us_per_token",
    "us_per_request",
    "tokens_per_s",
    "client_cores",
    "target_cores",
    "rss_mb",
)


def summarize(runs: list[dict[str, Any]], clients: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (concurrency, client): medians over repetitions, and ratios to the reference."""
    rows = []
    for conc in sorted({r["concurrency"] for r in runs}):
        medians: dict[str, dict[str, float]] = {}
        for client in clients:
            mine = [_derive(r) for r in runs if r["concurrency"] == conc and r["client"] == client]
            if not mine:
                continue
            medians[client] = {f: statistics.median(m[f] for m in mine) for f in FIELDS}
            tokens = {
                r["tokens"] for r in runs if r["concurrency"] == conc and r["client"] == client
            }
            ok = sum(r["ok"] for r in runs if r["concurrency"] == conc and r["client"] == client)
            rows.append(
                {
                    "concurrency": conc,
                    "client": client,
                    "reps": len(mine),
                    "tokens": sorted(tokens),
                    "ok": ok,
                    **medians[client],
                    "per_rep_us_per_token": [m["us_per_token"] for m in mine],
                }
            )
        ref = medians.get("reference")
        for row in rows:
            if row["concurrency"] == conc:
                row["ratio_cpu_per_token"] = (
                    row["us_per_token"] / ref["us_per_token"] if ref else None
                )
                row["ratio_rss"] = row["rss_mb"] / ref["rss_mb"] if ref else None
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'conc':>5} {'client':<10} {'us/token':>9} {'(sys)':>6} {'us/req':>9} {'tokens/s':>9} "
        f"{'cli cores':>9} {'tgt cores':>9} {'RSS MB':>7} {'x ref CPU':>9} {'x ref RSS':>9} "
        f"{'in flight':>9} {'/C':>5} {'gap p50':>8} {'p99':>8} {'mean':>8} {'E2E mean':>8}"
        "  per rep us/token"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['ratio_cpu_per_token']:.2f}" if r["ratio_cpu_per_token"] else "-"
        rss = f"{r['ratio_rss']:.2f}" if r["ratio_rss"] else "-"
        reps = " ".join(f"{x:.2f}" for x in r["per_rep_us_per_token"])
        lines.append(
            f"{r['concurrency']:>5} {r['client']:<10} {r['us_per_token']:>9.2f} "
            f"{r['sys_us_per_token']:>6.2f} "
            f"{r['us_per_request']:>9.0f} {r['tokens_per_s']:>9.0f} {r['client_cores']:>9.2f} "
            f"{r['target_cores']:>9.2f} {r['rss_mb']:>7.1f} {ratio:>9} {rss:>9} "
            f"{r['mean_in_flight']:>9.1f} {r['in_flight_over_c']:>5.2f} {r['gap_p50_ms']:>8.2f} "
            f"{r['gap_p99_ms']:>8.2f} {r['gap_mean_ms']:>8.2f} {r['e2e_mean_ms']:>8.1f}  {reps}"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _cores() -> tuple[int | None, int | None]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        return cores[0], cores[1]
    return None, None


def machine() -> dict[str, Any]:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = "unknown"
    return {"cpu": model, "nproc": os.cpu_count(), "python": sys.version.split()[0]}


def _schedule(
    concurrencies: Sequence[int], reps: int, clients: Sequence[str]
) -> Iterator[tuple[int, int, str]]:
    for conc in concurrencies:
        for rep in range(reps):
            for client in clients:  # A/B/A/B: each repetition runs every client once, in turn
                yield conc, rep, client


def parent_main(args: argparse.Namespace) -> int:
    if args.quick:
        concurrencies, tokens, reps = [2, 8], 8, 2
        open_rate, open_requests = 100.0, 40
    else:
        default_tokens = 32 if args.images else 256  # captioning: short answers to big bodies
        concurrencies, reps = _ints(args.concurrency), args.reps
        tokens = args.tokens or default_tokens
        open_rate, open_requests = args.rate, args.open_requests
    clients = [c for c in args.clients.split(",") if c]
    for c in clients:
        if c not in CLIENTS:
            raise SystemExit(f"unknown client {c!r}; choose from {', '.join(CLIENTS)}")
    shapes = [x for x in args.shape.split(",") if x]
    for x in shapes:
        if x not in SHAPES:
            raise SystemExit(f"unknown shape {x!r}; choose from {', '.join(SHAPES)}")
    if args.target == "sim" and shapes != ["vllm"]:
        raise SystemExit("--shape: the simulator sends vLLM's shape only")
    target_core, client_core = _cores()
    if target_core is not None:
        os.sched_setaffinity(
            0, {target_core}
        )  # this parent mostly sleeps: keep it off the client's core
    doc: dict[str, Any] = {
        "machine": machine(),
        "argv": sys.argv,
        "target": args.target,
        "tokens_per_request": tokens,
        "chunks_per_write": args.chunks_per_write,
        "images": bool(args.images),
        "cores": {"target": target_core, "client": client_core},
        "shapes": {},
    }
    for number, shape in enumerate(shapes):
        with Target(args.target, target_core, tokens, args.chunks_per_write, shape) as target:
            runs = _closed_runs(args, target, client_core, concurrencies, reps, clients, tokens)
            rows = summarize(runs, clients)
            doc["shapes"][shape] = {"rows": rows, "runs": runs}
            if number == 0:
                doc["rows"], doc["runs"] = rows, runs
            if args.open_loop and number == 0:
                spec = {
                    "client": "open-loop",
                    "url": target.url,
                    "concurrency": 0,
                    "requests": open_requests,
                    "tokens": args.open_tokens if not args.quick else 4,
                    "rate": open_rate,
                    "core": client_core,
                    "transport": args.open_transport,
                }
                doc["open_loop"] = run_child(spec, target)
        print(
            f"target {args.target} ({shape} stream shape) on core {target_core}, clients on core "
            f"{client_core}; {tokens} tokens per request; medians over {reps} repetitions"
        )
        print(render(rows))
        if args.images:
            print(render_per_request(rows))
    if len(shapes) > 1:
        doc["shape_ratios"] = shape_ratios(doc["shapes"], shapes[0])
        print(render_shape_ratios(doc["shape_ratios"], shapes[0]))
    if "open_loop" in doc:
        o = doc["open_loop"]["open_loop"]
        lag = o["lag_ms"]
        print(
            f"open loop (loadgen run_phase, constant {o['target_rate']:g}/s, {open_requests} requests): "
            f"achieved {o['achieved_rate']:.2f}/s ({o['rate_error'] * 100:+.2f} %), schedule lag "
            f"p50 {lag['p50']:.3f} ms, p99 {lag['p99']:.3f} ms, max {lag['max']:.3f} ms; "
            f"{o['ok']} ok"
        )
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0


def _closed_runs(
    args: argparse.Namespace,
    target: Target,
    client_core: int | None,
    concurrencies: Sequence[int],
    reps: int,
    clients: Sequence[str],
    tokens: int,
) -> list[dict[str, Any]]:
    """Every client at every concurrency against one target, A/B/A/B."""
    runs: list[dict[str, Any]] = []
    for conc, rep, client in _schedule(concurrencies, reps, clients):
        requests = args.requests or (
            40 if args.quick else max(args.min_requests, args.requests_per_stream * conc)
        )
        spec = {
            "client": client,
            "url": target.url,
            "concurrency": conc,
            "requests": requests,
            "tokens": tokens,
            "core": client_core,
            "images": bool(args.images),
        }
        run = run_child(spec, target, args.base)
        run["rep"] = rep
        runs.append(run)
        d = _derive(run)
        print(
            f"  {target.shape} c={conc:<5} rep {rep} {client:<9} {d['us_per_token']:6.2f} us/token  "
            f"{d['tokens_per_s']:8.0f} tok/s  client {d['client_cores']:.2f} cores  "
            f"target {d['target_cores']:.2f} cores  RSS {d['rss_mb']:.0f} MB  "
            f"core busy {run['client_core_busy']:.2f} (child {run['child_core_share']:.2f})  "
            f"in flight {d['mean_in_flight']:.1f} ({d['in_flight_over_c']:.2f} C), end-to-next-send "
            f"gap p50 {d['gap_p50_ms']:.2f} ms mean {d['gap_mean_ms']:.2f} ms, "
            f"E2E mean {d['e2e_mean_ms']:.1f} ms  "
            f"({run['requests']} requests, {run['tokens']} tokens"
            + (f", {run['tokens'] / run['reads']:.1f} tokens/read" if run.get("reads") else "")
            + ")",
            file=sys.stderr,
            flush=True,
        )
    return runs


def shape_ratios(by_shape: dict[str, Any], base: str) -> list[dict[str, Any]]:
    """Per client and concurrency: CPU per token with each shape over the `base` shape's."""
    out = []
    for row in by_shape[base]["rows"]:
        ratios = {}
        for shape, figures in by_shape.items():
            for other in figures["rows"]:
                if (other["client"], other["concurrency"]) == (row["client"], row["concurrency"]):
                    ratios[shape] = other["us_per_token"] / row["us_per_token"]
        out.append({"client": row["client"], "concurrency": row["concurrency"], "ratios": ratios})
    return out


def render_per_request(rows: list[dict[str, Any]]) -> str:
    """Image mode: what one request costs the client (a body of tens of KB, a short answer)."""
    lines = ["per image request (client CPU; requests/s one core could sustain at that cost):"]
    by = {(r["concurrency"], r["client"]): r for r in rows}
    for (conc, client), r in by.items():
        ref = by.get((conc, "reference"))
        ratio = f"  x ref {r['us_per_request'] / ref['us_per_request']:.2f}" if ref else ""
        lines.append(
            f"  c={conc:<5} {client:<10} {r['us_per_request']:8.0f} us/request  "
            f"{1e6 / r['us_per_request']:7.0f} requests/s per core{ratio}"
        )
    return "\n".join(lines)


def render_shape_ratios(ratios: list[dict[str, Any]], base: str) -> str:
    lines = [f"CPU per token against the {base} shape, same client and concurrency:"]
    for r in ratios:
        each = "  ".join(f"{shape} {x:.2f}" for shape, x in r["ratios"].items())
        lines.append(f"  c={r['concurrency']:<5} {r['client']:<10} {each}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    p.add_argument("--json", metavar="OUT", help="write every figure to OUT")
    p.add_argument("--target", choices=TARGETS, default="raw", help="the streaming target")
    p.add_argument(
        "--shape",
        default="vllm",
        help=f"comma-separated stream shapes of the static target, from: {', '.join(SHAPES)} "
        "(several: each measured in turn, then CPU per token against the first)",
    )
    p.add_argument(
        "--clients",
        default="reference,loadgen,native,httpx",
        help=f"comma-separated, in run order, from: {', '.join(CLIENTS)}",
    )
    p.add_argument("--concurrency", default="30,256,1024", help="comma-separated stream counts")
    p.add_argument(
        "--tokens", type=int, default=0, help="output tokens per request (256; 32 with --images)"
    )
    p.add_argument(
        "--images",
        action="store_true",
        help="image bodies: each request carries one of the shipped photos (scenarios/images) as "
        "a data URL; reports client CPU per request and requests/s per core",
    )
    p.add_argument(
        "--chunks-per-write",
        type=int,
        default=4,
        help="raw target: chunks per socket write, each still its own HTTP chunk (default 4: "
        "at 1 the target nears a full core against the native transport at 1024 streams)",
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions of each client")
    p.add_argument("--requests", type=int, default=0, help="requests per run (default: see below)")
    p.add_argument("--min-requests", type=int, default=2000)
    p.add_argument("--requests-per-stream", type=int, default=3)
    p.add_argument("--no-open-loop", dest="open_loop", action="store_false")
    p.add_argument("--rate", type=float, default=500.0, help="open-loop check: requests/s")
    p.add_argument("--open-requests", type=int, default=5000)
    p.add_argument("--open-tokens", type=int, default=16)
    p.add_argument(
        "--open-transport", choices=("aiohttp", "native", "httpx"), help="default: a run's default"
    )
    p.add_argument(
        "--base", metavar="DIR", help="client 'base': loadgen imported from DIR (before/after)"
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--serve", choices=("raw", "aiohttp"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        import uvloop

        serve = _serve_raw if args.serve == "raw" else _serve_aiohttp
        uvloop.run(serve(0, args.tokens, args.chunks_per_write, args.shape))
        return 0
    if args.child:
        out = child_main(orjson.loads(args.child))
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
        return 0
    return parent_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
