#!/usr/bin/env python3
"""Does scraping the server's /metrics distort what the client measures?

A target (a subprocess, on its own core where there are two) streams vLLM-shaped chat completions
with a fixed inter-token gap and serves, at GET /metrics, a vLLM-like page of about 106 KB: the V1
metric names, two engines, every histogram with its buckets, the API server's HTTP histograms.

Then `loadgen run` (one worker, the default configuration otherwise) runs the same closed-loop
phase against it, each run in its own subprocess, in these modes, alternated within each
repetition so the machine's noise falls on all of them alike:
- `off`: scraping off (`scrape_metrics = false`), this tree;
- `base`: scraping on, loadgen imported from --base DIR (the code before a change);
- `new`: scraping on, this tree.
Per mode it gives the medians over repetitions of ITL p50 / p99 / p99.9 (client side, ms), the
event-loop lag p99 / max from the client's self-check, and the /metrics scrapes taken. Before the
runs it times one parse of the page with each tree's `parse_metrics`.

    .venv/bin/python scripts/bench_scrape.py                      # --base /work/main by default
    .venv/bin/python scripts/bench_scrape.py --base ../main --reps 5 --duration 10
    .venv/bin/python scripts/bench_scrape.py --quick              # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench-vlm"
MODES = ("off", "base", "new")
LISTENING = "bench-scrape target listening on "

# ------------------------------------------------------------------ the /metrics page

# Bucket bounds as vLLM's PrometheusStatLogger declares them (V1, 0.10-0.11 era).
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
         10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
_ITL = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        20.0, 40.0, 80.0)  # fmt: skip
_REQUEST = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
            120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
_TOKENS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
_HTTP = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)

VLLM_HISTOGRAMS: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("vllm:time_to_first_token_seconds", _TTFT),
    ("vllm:inter_token_latency_seconds", _ITL),
    ("vllm:time_per_output_token_seconds", _ITL),
    ("vllm:request_time_per_output_token_seconds", _ITL),
    ("vllm:e2e_request_latency_seconds", _REQUEST),
    ("vllm:request_queue_time_seconds", _REQUEST),
    ("vllm:request_inference_time_seconds", _REQUEST),
    ("vllm:request_prefill_time_seconds", _REQUEST),
    ("vllm:request_decode_time_seconds", _REQUEST),
    ("vllm:request_prompt_tokens", _TOKENS),
    ("vllm:request_generation_tokens", _TOKENS),
    ("vllm:request_max_num_generation_tokens", _TOKENS),
    ("vllm:request_params_n", (1, 2, 5, 10, 20)),
    ("vllm:request_params_max_tokens", _TOKENS),
    ("vllm:iteration_tokens_total", _TOKENS),
)
VLLM_COUNTERS = (
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:num_preemptions",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:mm_cache_queries",
    "vllm:mm_cache_hits",
)
VLLM_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
HANDLERS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/metrics", "/health")


def _histogram(name: str, bounds: Sequence[float], labels: str, scale: float) -> list[str]:
    out = []
    total = 0.0
    for i, le in enumerate(bounds):
        total += float(i * 7 % 5) * scale
        out.append(f'{name}_bucket{{{labels},le="{float(le)}"}} {total}')
    out.append(f'{name}_bucket{{{labels},le="+Inf"}} {total + scale}')
    out.append(f"{name}_count{{{labels}}} {total + scale}")
    out.append(f"{name}_sum{{{labels}}} {total * 0.173 * scale}")
    out.append(f"{name}_created{{{labels}}} 1.7646e+09")
    return out


def vllm_like_page(engines: int = 2, models: int = 1, scale: float = 1.0) -> str:
    """A page shaped like a V1 vLLM server's /metrics (prometheus_client text format 0.0.4):
    about 106 KB with two engines and one model. `scale` moves every counter."""
    lines: list[str] = [
        "# HELP python_gc_objects_collected_total Objects collected during gc",
        "# TYPE python_gc_objects_collected_total counter",
    ]
    lines += [f'python_gc_objects_collected_total{{generation="{g}"}} 1234.0' for g in range(3)]
    lines += ["# TYPE process_resident_memory_bytes gauge", "process_resident_memory_bytes 3.2e+09"]
    for family in ("http_request_duration_highr_seconds", "http_request_duration_seconds"):
        lines += [f"# HELP {family} Latency.", f"# TYPE {family} histogram"]
        for handler in HANDLERS:
            for method in ("GET", "POST"):
                labels = f'handler="{handler}",method="{method}"'
                lines += _histogram(family, _HTTP, labels, scale)
    label_sets = [
        f'engine="{e}",model_name="Qwen/Qwen2.5-VL-7B-Instruct-{m}"'
        for m in range(models)
        for e in range(engines)
    ]
    for name in VLLM_GAUGES:
        lines += [f"# HELP {name} A gauge.", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{ls}}} {3.0 * scale}" for ls in label_sets]
    for name in VLLM_COUNTERS:
        lines += [f"# HELP {name}_total A counter.", f"# TYPE {name}_total counter"]
        lines += [f"{name}_total{{{ls}}} {1000.0 * scale}" for ls in label_sets]
        lines += [f"{name}_created{{{ls}}} 1.7646e+09" for ls in label_sets]
    lines += ["# TYPE vllm:request_success_total counter"]
    for ls in label_sets:
        for reason in ("stop", "length", "abort", "error"):
            lines.append(
                f'vllm:request_success_total{{{ls},finished_reason="{reason}"}} {10.0 * scale}'
            )
    for name, bounds in VLLM_HISTOGRAMS:
        lines += [f"# HELP {name} A histogram.", f"# TYPE {name} histogram"]
        for ls in label_sets:
            lines += _histogram(name, bounds, ls, scale)
    lines += ["# TYPE vllm:cache_config_info gauge"]
    lines += [f'vllm:cache_config_info{{{ls},block_size="16"}} 1.0' for ls in label_sets]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the target


def _sse(tokens: int) -> list[bytes]:
    def event(doc: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    out = [event({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
    for i in range(tokens):
        finish = "length" if i == tokens - 1 else None
        choice = {"index": 0, "delta": {"content": " tok"}, "finish_reason": finish}
        out.append(event({**base, "choices": [choice]}))
    usage = {"prompt_tokens": 20, "completion_tokens": tokens, "total_tokens": 20 + tokens}
    out.append(event({**base, "choices": [], "usage": usage}))
    out.append(b"data: [DONE]\n\n")
    return out


async def serve(port: int, tokens: int, gap_ms: float) -> None:
    from aiohttp import web

    events = _sse(tokens)
    scrapes = 0

    async def metrics(_request: web.Request) -> web.Response:
        nonlocal scrapes
        scrapes += 1
        # Counters move between scrapes, as a busy server's do; the page stays ~106 KB.
        page = vllm_like_page(scale=1.0 + scrapes)
        return web.Response(text=page, content_type="text/plain")

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, ev in enumerate(events):
            if 1 < i < len(events) - 2:
                await asyncio.sleep(gap_ms / 1000.0)
            await resp.write(ev)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"{LISTENING}http://127.0.0.1:{bound}", flush=True)
    await asyncio.Event().wait()


# ------------------------------------------------------------------ one measured run (child)

SCENARIO = """
name = "bench-scrape"
seed = 1
[target]
model = "{model}"
scrape_metrics = {scrape}
[workload]
prompt = "Describe this image."
max_tokens = {tokens}
[workload.images]
width = 64
height = 64
pool_size = 2
[load]
mode = "closed"
concurrency = {concurrency}
duration = {duration}
[output]
progress = false
"""


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    import anyio

    from loadgen.orchestrator import RunOptions, run_scenario
    from loadgen.scenario import Overrides, load_scenario

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scenario.toml"
        text = SCENARIO.format(
            model=MODEL,
            scrape="true" if spec["scrape"] else "false",
            tokens=spec["tokens"],
            concurrency=spec["concurrency"],
            duration=spec["duration"],
        )
        path.write_text(text)
        scenario = load_scenario(path, Overrides(urls=(spec["url"],)))
        options = RunOptions(run_dir=str(Path(tmp) / "run"), workers=1)
        anyio.run(run_scenario, scenario, options, lambda _m: None)
        # summary.json as written (a dict whichever tree's loadgen wrote it, typed or not)
        summary = orjson.loads((Path(tmp) / "run" / "summary.json").read_bytes())
    itl = summary["phases"]["main"]["latency_ms"]["itl"]
    lag = summary["client"]["shards"][0]["loop_lag_ms"]
    run = (summary["server"].get("run") or {}) if spec["scrape"] else {}
    return {
        "loadgen": str(Path(sys.modules["loadgen"].__file__ or "").parent),
        "itl_p50": itl["p50"],
        "itl_p99": itl["p99"],
        "itl_p99_9": itl["p99.9"],
        "itl_count": itl["count"],
        "lag_p99": lag["p99"],
        "lag_max": lag["max"],
        "scrapes": run.get("samples", 0),
    }


# ------------------------------------------------------------------ the parent


def _load_scrape_module(tree: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, tree / "loadgen/metrics/scrape.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def parse_times(base: Path, page: str, repeat: int) -> dict[str, float]:
    """Median wall time of one parse_metrics call on `page`, in ms, per tree."""
    out = {}
    for label, tree in (("base", base), ("new", ROOT)):
        module = _load_scrape_module(tree, f"_bench_scrape_{label}")
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            module.parse_metrics(page, 0.0)
            times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times) * 1000.0
    return out


def _pin(core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def start_target(args: argparse.Namespace, core: int | None) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, __file__, "--serve", "--tokens", str(args.tokens)]
    cmd += ["--gap-ms", str(args.gap_ms)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, preexec_fn=lambda: _pin(core), cwd=ROOT
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(LISTENING):
        proc.kill()
        raise SystemExit(f"the target did not start: {line!r}")
    return proc, line[len(LISTENING) :].strip()


def run_child(spec: dict[str, Any], tree: Path, core: int | None) -> dict[str, Any]:
    # The tree's loadgen first on the path, and a working folder outside any tree, so that
    # `import loadgen` takes the copy asked for.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", orjson.dumps(spec).decode()],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            preexec_fn=lambda: _pin(core),
            check=False,
            timeout=spec["duration"] + 120,
        )
    if proc.returncode != 0:
        raise SystemExit(f"a measured run failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    if Path(result["loadgen"]).resolve() != (tree / "loadgen").resolve():
        raise SystemExit(f"expected loadgen from {tree}, the run imported {result['loadgen']}")
    return result


FIELDS = ("itl_p50", "itl_p99", "itl_p99_9", "lag_p99", "lag_max", "scrapes")


def render(rows: dict[str, dict[str, float]], parse_ms: dict[str, float], page_kb: float) -> str:
    lines = [
        f"/metrics page {page_kb:.0f} KB; one parse_metrics call: base {parse_ms['base']:.2f} ms, "
        f"new {parse_ms['new']:.3f} ms (x{parse_ms['base'] / parse_ms['new']:.0f})",
        "",
        "mode   ITL p50   ITL p99   ITL p99.9   loop lag p99   loop lag max   scrapes",
    ]
    for mode, r in rows.items():
        lines.append(
            f"{mode:5}  {r['itl_p50']:7.2f}  {r['itl_p99']:8.2f}  {r['itl_p99_9']:10.2f}  "
            f"{r['lag_p99']:13.2f}  {r['lag_max']:13.2f}  {r['scrapes']:8.0f}"
        )
    lines.append("(milliseconds; medians over repetitions)")
    return "\n".join(lines)


def parent_main(args: argparse.Namespace) -> int:
    base = Path(args.base).resolve()
    if not (base / "loadgen" / "metrics" / "scrape.py").exists():
        raise SystemExit(f"--base {base}: no loadgen package there")
    page = vllm_like_page()
    parse_ms = parse_times(base, page, 5 if args.quick else 30)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    target_core, client_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    target, url = start_target(args, target_core)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    try:
        for rep in range(args.reps):
            for mode in MODES:
                spec = {
                    "url": url,
                    "scrape": mode != "off",
                    "tokens": args.tokens,
                    "concurrency": args.concurrency,
                    "duration": args.duration,
                }
                tree = base if mode == "base" else ROOT
                r = run_child(spec, tree, client_core)
                runs[mode].append(r)
                print(
                    f"rep {rep + 1} {mode:4}: ITL p99.9 {r['itl_p99_9']:.2f} ms, "
                    f"loop lag p99 {r['lag_p99']:.2f} ms, {r['scrapes']} scrapes",
                    file=sys.stderr,
                )
    finally:
        target.kill()
        target.wait()
    rows = {m: {f: statistics.median(r[f] for r in runs[m]) for f in FIELDS} for m in MODES}
    print(render(rows, parse_ms, len(page) / 1000))
    if args.json:
        doc = {"parse_ms": parse_ms, "page_bytes": len(page), "rows": rows, "runs": runs}
        doc["args"] = {k: v for k, v in vars(args).items() if k not in ("child", "serve")}
        Path(args.json).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base", default="/work/main", help="the tree for mode `base` (before)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    p.add_argument("--gap-ms", type=float, default=5.0, help="the target's inter-token gap")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 rep of 2 s")
    p.add_argument("--json", metavar="OUT", help="write every figure to OUT")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        asyncio.run(serve(0, args.tokens, args.gap_ms))
        return 0
    if args.child:
        print(orjson.dumps(child_main(orjson.loads(args.child))).decode())
        return 0
    if args.quick:
        args.reps, args.duration = 1, 2.0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
