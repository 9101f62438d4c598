#!/usr/bin/env python3
"""Reproduce the simulator's calibration: the captioning seed case against `loadgen sim`.

Starts the simulator (default profile) as a subprocess on a free port, then drives the seed
workload with a minimal async httpx client: 30 closed-loop streams, 300 requests, one synthetic
448x336 JPEG per request from a pool of 50 distinct images, the prompt "Describe this image in one
sentence.", max_tokens 320, ignore_eos, temperature 0. Prints the simulator's stats log lines,
which should show about 1301 prompt and 1924 generation tokens/s once warm.

    .venv/bin/python scripts/sim_calibrate.py [--requests 300] [--concurrency 30] [-- SIM ARGS]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import random
import re
import sys
import time

import httpx
from PIL import Image

from loadgen.sim.process import SimulatorProcess

PROMPT = "Describe this image in one sentence."
LINE = re.compile(
    r"Avg prompt throughput: ([\d.]+) tokens/s, Avg generation throughput: ([\d.]+) tokens/s"
)


def make_images(count: int, width: int, height: int, seed: int) -> list[str]:
    """Distinct JPEG data URLs: a random two-colour gradient plus noise per image."""
    rng = random.Random(seed)
    urls = []
    for _ in range(count):
        a = [rng.randrange(256) for _ in range(3)]
        b = [rng.randrange(256) for _ in range(3)]
        image = Image.linear_gradient("L").resize((width, height))
        color = Image.merge(
            "RGB",
            [
                image.point(lambda v, lo=lo, hi=hi: lo + (hi - lo) * v // 255)
                for lo, hi in zip(a, b, strict=True)
            ],
        )
        noise = Image.effect_noise((width, height), 24).convert("RGB")
        color = Image.blend(color, noise, 0.15)
        buf = io.BytesIO()
        color.save(buf, "JPEG", quality=85)
        urls.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return urls


def body(image_url: str, max_tokens: int) -> dict[str, object]:
    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": PROMPT},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def drive(
    base_url: str, images: list[str], requests: int, concurrency: int, max_tokens: int
) -> int:
    """Closed loop: `concurrency` streams, each sending its next request when one ends."""
    counter = iter(range(requests))
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(connect=10, read=600, write=60, pool=600)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:

        async def stream() -> None:
            nonlocal errors
            for i in counter:
                payload = body(images[i % len(images)], max_tokens)
                async with client.stream("POST", "/v1/chat/completions", json=payload) as response:
                    if response.status_code != 200:
                        errors += 1
                    async for _ in response.aiter_raw():
                        pass

        await asyncio.gather(*(stream() for _ in range(concurrency)))
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--pool", type=int, default=50, help="distinct images, repeating")
    parser.add_argument("--log-interval", type=float, default=10.0)
    parser.add_argument("sim_args", nargs="*", help="extra `loadgen sim` arguments (after --)")
    args = parser.parse_args()

    images = make_images(args.pool, 448, 336, seed=1)
    sim_args = ["--profile", "default", "--log-interval", str(args.log_interval), *args.sim_args]
    with SimulatorProcess(sim_args) as sim:
        print(f"simulator at {sim.base_url}: {' '.join(sim_args)}", file=sys.stderr)
        t0 = time.monotonic()
        errors = asyncio.run(
            drive(sim.base_url, images, args.requests, args.concurrency, args.max_tokens)
        )
        elapsed = time.monotonic() - t0
        time.sleep(args.log_interval + 0.5)  # one more interval, to flush the last stats line
        lines = sim.log_lines()
    for line in lines:
        print(line)
    stats = [tuple(map(float, m.groups())) for line in lines if (m := LINE.search(line))]
    full = [s for s in stats if s[1] > 0][1:-1]  # drop the ramp-up and the tail intervals
    print(f"\n{args.requests} requests in {elapsed:.1f} s, {errors} errors")
    if full:
        prompt = sum(s[0] for s in full) / len(full)
        gen = sum(s[1] for s in full) / len(full)
        print(
            f"warm intervals ({len(full)}): prompt {prompt:.1f} tokens/s (target 1301, "
            f"{100 * (prompt / 1301 - 1):+.1f} %), generation {gen:.1f} tokens/s (target 1924, "
            f"{100 * (gen / 1924 - 1):+.1f} %)"
        )
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
