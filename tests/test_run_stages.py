"""The run's seams: a new kind of shard runs through the orchestrator unchanged, an observer hears
the run's events in order, and the orchestrator renders nothing itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
import anyio.abc
import orjson
import pytest

from loadgen import shards as shards_module
from loadgen.config import DistributedConfig, PhaseConfig
from loadgen.observer import LiveRun, RunObserver
from loadgen.orchestrator import RunOptions, RunResult, run_scenario
from loadgen.results.files import read_requests
from loadgen.runner import PhaseTiming
from loadgen.scenario import Overrides, load_scenario
from loadgen.shard import LocalShard, PhaseResult, Shard, ShardJob, ShardProgress, WriteLine
from loadgen.shards import ShardKind
from tests.conftest import StartSim

ROOT = Path(__file__).resolve().parent.parent

TWO_PHASES = """
name = "stages"
seed = 5
[workload]
prompt = "Describe this image."
max_tokens = 8
ignore_eos = true
[workload.images]
width = 64
height = 64
pool_size = 2
[load]
mode = "closed"
concurrency = 2
[[phases]]
name = "a"
requests = 6
[[phases]]
name = "b"
requests = 4
"""


class RemoteShard:
    """A third kind of shard, as one on another machine would be: its records cross a "wire"
    as lines (decoded and re-encoded here, as a remote end would), its phase results as JSON.
    It does its work through a LocalShard standing in for the far side."""

    start_margin = 0.05
    place = "test host"
    placed = None
    calls: ClassVar[list[tuple[int, str]]] = []  # (shard, call), for every instance

    def __init__(self, job: ShardJob, write: WriteLine, api_key: str | None) -> None:
        self.job = job
        self.lines = 0

        def over_the_wire(line: bytes) -> None:
            self.lines += 1
            write(orjson.dumps(orjson.loads(line)))

        self.far = LocalShard(job, over_the_wire, api_key)

    def _called(self, what: str) -> None:
        RemoteShard.calls.append((self.job.shard, what))

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._called("start")
        await self.far.start(tg)

    async def prepare(self) -> str:
        self._called("prepare")
        return await self.far.prepare()

    async def run_phase(self, name: str, start: float) -> PhaseResult:
        self._called(f"run_phase {name}")
        result = await self.far.run_phase(name, start)
        return PhaseResult.from_json(orjson.loads(orjson.dumps(result.to_json())))

    async def stop_sending(self, reason: str) -> None:
        await self.far.stop_sending(reason)

    async def cancel(self) -> None:
        await self.far.cancel()

    async def close(self) -> dict[str, Any]:
        self._called("close")
        return await self.far.close()

    def progress(self) -> ShardProgress:
        return self.far.progress()


def remote_shards(
    jobs: Sequence[ShardJob], write: WriteLine, api_key: str | None, _: DistributedConfig
) -> list[Shard]:
    return [RemoteShard(job, write, api_key) for job in jobs]


_KIND: ShardKind = remote_shards  # checked against the Shard protocol by mypy


def _run(
    tmp_path: Path, url: str, opts: RunOptions, observer: RunObserver | None = None
) -> tuple[RunResult, list[str]]:
    path = tmp_path / "stages.toml"
    path.write_text(TWO_PHASES)
    scenario = load_scenario(path, Overrides(urls=(url,)))
    said: list[str] = []
    result = anyio.run(run_scenario, scenario, opts, said.append, observer)
    return result, said


def test_a_new_kind_of_shard_runs_through_the_orchestrator_unchanged(
    tmp_path: Path, sim_server: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(shards_module.SHARD_KINDS, "remote", remote_shards)
    monkeypatch.setattr(RemoteShard, "calls", [])
    sim = sim_server()
    opts = RunOptions(
        run_dir=str(tmp_path / "run"), handle_signals=False, workers=2, shard_kind="remote"
    )
    result, said = _run(tmp_path, sim.base_url, opts)
    assert result.status == "completed", result.reason
    assert any(s.startswith("workload ready in 2 test hosts in ") for s in said), said
    summary = result.summary
    assert summary.run.workers == 2
    assert summary.phases["a"].requests.succeeded == 6
    assert summary.phases["b"].requests.succeeded == 4
    records = read_requests(result.run_dir / "requests.jsonl")
    assert sorted((r.phase, r.shard) for r in records).count(("a", 0)) == 3
    assert len(records) == 10
    for k in (0, 1):
        mine = [what for shard, what in RemoteShard.calls if shard == k]
        assert mine == ["start", "prepare", "run_phase a", "run_phase b", "close"]
    # No observer: nothing rendered, no report written.
    assert not (result.run_dir / "report.html").exists()


class Recorder:
    """Every event, in the order heard."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.live: LiveRun | None = None

    def run_started(self, live: LiveRun) -> None:
        self.live = live
        self.events.append("run_started")

    def phase_started(self, phase: PhaseConfig, start: float) -> None:
        self.events.append(f"phase_started {phase.name}")

    def progress(self, now: float) -> None:
        assert self.live is not None
        assert len(self.live.sample()) == 1
        self.events.append("progress")

    def phase_finished(self, timing: PhaseTiming) -> None:
        self.events.append(f"phase_finished {timing.name}")

    def phases_ended(self) -> None:
        self.events.append("phases_ended")

    def run_finished(self, result: RunResult) -> None:
        assert (result.run_dir / "summary.json").exists()
        self.events.append(f"run_finished {result.status}")


def test_the_observer_hears_the_runs_events_in_order(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server()
    recorder = Recorder()
    opts = RunOptions(run_dir=str(tmp_path / "run"), handle_signals=False, workers=1)
    result, _ = _run(tmp_path, sim.base_url, opts, recorder)
    assert result.status == "completed"
    events = recorder.events
    assert [e for e in events if e != "progress"] == [
        "run_started",
        "phase_started a",
        "phase_finished a",
        "phase_started b",
        "phase_finished b",
        "phases_ended",
        "run_finished completed",
    ]
    if "progress" in events:  # only while the phases run
        first, last = events.index("progress"), len(events) - events[::-1].index("progress")
        assert events.index("phase_started a") < first and last < events.index("phases_ended")


def test_the_orchestrator_imports_no_presentation() -> None:
    presentation = {"loadgen.results.console", "loadgen.results.report_run"}
    tree = ast.parse((ROOT / "loadgen" / "orchestrator.py").read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not imported & presentation
    code = (
        "import sys, loadgen.orchestrator; "
        f"print(sorted(m for m in sys.modules if m in {sorted(presentation)!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.strip() == "[]"
