"""The self-check on real processes: a CPU hog on the client's core is host contention, a client
driven past one core is client-bound, a short light run is neither. The client runs in this
process, pinned to one core; the server runs pinned to the other."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from loadgen.orchestrator import RunOptions, run_scenario
from loadgen.results.schema import to_builtins
from loadgen.scenario import Overrides, load_scenario
from tests.conftest import StartSim

ROOT = Path(__file__).resolve().parent.parent
CLIENT_CORE, SERVER_CORE = 0, 1

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs two cores to pin the client and the server apart",
)

SCENARIO = """
name = "selfcheck"
seed = 5
[workload]
prompt = "Describe this image."
max_tokens = {max_tokens}
ignore_eos = true
[workload.images]
width = 64
height = 64
pool_size = 4
[load]
mode = "closed"
concurrency = {concurrency}
{bound}
"""


@contextmanager
def pinned(core: int) -> Iterator[None]:
    """This process (the client) on one core, for the block."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run_client(tmp_path: Path, url: str, text: str, model: str | None = None) -> dict[str, Any]:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    scenario = load_scenario(path, Overrides(urls=(url,), model=model))
    options = RunOptions(run_dir=str(tmp_path / "run"), handle_signals=False, workers=1)
    with pinned(CLIENT_CORE):
        result = anyio.run(run_scenario, scenario, options, lambda _: None)
    client: dict[str, Any] = to_builtins(result.summary)["client"]
    return client


def causes(client: dict[str, Any]) -> set[str]:
    return {c["cause"] for c in client["causes"]}


def test_a_cpu_hog_on_the_clients_core_is_host_contention(
    tmp_path: Path, sim_server: StartSim
) -> None:
    sim = sim_server()
    assert sim.pid is not None
    os.sched_setaffinity(sim.pid, {SERVER_CORE})
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(hog.pid, {CLIENT_CORE})
        text = SCENARIO.format(max_tokens=32, concurrency=4, bound="duration = 4")
        client = run_client(tmp_path, sim.base_url, text)
    finally:
        hog.kill()
        hog.wait()
    shard = client["shards"][0]
    assert "host_contention" in causes(client), client
    assert client["client_bound"] is False, client  # loadgen itself used a fraction of a core
    assert shard["cpu"]["loop_cores"] < 0.5
    assert shard["host"]["run_queue_wait_share"] > 0.05


def test_a_client_driven_past_one_core_is_client_bound(tmp_path: Path) -> None:
    target = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "bench_client.py"), "--serve", "raw",
         "--tokens", "256", "--chunks-per-write", "4"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        os.sched_setaffinity(target.pid, {SERVER_CORE})
        assert target.stdout is not None
        url = target.stdout.readline().strip().rpartition(" ")[2]
        assert url.startswith("http://127.0.0.1:"), url
        text = SCENARIO.format(max_tokens=256, concurrency=64, bound="duration = 3")
        client = run_client(tmp_path, url, text, model="static")
    finally:
        target.terminate()
        target.wait(10)
    assert "client_cpu_bound" in causes(client), client
    assert client["client_bound"] is True


def test_a_short_light_run_is_not_client_bound(tmp_path: Path, sim_server: StartSim) -> None:
    """Nothing about the client is wrong here. On a machine shared with other work the host may
    still make the loop wait for a CPU, which is reported as such (never as client-bound)."""
    sim = sim_server()
    assert sim.pid is not None
    os.sched_setaffinity(sim.pid, {SERVER_CORE})
    text = SCENARIO.format(max_tokens=16, concurrency=2, bound="requests = 20")
    client = run_client(tmp_path, sim.base_url, text)
    assert causes(client) <= {"host_contention"}, client
    assert client["client_bound"] is False
