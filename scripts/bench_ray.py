#!/usr/bin/env python3
"""Shards on Ray against shards in worker processes: the client's CPU per token, the driver's.

Against scripts/bench_client.py's static raw target (vLLM's stream shape, 256 tokens per request
by default), for 1, 2 and 4 shards, `loadgen run` measures one closed-loop phase with its shards
(a) in N worker processes (`ProcessShard`, as `--workers N`; at N = 1 too, which `--workers 1`
would run in the driver's own process) and (b) as N Ray actors on a local Ray cluster of one node
per actor (`ray start --num-cpus 1` each, scripts/raycluster.py, as tests/ray uses). Per run:

- aggregate tokens/s over the measured phase (its generation tokens over its span);
- the shards' CPU per token: user + system CPU of the worker processes (the driver's children)
  or of the actor processes (their pids from the placement lines `loadgen run` prints:
  "node ... shard K (pid P) clock ..."), read from /proc/PID/stat every 50 ms and interpolated
  at the phase's start and end (the summary's run-clock times + origin_epoch);
- the driver's CPU per record: the `loadgen run` process itself over the same phase;
- the target's CPU, and Ray's other processes' (raylets, GCS, idle workers) in cores.

The scenario has three phases: `warm` (1 s), `measure` (the figures), `tail` (1 s, so that every
process is still alive when the measured phase ends). The target runs on one core, everything on
the client's side (driver, workers, Ray's nodes and their actors) on the other, so N shards share
one core: CPU per token is the figure; tokens/s at N = 1 is what one core holds.

Each repetition runs every N with processes and with Ray, Ray first in every other one (ABBA);
the table gives medians, and Ray's overhead: Ray's CPU per token over the processes' at the same
N (aimed at <= 1.10). The `rate` load sends the same arrivals for every N, where the driver's
CPU per record as N grows is compared (aimed at flat). Then the driver's ceiling: short
responses (8 tokens) from the most shards, where the driver merges the most records/s; its CPU
per record gives the records/s one driver core can merge (1 / that cost).

Ray binds the host's interface: the script re-executes itself under scripts/netns (a network
namespace whose one interface is loopback; needs root) when it is not already in one.

    .venv/bin/python scripts/bench_ray.py --quick              # a smoke run (about 3 minutes)
    .venv/bin/python scripts/bench_ray.py --reps 3 --json ray.json   # about 13 minutes
    .venv/bin/python scripts/bench_ray.py --table ray.json           # the table of a saved run
    .venv/bin/python scripts/bench_ray.py --calls     # what one Ray call costs, per reply size
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from bench_client import Target, _cores, machine, proc_cpu_seconds
from raycluster import ClusterFailed, ClusterUnavailable, RayCluster, local_cluster, only_loopback

ROOT = Path(__file__).resolve().parent.parent
NETNS = ROOT / "scripts" / "netns"
KINDS = ("process", "ray")
LOADS = ("tokens", "rate", "ceiling")
SAMPLE_S = 0.05
PHASE = "measure"
_PLACED = re.compile(r"shard (\d+) \(pid (\d+)\)")


# ---------------------------------------------------------------- pure parts
def placement_pids(lines: Iterable[str]) -> dict[int, int]:
    """Shard number -> its process id, from `loadgen run`'s placement lines
    ("node 127.0.0.1/ab12cd34 (host): shard 0 (pid 4242) clock +0.012 ms ±0.150, shard 2 ...")."""
    pids: dict[int, int] = {}
    for line in lines:
        if line.startswith("node "):
            for shard, pid in _PLACED.findall(line):
                pids[int(shard)] = int(pid)
    return pids


def cpu_at(samples: Sequence[tuple[float, float]], t: float) -> float:
    """A process's CPU seconds at time `t`, linear between the samples (time, cpu) around it;
    ValueError when the samples do not cover `t`."""
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t0 <= t <= t1:
            return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
    span = f"{samples[0][0]:.3f}-{samples[-1][0]:.3f}" if samples else "none"
    raise ValueError(f"no CPU samples around {t:.3f} (samples {span})")


def cpu_between(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    return cpu_at(samples, end) - cpu_at(samples, start)


def derive(run: Mapping[str, Any]) -> dict[str, float]:
    """One run's figures from its counts and CPU seconds over the measured phase."""
    wall = run["wall_s"]
    tokens, records = max(run["tokens"], 1), max(run["records"], 1)
    return {
        "tokens_per_s": run["tokens"] / wall,
        "records_per_s": run["records"] / wall,
        "us_per_token": run["shard_cpu_s"] / tokens * 1e6,
        "us_per_record_shards": run["shard_cpu_s"] / records * 1e6,
        "shard_cores": run["shard_cpu_s"] / wall,
        "driver_us_per_record": run["driver_cpu_s"] / records * 1e6,
        "driver_cores": run["driver_cpu_s"] / wall,
        "ray_other_cores": run["ray_other_cpu_s"] / wall,
        "target_cores": run["target_cpu_s"] / wall,
    }


