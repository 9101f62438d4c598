#!/usr/bin/env python3
"""How fast can the simulator stream? Sustained tokens/s on one core, zero-latency profile.

The simulator (profile `zero`: no modelled step time) is pinned to core 0 with
os.sched_setaffinity, this client to core 1. The client is aiohttp reading raw bytes, counting
`data:` events and taking token counts from each stream's usage chunk. Reports streamed tokens/s,
chunks/s, tokens per chunk and the server's CPU time per token (from /proc).

    .venv/bin/python scripts/bench_sim.py [--streams 64] [--max-tokens 512] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import time

import aiohttp
import orjson
from PIL import Image

from loadgen.sim.process import SimulatorProcess


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def payload(max_tokens: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (448, 336), (90, 120, 150)).save(buf, "JPEG")
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    return orjson.dumps(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "Describe this image in one sentence."},
                    ],
                }
            ],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )


async def drive(
    base_url: str, streams: int, max_tokens: int, seconds: float
) -> tuple[int, int, int]:
    body = payload(max_tokens)
    tokens = chunks = requests = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=streams)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def stream() -> None:
            nonlocal tokens, chunks, requests
            headers = {"Content-Type": "application/json"}
            while time.monotonic() < deadline:
                async with session.post(
                    base_url + "/v1/chat/completions", data=body, headers=headers
                ) as r:
                    data = bytearray()
                    async for part in r.content.iter_any():
                        data += part
                events = bytes(data).split(b"\n\n")
                chunks += sum(1 for e in events if e.startswith(b"data: {"))
                usage = orjson.loads(events[-3][6:])["usage"]
                tokens += usage["completion_tokens"]
                requests += 1

        await asyncio.gather(*(stream() for _ in range(streams)))
    return tokens, chunks, requests


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--profile", default="zero")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    with SimulatorProcess(["--profile", args.profile, "--log-interval", "3600"]) as sim:
        assert sim.pid is not None
        if len(cores) >= 2:
            os.sched_setaffinity(sim.pid, {cores[0]})
            os.sched_setaffinity(0, {cores[1]})
        cpu0 = cpu_seconds(sim.pid)
        started = time.monotonic()
        tokens, chunks, requests = asyncio.run(
            drive(sim.base_url, args.streams, args.max_tokens, args.seconds)
        )
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(sim.pid) - cpu0
    print(
        f"profile={args.profile} streams={args.streams} max_tokens={args.max_tokens} "
        f"cores: server {cores[0]}, client {cores[1] if len(cores) > 1 else cores[0]}"
    )
    print(f"{requests} requests, {tokens} tokens, {chunks} chunks in {elapsed:.1f} s")
    print(
        f"streamed tokens/s: {tokens / elapsed:.0f}   chunks/s: {chunks / elapsed:.0f}   "
        f"tokens/chunk: {tokens / max(chunks, 1):.2f}   server CPU: {cpu / elapsed * 100:.0f} % of a core, "
        f"{cpu / max(tokens, 1) * 1e6:.1f} us/token"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
