"""Shared fixtures: the built-in simulator as a real process on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from loadgen.sim.process import SimulatorProcess

StartSim = Callable[..., SimulatorProcess]


def start_loadgen(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    """`python -m loadgen ARGS` as a child process with piped output, unbuffered, and without
    an OPENAI_BASE_URL from the caller's environment (a test names its target)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OPENAI_BASE_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "loadgen", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        **kwargs,
    )


@pytest.fixture
def sim_server() -> Iterator[StartSim]:
    """Factory: `start_sim(*args)` starts `loadgen sim ARGS` (fast profile unless --profile is
    given) on a free port and returns the running SimulatorProcess; all are stopped at teardown."""
    started: list[SimulatorProcess] = []

    def start_sim(*args: str) -> SimulatorProcess:
        argv = list(args)
        if "--profile" not in argv and not any(a.startswith("--profile=") for a in argv):
            argv = ["--profile", "fast", *argv]
        sim = SimulatorProcess(argv)
        started.append(sim)
        sim.start()
        return sim

    yield start_sim
    for sim in started:
        sim.stop()


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorProcess]:
    """One simulator for the session, fast profile, short stats interval. Tests that share it
    compare before/after values (metrics deltas), never absolute counts."""
    with SimulatorProcess(["--profile", "fast", "--log-interval", "0.5"]) as process:
        yield process
