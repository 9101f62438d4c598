"""The simulator as a child process from async code: starting and stopping it never blocks the
event loop, and the child still dies with its parent."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from loadgen.lifeline import PARENT_ENV
from loadgen.orchestrator import RunOptions, run_scenario
from loadgen.scenario import load_scenario
from loadgen.sim.process import SimulatorProcess

linux_only = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
TICK = 0.005  # the ticker's period; a start-up (a Python process) takes dozens of them


class Ticker:
    """Counts how often the event loop got to run it: a blocked loop counts nothing."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await anyio.sleep(TICK)
            self.ticks += 1


@linux_only
def test_astart_and_astop_leave_the_loop_running() -> None:
    ticker = Ticker()
    process = SimulatorProcess(["--profile", "fast"])

    async def main() -> tuple[int, int, str]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            await process.astart()
            started = ticker.ticks
            environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")  # noqa: ASYNC240
            await process.astop()
            tg.cancel_scope.cancel()
        return (
            started,
            ticker.ticks,
            next(e.decode() for e in environ if e.startswith(PARENT_ENV.encode())),
        )

    started, _, parent = anyio.run(main)
    assert started >= 3  # the loop ran while the server started
    assert process.poll() is not None  # stopped
    # Started from the loop's (main) thread: the kernel kills it with this process (prctl).
    assert parent == f"{PARENT_ENV}={os.getpid()}"


def test_a_run_starts_its_simulator_without_blocking_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    path = tmp_path / "s.toml"
    path.write_text("[workload]\nmax_tokens = 2\nimages_per_request = 0\n[load]\nrequests = 1\n")
    scenario = load_scenario(path)
    options = RunOptions(run_dir=str(tmp_path / "run"), handle_signals=False)
    ticker = Ticker()
    at_start: list[int] = []

    def say(line: str) -> None:
        if "started the built-in vLLM simulator" in line:
            at_start.append(ticker.ticks)

    async def main() -> str:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            result = await run_scenario(scenario, options, say)
            tg.cancel_scope.cancel()
        return result.status

    assert anyio.run(main) == "completed"
    assert at_start and at_start[0] >= 3  # the loop ran while the simulator started
