"""What a run actually sends, end to end against the simulator: a phase bounded only by time gets
fresh bodies for as long as it runs, and summary.json counts the distinct images and bodies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from loadgen.orchestrator import RunOptions, RunResult, run_scenario
from loadgen.records import RequestRecord
from loadgen.results.files import read_json, read_requests
from loadgen.results.report_text import render_summary
from loadgen.results.schema import to_builtins
from loadgen.scenario import Overrides, load_scenario
from tests.conftest import StartSim

# Tiny images and a few tokens on the fast profile: a closed loop of 16 streams sends far more
# requests in its duration than the payloads a shard builds ahead of the phase.
TIMED = """
name = "timed"
seed = 5
[workload]
prompts = ["Describe this image.", "What is in this picture?", "Name the main colour."]
max_tokens = 2
ignore_eos = true
[workload.images]
width = 32
height = 32
content = "gradient"
format = "png"
{images}
[load]
mode = "closed"
concurrency = 16
duration = {duration}
"""


def _run(tmp_path: Path, text: str, url: str, name: str, workers: int) -> RunResult:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    scenario = load_scenario(path, Overrides(urls=(url,)))
    options = RunOptions(run_dir=str(tmp_path / name), handle_signals=False, workers=workers)
    messages: list[str] = []
    return anyio.run(run_scenario, scenario, options, messages.append)


def _records(result: RunResult, phase: str = "main") -> list[RequestRecord]:
    return [r for r in read_requests(result.run_dir / "requests.jsonl") if r.phase == phase]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_timed_closed_loop_sends_fresh_bodies_for_its_whole_duration(
    tmp_path: Path, sim_server: StartSim, workers: int
) -> None:
    sim = sim_server()
    text = TIMED.format(images="", duration=1.5)
    result = _run(tmp_path, text, sim.base_url, f"w{workers}", workers)
    records = _records(result)
    # More than twice what a shard's payloads were once built for (8 per stream), so any wrap
    # around the payloads built before the phase would show as repeats.
    assert len(records) > 2 * 8 * 16
    images = Counter(i for r in records for i in r.images)
    assert len(images) == len(records)  # one image a request ...
    assert max(images.values()) == 1  # ... never shown twice
    bodies = Counter(r.body for r in records)
    assert None not in bodies and max(bodies.values()) == 1
    sent = to_builtins(result.summary)["phases"]["main"]["workload"]
    assert sent["distinct_images"] == len(images)
    assert sent["distinct_bodies"] == len(bodies)
    assert sent["images_shown"] == len(records)
    # Requests that waited for their body are counted, and their wait is schedule lag.
    assert 0 <= sent["waited_for_body"] <= len(records)
    lag = sum(r.schedule_lag for r in records)
    assert sent["body_wait_s"] <= lag + 1e-3
    text = render_summary(result.summary)
    line = f"workload: {len(images):,} distinct images, {len(bodies):,} distinct bodies in "
    assert line in text
    assert ("requests waited for their images to be built" in text) == bool(sent["waited_for_body"])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_timed_closed_loop_over_a_pool_says_how_much_it_reused(
    tmp_path: Path, sim_server: StartSim, workers: int
) -> None:
    sim = sim_server()
    text = TIMED.format(images="pool_size = 5", duration=1.0)
    result = _run(tmp_path, text, sim.base_url, f"w{workers}", workers)
    records = _records(result)
    assert len(records) > 2 * 15
    images = {i for r in records for i in r.images}
    bodies = {r.body for r in records}
    assert len(images) == 5
    # 3 prompts round-robin over 5 images in turn: 15 different bodies, then they repeat.
    assert len(bodies) == 15
    sent = to_builtins(result.summary)["phases"]["main"]["workload"]
    assert (sent["distinct_images"], sent["distinct_bodies"]) == (5, 15)
    assert sent["images_shown"] == len(records)


def test_ctrl_c_stops_a_run_that_builds_bodies_ahead(tmp_path: Path, sim_server: StartSim) -> None:
    """`python -m loadgen` in one process: the builder process starts (the main module is not
    run again) and a Ctrl-C, which reaches it too, ends the run cleanly."""
    sim = sim_server()
    path = tmp_path / "timed.toml"
    path.write_text(TIMED.format(images="", duration=60))
    run_dir = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadgen", "run", str(path), "--url", sim.base_url,
         "--run-dir", str(run_dir), "--workers", "1", "--no-progress", "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    log = run_dir / "requests.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") > 2 * 8 * 16:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-3000:]
    assert b"usage:" not in err  # the builder did not run the command line again
    records = [r for r in read_requests(log) if r.phase == "main"]
    assert len(records) > 2 * 8 * 16
    summary = read_json(run_dir / "summary.json")
    sent = summary["phases"]["main"]["workload"]
    assert sent["distinct_images"] == len({i for r in records for i in r.images}) == len(records)
