"""Shards as Ray actors on a two-node Ray cluster on this machine (tests/ray/conftest.py): the
same seeded run as two worker processes, exactly; an actor killed mid-phase; the clocks."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
from bench_ray import placement_pids  # scripts/, on the path (tests/ray/conftest.py)

from loadgen.records import RequestRecord
from loadgen.results.files import read_requests
from loadgen.sim.process import SimulatorProcess
from tests.conftest import StartSim, start_loadgen
from tests.ray.conftest import RayCluster

SCENARIO = """
name = "{name}"
seed = 11
[target]
model = "sim-vlm"
[workload]
max_tokens = {max_tokens}
ignore_eos = true
[workload.images]
source = "synthetic"
width = 64
height = 48
pool_size = 5
[output]
window = 1.0
progress = false
[distributed]
workers = 2
[[phases]]
name = "closed"
mode = "closed"
concurrency = 6
requests = {requests}
[[phases]]
name = "open"
mode = "poisson"
rate = 40.0
max_concurrency = 4
requests = 24
"""


def _scenario(tmp_path: Path, name: str, requests: int = 36, max_tokens: int = 24) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(SCENARIO.format(name=name, requests=requests, max_tokens=max_tokens))
    return path


def _run(*args: str, timeout: float = 240) -> tuple[dict[str, Any], str]:
    proc = start_loadgen("run", *args, "--json", "--no-report")
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()
    summary: dict[str, Any] = orjson.loads(out)
    return summary, err.decode()


def _requests(run_dir: str) -> list[RequestRecord]:
    return read_requests(Path(run_dir) / "requests.jsonl")


def test_ray_actors_measure_what_worker_processes_measure(
    tmp_path: Path, sim_server: StartSim, ray_cluster: RayCluster
) -> None:
    summaries: dict[str, dict[str, Any]] = {}
    for kind in ("process", "ray"):
        sim = sim_server("--enable-prompt-tokens-details", "--step-base-ms", "10")
        args = [str(_scenario(tmp_path, kind)), "--url", sim.base_url]
        args += ["--run-dir", str(tmp_path / kind)]
        if kind == "ray":
            args += ["--ray", ray_cluster.address]
        summaries[kind], err = _run(*args)
        assert summaries[kind]["status"] == "completed", err
        assert summaries[kind]["run"]["workers"] == 2
    local, ray = summaries["process"], summaries["ray"]
    assert local["distributed"] is None
    where = ray["distributed"]
    assert where["backend"] == "ray" and where["address"] == ray_cluster.address
    # One actor on each node (a placement group spread over the nodes).
    assert where["nodes"] == 2
    assert len({s["node_id"] for s in where["shards"]}) == 2
    for shard in where["shards"]:
        # Every node is on this host: the true offset is 0, which the measurement must bound.
        assert abs(shard["clock_offset_s"]) <= shard["clock_uncertainty_s"] + 50e-6, shard
        assert 0 < shard["clock_uncertainty_s"] < 0.05
    assert where["worst_clock_uncertainty_s"] == max(
        s["clock_uncertainty_s"] for s in where["shards"]
    )
    # The self-check per shard and per node.
    assert len(ray["client"]["shards"]) == 2
    assert {n["node"] for n in ray["client"]["nodes"]} == {s["node"] for s in where["shards"]}
    for phase in ("closed", "open"):
        one, two = local["phases"][phase], ray["phases"][phase]
        assert one["requests"] == two["requests"]
        assert one["outcomes"] == two["outcomes"]
        for key in ("prompt", "generation", "total", "missing_usage_requests"):
            assert one["tokens"][key] == two["tokens"][key], (phase, key)
        for metric in ("ttft", "itl", "itl_chunk", "tpot", "e2e"):
            assert one["latency_ms"][metric]["count"] == two["latency_ms"][metric]["count"]
        # Token totals equal to the simulator's own counters over the phase.
        server = ray["server"]["phases"][phase]
        assert server["delta"]["prompt_tokens"] == two["tokens"]["prompt"]
        assert server["delta"]["generation_tokens"] == two["tokens"]["generation"]
        assert server["comparison"]["mismatch"] is False
    # The same requests: identical (phase, index, images, body) sets, split over both shards.
    sent = {
        kind: sorted(
            (r.phase, r.index, tuple(r.images), r.body) for r in _requests(str(tmp_path / kind))
        )
        for kind in ("process", "ray")
    }
    assert sent["process"] == sent["ray"]
    assert len(sent["ray"]) == 36 + 24
    assert {r.shard for r in _requests(str(tmp_path / "ray"))} == {0, 1}


def _wait_for(proc: subprocess.Popen[bytes], lines: list[str], prefix: str) -> str:
    assert proc.stderr is not None
    while True:
        raw = proc.stderr.readline()
        assert raw, f"loadgen ended before {prefix!r}: {''.join(lines)}"
        line = raw.decode()
        lines.append(line)
        if prefix in line:
            return line


def _start_on_ray(
    tmp_path: Path, sim: SimulatorProcess, cluster: RayCluster, name: str
) -> tuple[subprocess.Popen[bytes], list[str], dict[int, int]]:
    """`loadgen run` of a long two-shard scenario on the cluster, once both actors are placed:
    the process, its stderr lines so far, and each shard's actor pid (from its placement line)."""
    path = _scenario(tmp_path, name, requests=400, max_tokens=16)
    proc = start_loadgen(
        "run", str(path), "--url", sim.base_url, "--ray", cluster.address,
        "--run-dir", str(tmp_path / name), "--no-report",
    )  # fmt: skip
    lines: list[str] = []
    try:
        _wait_for(proc, lines, "workload ready")
        pids: dict[int, int] = {}
        while len(pids) < 2:
            pids = placement_pids([*lines, _wait_for(proc, lines, "node ")])
    except BaseException:
        proc.kill()
        raise
    return proc, lines, pids


