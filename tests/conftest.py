"""Shared fixtures: the built-in simulator as a real process on a free loopback port."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from loadgen.sim.process import SimulatorProcess

StartSim = Callable[..., SimulatorProcess]


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