FIELDS = (
    "tokens_per_s",
    "records_per_s",
    "us_per_token",
    "us_per_record_shards",
    "shard_cores",
    "driver_us_per_record",
    "driver_cores",
    "ray_other_cores",
    "target_cores",
)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (load, shards, kind): medians over repetitions; Ray's rows also carry their
    ratios to the processes' at the same load and N; every row its driver's CPU per record
    over the same kind's at the fewest shards."""
    groups: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    for r in runs:
        groups.setdefault((r["load"], r["shards"], r["kind"]), []).append(
            {**derive(r), "rep": r["rep"]}
        )
    rows = []
    for (load, n, kind), figures in sorted(
        groups.items(), key=lambda g: (LOADS.index(g[0][0]), g[0][1:])
    ):
        row: dict[str, Any] = {"load": load, "shards": n, "kind": kind, "reps": len(figures)}
        row.update({f: statistics.median(x[f] for x in figures) for f in FIELDS})
        row["per_rep_us_per_token"] = [x["us_per_token"] for x in figures]
        row["_by_rep"] = {x["rep"]: x["us_per_token"] for x in figures}
        rows.append(row)
    by = {(r["load"], r["shards"], r["kind"]): r for r in rows}
    for row in rows:
        base = by.get((row["load"], row["shards"], "process"))
        fewest = min(n for (load, n, kind) in by if load == row["load"] and kind == row["kind"])
        first = by[(row["load"], fewest, row["kind"])]
        row["x_process_cpu_per_token"] = (
            ratio(row["us_per_token"], base["us_per_token"]) if base else None
        )
        row["x_process_driver"] = (
            ratio(row["driver_us_per_record"], base["driver_us_per_record"]) if base else None
        )
        row["driver_x_fewest"] = ratio(row["driver_us_per_record"], first["driver_us_per_record"])
        # Paired by repetition (process then Ray, minutes apart): less exposed to the host's
        # load changing over the whole run than the ratio of the medians.
        paired = [
            x / base["_by_rep"][rep]
            for rep, x in row["_by_rep"].items()
            if base and base["_by_rep"].get(rep)
        ]
        row["x_process_paired"] = statistics.median(paired) if paired else None
        row["per_rep_x_process"] = paired
    for row in rows:
        del row["_by_rep"]
    return rows