def test_an_actor_killed_mid_phase_is_a_stated_loss(
    tmp_path: Path, sim_server: StartSim, ray_cluster: RayCluster
) -> None:
    run_dir = tmp_path / "killed"
    proc, lines, pids = _start_on_ray(
        tmp_path, sim_server("--step-base-ms", "20"), ray_cluster, "killed"
    )
    try:
        victim = pids[1]
        # Some of shard 1's requests delivered, then its actor's process is killed.
        log = run_dir / "requests.jsonl"
        deadline = time.monotonic() + 60
        while sum(r.shard == 1 for r in _safe_read(log)) < 10:
            assert time.monotonic() < deadline, "shard 1 delivered nothing"
            time.sleep(0.1)
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = "".join(lines) + err.decode()
    assert proc.returncode == 3, said  # incomplete
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "incomplete"
    (loss,) = summary["losses"]
    assert loss["shard"] == 1 and loss["phase"] == "closed"
    assert "Ray actor" in loss["cause"] and "died" in loss["cause"], loss
    assert "worker 1 lost in phase closed" in said
    assert "ray shards on 2 node(s)" in out.decode()
    records = _requests(str(run_dir))
    mine = [r for r in records if r.shard == 1]
    assert loss["records"] == len(mine) >= 10  # delivered before the kill: kept
    # The other shard finished its share of the phase (half of 400 over 6 lanes: 3 lanes).
    theirs = [r for r in records if r.shard == 0 and r.phase == "closed"]
    assert len(theirs) == 200
    assert summary["phases"]["closed"]["requests"]["total"] == 200 + len(mine)


def _safe_read(path: Path) -> list[RequestRecord]:
    """The records written so far (the last line may be half written)."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]
    tmp = path.with_suffix(".partial")
    tmp.write_bytes(b"".join(line + b"\n" for line in lines))
    return read_requests(tmp)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too: it only waits for its parent (the node) to reap it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # reaped meanwhile
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_the_actors_die_with_a_killed_driver(
    tmp_path: Path, sim_server: StartSim, ray_cluster: RayCluster
) -> None:
    proc, _lines, pids = _start_on_ray(
        tmp_path, sim_server("--step-base-ms", "20"), ray_cluster, "orphans"
    )
    try:
        actors = list(pids.values())
        time.sleep(1.0)  # mid-phase
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 60
    while not all(_gone(pid) for pid in actors):
        assert time.monotonic() < deadline, f"actors {actors} outlived their driver"
        time.sleep(0.5)


def test_a_node_without_the_drivers_api_key_stops_the_run_before_it_starts(
    tmp_path: Path, sim_server: StartSim, ray_cluster: RayCluster, monkeypatch: Any
) -> None:
    """The cluster's nodes were started without the variable the driver has: every request of
    theirs would go without the key. The run stops at placement, names the node and the
    variable, and never prints the key."""
    key = "sk-loadgen-ray-test-7f3a9c"
    monkeypatch.setenv("LOADGEN_RAY_TEST_KEY", key)
    sim = sim_server()
    path = _scenario(tmp_path, "nokey")
    path.write_text(
        path.read_text().replace("[target]\n", '[target]\napi_key_env = "LOADGEN_RAY_TEST_KEY"\n')
    )
    proc = start_loadgen(
        "run",
        str(path),
        "--url",
        sim.base_url,
        "--run-dir",
        str(tmp_path / "nokey"),
        "--no-report",
        "--ray",
        ray_cluster.address,
    )
    out, err = proc.communicate(timeout=240)
    text = (out + err).decode()
    assert proc.returncode == 2, text  # a run that cannot start, as for a bad scenario
    assert "no API key there ($LOADGEN_RAY_TEST_KEY is not set)" in text, text
    assert "on node 127.0.0.1" in text
    assert key not in text and key[:12] not in text
    assert not (tmp_path / "nokey" / "requests.jsonl").exists() or not _requests(
        str(tmp_path / "nokey")
    )  # nothing was sent