def verdicts(rows: Sequence[Mapping[str, Any]], limit: float = 1.10) -> dict[str, Any]:
    """Ray's overhead per N (<= limit?) and how flat the driver's CPU per record stays."""
    tokens = [r for r in rows if r["load"] == "tokens"]
    overhead = {
        str(r["shards"]): r["x_process_cpu_per_token"]
        for r in tokens
        if r["kind"] == "ray" and r["x_process_cpu_per_token"] is not None
    }
    paired = {
        str(r["shards"]): r["x_process_paired"]
        for r in tokens
        if r["kind"] == "ray" and r["x_process_paired"] is not None
    }
    # The driver's CPU per record at the same records/s for every N (the `rate` load) when
    # measured: in the closed loop fewer records/s come with more shards on the shared core,
    # and the driver's fixed CPU (its loop, Ray's threads) is then spread over fewer records.
    even = [r for r in rows if r["load"] == "rate"] or tokens
    spread = {}
    for kind in KINDS:
        costs = [r["driver_us_per_record"] for r in even if r["kind"] == kind]
        if costs:
            spread[kind] = max(costs) / min(costs) if min(costs) > 0 else None
    return {
        "driver_load": even[0]["load"] if even else None,
        "ray_overhead": overhead,
        "ray_overhead_within": all(x <= limit for x in overhead.values()) if overhead else None,
        "ray_overhead_paired": paired,
        "limit": limit,
        "driver_max_over_min": spread,
    }


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render(rows: Sequence[Mapping[str, Any]]) -> str:
    head = (
        f"{'load':<7} {'N':>2} {'kind':<8} {'tokens/s':>9} {'records/s':>9} {'us/token':>8} "
        f"{'x proc':>6} {'shard cores':>11} {'driver us/rec':>13} {'x N=1':>5} {'x proc':>6} "
        f"{'driver cores':>12} {'ray other':>9} {'target':>6}  per rep us/token"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        reps = " ".join(f"{x:.2f}" for x in r["per_rep_us_per_token"])
        lines.append(
            f"{r['load']:<7} {r['shards']:>2} {r['kind']:<8} {r['tokens_per_s']:>9.0f} "
            f"{r['records_per_s']:>9.0f} {r['us_per_token']:>8.2f} "
            f"{_num(r['x_process_cpu_per_token'], '.2f'):>6} {r['shard_cores']:>11.2f} "
            f"{r['driver_us_per_record']:>13.1f} {_num(r['driver_x_fewest'], '.2f'):>5} "
            f"{_num(r['x_process_driver'], '.2f'):>6} {r['driver_cores']:>12.3f} "
            f"{r['ray_other_cores']:>9.3f} {r['target_cores']:>6.2f}  {reps}"
        )
    return "\n".join(lines)


def render_verdicts(v: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    overhead = ", ".join(f"N={n}: {x:.2f}" for n, x in v["ray_overhead"].items())
    paired = ", ".join(f"N={n}: {x:.2f}" for n, x in v["ray_overhead_paired"].items())
    ok = {True: "within", False: "NOT within", None: "-"}[v["ray_overhead_within"]]
    spread = ", ".join(f"{k} {_num(x, '.2f')}" for k, x in v["driver_max_over_min"].items())
    lines = [
        f"Ray's CPU per token over the worker processes' at the same N: {overhead} "
        f"({ok} {v['limit']:.2f}); median of the ratios paired by repetition: {paired}",
        f"driver CPU per record ({v.get('driver_load') or 'tokens'} load), largest over smallest "
        f"across N: {spread}",
    ]
    for r in rows:
        if r["load"] == "ceiling":
            lines.append(
                f"driver ceiling ({r['kind']}, {r['shards']} shards, short responses): "
                f"{r['driver_us_per_record']:.1f} us/record -> "
                f"{1e6 / r['driver_us_per_record']:,.0f} records/s per driver core "
                f"(reached {r['records_per_s']:,.0f} records/s at {r['driver_cores']:.3f} cores)"
            )
    return "\n".join(lines)


def scenario_toml(
    *,
    shards: int,
    streams: int,
    requests: int,
    tokens: int,
    warm_s: float = 1.0,
    rate: float | None = None,
) -> str:
    """The benchmark's scenario: `streams` closed-loop streams in all, split over `shards`; with
    `rate`, arrivals at that many requests/s in all instead (at most `streams` in flight)."""
    load = (
        f'mode = "closed"\nconcurrency = {streams}'
        if rate is None
        else f'mode = "constant"\nrate = {rate}\nmax_concurrency = {streams}'
    )
    phases = "".join(
        f'[[phases]]\nname = "{name}"\n{load}\n{bound}\n'
        for name, bound in (
            ("warm", f"duration = {warm_s}"),
            (PHASE, f"requests = {requests}"),
            ("tail", f"duration = {warm_s}"),
        )
    )
    return (
        'name = "bench-ray"\nseed = 1\n[target]\nmodel = "sim-vlm"\nscrape_metrics = false\n'
        f"[workload]\nmax_tokens = {tokens}\nignore_eos = true\nimages_per_request = 0\n"
        f"[output]\nprogress = false\n[distributed]\nworkers = {shards}\nnum_cpus = 1.0\n" + phases
    )


# ---------------------------------------------------------------- processes and CPU
def children(pids: Iterable[int]) -> set[int]:
    """Every descendant of `pids` (from each process's parent id in /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = set(pids)
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found |= frontier
    return found


def worker_pids(driver: int) -> list[int]:
    """The driver's worker processes (`python -m loadgen.workers`, its direct children)."""
    found = []
    for pid in sorted(children([driver])):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == driver and b"loadgen.workers" in cmdline:
            found.append(pid)
    return found


class Sampler:
    """Every SAMPLE_S, the CPU seconds of each watched process, with the wall-clock time."""

    def __init__(self) -> None:
        self.series: dict[int, list[tuple[float, float]]] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def watch(self, pids: Iterable[int]) -> None:
        with self._lock:
            for pid in pids:
                self.series.setdefault(pid, [])

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._done.wait(SAMPLE_S):
            with self._lock:
                for pid, series in self.series.items():
                    with contextlib.suppress(OSError, IndexError, ValueError):  # gone
                        series.append((time.time(), proc_cpu_seconds(pid)))

    def cpu(self, pids: Iterable[int], start: float, end: float) -> float:
        with self._lock:
            return sum(cpu_between(self.series[p], start, end) for p in pids)


@dataclass
class Bench:
    args: argparse.Namespace
    target: Target
    cluster: RayCluster
    client_core: int | None
    out: Path

    def run(self, kind: str, shards: int, rep: int, load: str) -> dict[str, Any]:
        a = self.args
        tokens, streams, requests = {
            "tokens": (a.tokens, a.streams_per_shard * shards, a.requests),
            "rate": (a.tokens, a.streams_per_shard * shards, a.rate_requests),
            "ceiling": (a.ceiling_tokens, a.ceiling_streams_per_shard * shards, a.ceiling_requests),
        }[load]
        name = f"{load}-{kind}-{shards}-{rep}"
        scenario = self.out / f"{name}.toml"
        scenario.write_text(
            scenario_toml(
                shards=shards,
                streams=streams,
                requests=requests,
                tokens=tokens,
                rate=a.rate if load == "rate" else None,
            )
        )
        run_dir = self.out / name
        cmd = [str(scenario), "--url", self.target.url, "--run-dir", str(run_dir), "--no-report"]
        if kind == "ray":
            cmd = [sys.executable, "-m", "loadgen", "run", *cmd, "--ray", self.cluster.address]
        else:  # worker processes even for one shard
            cmd = [sys.executable, __file__, "--driver", "run", *cmd, "--workers", str(shards)]
        figures = self._measure(cmd, kind, shards, run_dir)
        figures.update(kind=kind, shards=shards, rep=rep, load=load, tokens_per_request=tokens)
        figures.update(streams=streams)
        d = derive(figures)
        print(
            f"  {load:<7} N={shards} {kind:<7} rep {rep}: {d['tokens_per_s']:8.0f} tokens/s "
            f"{d['records_per_s']:6.0f} records/s  shards {d['us_per_token']:.2f} us/token "
            f"({d['shard_cores']:.2f} cores)  driver {d['driver_us_per_record']:.1f} us/record "
            f"({d['driver_cores']:.3f} cores)  ray other {d['ray_other_cores']:.3f} cores  "
            f"target {d['target_cores']:.2f} cores",
            file=sys.stderr,
            flush=True,
        )
        return figures

    def _measure(self, cmd: list[str], kind: str, shards: int, run_dir: Path) -> dict[str, Any]:
        core = self.client_core
        pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
        with Sampler() as sampler:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pin
            )
            sampler.watch([proc.pid, self.target.pid])
            try:
                said, shard_pids = self._find_shards(proc, kind, shards)
                if core is not None:
                    for pid in shard_pids:
                        os.sched_setaffinity(pid, {core})
                others = children(self.cluster.pids) - set(shard_pids) if kind == "ray" else set()
                sampler.watch([*shard_pids, *others])
                _out, err = proc.communicate(timeout=600)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if proc.returncode != 0:
                raise RuntimeError(f"loadgen run failed ({proc.returncode}): {said}{err[-3000:]}")
        summary = orjson.loads((run_dir / "summary.json").read_bytes())
        phase = summary["phases"][PHASE]
        origin = summary["run"]["origin_epoch"]
        start, end = origin + phase["started"], origin + phase["ended"]
        live_others = [p for p in others if len(sampler.series.get(p, [])) >= 2]
        return {
            "wall_s": phase["ended"] - phase["started"],
            "tokens": phase["tokens"]["generation"],
            "records": phase["requests"]["total"],
            "errors": phase["requests"]["failed"],
            "shard_cpu_s": sampler.cpu(shard_pids, start, end),
            "driver_cpu_s": sampler.cpu([proc.pid], start, end),
            "target_cpu_s": sampler.cpu([self.target.pid], start, end),
            "ray_other_cpu_s": _cpu_or_zero(sampler, live_others, start, end),
            "shard_pids": shard_pids,
        }

    @staticmethod
    def _find_shards(proc: subprocess.Popen[str], kind: str, shards: int) -> tuple[str, list[int]]:
        """Read the driver's stderr up to "workload ready" (and, on Ray, the placement lines):
        the shards' processes."""
        assert proc.stderr is not None
        lines: list[str] = []
        ready = False
        while True:
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError(
                    f"loadgen run ended before its shards were placed: {''.join(lines)}"
                )
            lines.append(line)
            ready = ready or line.startswith("workload ready")
            if not ready:
                continue
            if kind == "ray":
                pids = placement_pids(lines)
                if len(pids) == shards:
                    return "".join(lines), [pids[k] for k in sorted(pids)]
            else:
                workers = worker_pids(proc.pid)
                if len(workers) != shards:
                    raise RuntimeError(f"expected {shards} worker processes, found {workers}")
                return "".join(lines), workers


def _cpu_or_zero(sampler: Sampler, pids: Sequence[int], start: float, end: float) -> float:
    """Ray's other processes: those that lived through the phase (one that came or went during
    it, such as a worker Ray prestarted, is left out)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(ValueError):
            total += sampler.cpu([pid], start, end)
    return total


def _schedule(ns: Sequence[int], reps: int) -> Iterator[tuple[int, int, str]]:
    for rep in range(reps):
        for n in ns:
            # Each N with processes and on Ray, one after the other, in every repetition; Ray
            # first in every other one (ABBA), so neither kind always runs on a warmer host.
            for kind in KINDS if rep % 2 == 0 else KINDS[::-1]:
                yield rep, n, kind


# ---------------------------------------------------------------- the cost of one Ray call
CALL_SIZES = (10 << 10, 96 << 10, 1 << 20, 4 << 20)
IDLE_S = 10.0


class _Replier:
    """An actor answering with `size` bytes, as a shard's take does (bytes, ended, status)."""

    def pid(self) -> int:
        return os.getpid()

    def take(self, size: int) -> tuple[bytes, bool, int | None]:
        return b"x" * size, False, None


def calls_driver(address: str, other_pids: Sequence[int]) -> int:
    """In a driver of its own (Ray's token auth is read when Ray is imported): awaited calls
    of an actor on another node, as RayShard makes them, per reply size; CPU per call of the
    driver, of the actor, of Ray's other processes (raylets and their object stores, GCS)."""
    import asyncio

    import ray

    ray.init(address=address, logging_level=logging.ERROR, include_dashboard=False)
    remote: Any = ray.remote(_Replier).options(
        num_cpus=1, max_concurrency=4, resources={"node1": 0.01}
    )
    actor = remote.remote()
    actor_pid = int(ray.get(actor.pid.remote()))
    others = [p for p in other_pids if p != actor_pid]

    async def calls(size: int, n: int) -> None:
        for _ in range(n):
            await actor.take.remote(size)

    # An actor's fixed cost: Ray's threads in its process with no call at all.
    time.sleep(2)
    before = [proc_cpu_seconds(os.getpid()), proc_cpu_seconds(actor_pid)]
    time.sleep(IDLE_S)
    pids = (os.getpid(), actor_pid)
    idle = [(proc_cpu_seconds(p) - b) / IDLE_S for p, b in zip(pids, before, strict=True)]
    rows: list[dict[str, float]] = [{"idle_driver_cores": idle[0], "idle_actor_cores": idle[1]}]
    for size in CALL_SIZES:
        n = max(100, min(2000, (400 << 20) // size))
        asyncio.run(calls(size, 20))  # warm
        before = [proc_cpu_seconds(os.getpid()), proc_cpu_seconds(actor_pid), _cpus(others)]
        began = time.perf_counter()
        asyncio.run(calls(size, n))
        wall = time.perf_counter() - began
        after = [proc_cpu_seconds(os.getpid()), proc_cpu_seconds(actor_pid), _cpus(others)]
        us = [(b - a) / n * 1e6 for a, b in zip(before, after, strict=True)]
        rows.append(
            {
                "bytes": size,
                "calls": n,
                "calls_per_s": n / wall,
                "driver_us": us[0],
                "actor_us": us[1],
                "ray_other_us": us[2],
            }
        )
    print(orjson.dumps(rows).decode())
    return 0


def _cpus(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += proc_cpu_seconds(pid)
    return total


def calls_main() -> int:
    """A two-node cluster; one driver measuring calls to an actor on the other node."""
    try:
        with local_cluster(2, num_cpus=1) as cluster:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--calls-driver",
                    cluster.address,
                    ",".join(str(p) for p in children(cluster.pids)),
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
    except (ClusterUnavailable, ClusterFailed) as exc:
        print(f"bench_ray: no local Ray cluster: {exc}", file=sys.stderr)
        return 2
    if out.returncode != 0:
        print(f"bench_ray: the calls driver failed: {out.stderr[-3000:]}", file=sys.stderr)
        return 1
    idle, *rows = orjson.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"idle, no call: driver {idle['idle_driver_cores']:.4f} cores, actor "
        f"{idle['idle_actor_cores']:.4f} cores (Ray's own threads)"
    )
    print("reply    calls/s  CPU per call, us: driver  actor  Ray's other processes  total per MiB")
    for r in rows:
        total = r["driver_us"] + r["actor_us"] + r["ray_other_us"]
        print(
            f"{r['bytes'] >> 10:5d} KiB {r['calls_per_s']:8.0f} {r['driver_us']:23.0f} "
            f"{r['actor_us']:6.0f} {r['ray_other_us']:22.0f} {total / r['bytes'] * (1 << 20):14.0f}"
        )
    return 0


# ---------------------------------------------------------------- entry points
def driver_main(argv: Sequence[str]) -> int:
    """`loadgen ARGV` in this process, its shards in worker processes however many there are
    (`loadgen run --workers 1` would run a single shard in the driver itself)."""
    from loadgen import cli, orchestrator

    placement = orchestrator.placement

    def processes(scenario: Any, workers: int, simulated: bool, kind: str = "") -> Any:
        return placement(scenario, workers, simulated, kind or "process")

    orchestrator.placement = processes  # type: ignore[assignment]
    return cli.main(argv)


def _reexec_in_namespace(argv: Sequence[str]) -> int:
    if os.geteuid() != 0:
        print(
            "bench_ray: Ray must run in a network namespace with only loopback, which needs "
            "root: run it as root, or under scripts/netns",
            file=sys.stderr,
        )
        return 2
    os.execv(str(NETNS), [str(NETNS), sys.executable, __file__, *argv])


def parent_main(args: argparse.Namespace) -> int:
    if args.quick:
        args.shards, args.reps, args.requests, args.ceiling_requests = "1,2", 1, 800, 3000
    ns = [int(x) for x in args.shards.split(",") if x]
    loads = {x for x in args.loads.split(",") if x}
    if not args.ceiling:
        loads.discard("ceiling")
    target_core, client_core = _cores()
    if target_core is not None:
        os.sched_setaffinity(0, {target_core})  # this process mostly sleeps: off the clients' core
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )  # the driver, its workers and Ray's actors import loadgen from this tree
    doc: dict[str, Any] = {
        "machine": machine(),
        "argv": sys.argv,
        "cores": {"target": target_core, "clients": client_core},
        "tokens_per_request": args.tokens,
        "streams_per_shard": args.streams_per_shard,
        "requests": args.requests,
        "rate": {"requests_per_s": args.rate, "requests": args.rate_requests},
        "ceiling": {
            "tokens_per_request": args.ceiling_tokens,
            "streams_per_shard": args.ceiling_streams_per_shard,
            "requests": args.ceiling_requests,
        },
        "runs": [],
    }
    clients = [client_core] if client_core is not None else None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp,
            local_cluster(max(ns), num_cpus=1, cpus=clients) as cluster,
            Target("raw", target_core, args.tokens, args.chunks_per_write) as target,
        ):
            bench = Bench(args, target, cluster, client_core, Path(tmp))
            for load in ("tokens", "rate"):
                if load in loads:
                    for rep, n, kind in _schedule(ns, args.reps):
                        doc["runs"].append(bench.run(kind, n, rep, load))
            if "ceiling" in loads:
                for rep, _, kind in _schedule([max(ns)], args.reps):
                    doc["runs"].append(bench.run(kind, max(ns), rep, "ceiling"))
    except (ClusterUnavailable, ClusterFailed) as exc:
        print(f"bench_ray: no local Ray cluster: {exc}", file=sys.stderr)
        return 2
    report(doc, args)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0


def report(doc: dict[str, Any], args: argparse.Namespace) -> None:
    """The table and the verdicts from the runs (also from a saved --json file: --table)."""
    doc["rows"] = rows = summarize(doc["runs"])
    doc["verdicts"] = v = verdicts(rows)
    ceiling = doc["ceiling"]
    print(
        f"target raw (vLLM stream shape) on core {doc['cores']['target']}; driver, shards and Ray "
        f"nodes on core {doc['cores']['clients']}; {doc['tokens_per_request']} tokens per request, "
        f"{doc['streams_per_shard']} streams per shard, {doc['requests']} requests measured; "
        f"ceiling: {ceiling['tokens_per_request']} tokens, {ceiling['streams_per_shard']} "
        f"streams per shard, {ceiling['requests']} requests; rate: "
        f"{doc.get('rate', {}).get('requests_per_s', '-')} requests/s in all, "
        f"{doc.get('rate', {}).get('requests', '-')} requests; medians over "
        f"{max(r['reps'] for r in rows)} repetitions"
    )
    print(render(rows))
    print(render_verdicts(v, rows))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--driver"]:
        return driver_main(argv[1:])
    if argv[:1] == ["--calls-driver"] and len(argv) == 3:
        return calls_driver(argv[1], [int(p) for p in argv[2].split(",") if p])
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: N = 1, 2, one repetition")
    p.add_argument("--json", metavar="OUT", help="write every figure to OUT")
    p.add_argument("--shards", default="1,2,4", help="comma-separated shard counts")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each run")
    p.add_argument("--tokens", type=int, default=256, help="output tokens per request")
    p.add_argument("--streams-per-shard", type=int, default=32)
    p.add_argument("--requests", type=int, default=6000, help="requests in the measured phase")
    p.add_argument("--chunks-per-write", type=int, default=4, help="the raw target's")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false")
    p.add_argument(
        "--loads",
        default="tokens,rate,ceiling",
        help="which of: tokens (closed loop, as fast as each N goes), rate (the same arrival "
        "rate for every N: the driver's CPU per record at equal records/s), ceiling",
    )
    p.add_argument("--rate", type=float, default=400.0, help="requests/s in all, for `rate`")
    p.add_argument("--rate-requests", type=int, default=4800)
    p.add_argument("--ceiling-tokens", type=int, default=8)
    p.add_argument("--ceiling-streams-per-shard", type=int, default=64)
    p.add_argument("--ceiling-requests", type=int, default=30000)
    p.add_argument("--table", metavar="JSON", help="print the table of a saved --json file")
    p.add_argument(
        "--calls", action="store_true", help="only the CPU cost of one Ray call, per reply size"
    )
    args = p.parse_args(argv)
    if args.table:
        report(orjson.loads(Path(args.table).read_bytes()), args)
        return 0
    if not only_loopback():
        return _reexec_in_namespace(argv)
    return calls_main() if args.calls else parent_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
