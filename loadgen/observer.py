"""What a run tells whoever watches it, as events: the orchestrator measures and writes the results
files; a command renders (`loadgen.commands.observe.ConsoleObserver`: the progress line, the
HTML report). A run without an observer (`Unobserved`) renders nothing.

Events come in this order: `run_started` once the shards are ready, then per phase
`phase_started`, `progress` (about twice a second, while phases run) and `phase_finished`; then
`phases_ended` once (also when the run fails), and `run_finished` with the result once the results
files are written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from loadgen.config import PhaseConfig, Scenario
from loadgen.runner import PhaseTiming, StopControl
from loadgen.shard import ShardProgress

if TYPE_CHECKING:
    from loadgen.orchestrator import RunResult

PROGRESS_TICK = 0.5  # seconds between two progress events


@dataclass(frozen=True, slots=True)
class LiveRun:
    """A running run, as an observer may look at it."""

    scenario: Scenario
    run_dir: Path
    origin: float  # perf_counter() of the run clock's 0.0
    stop: StopControl  # `stop.stopping` is set once the run sends no new request
    sample: Callable[[], list[ShardProgress]]  # each shard's latest figures of its phase


class RunObserver(Protocol):
    def run_started(self, live: LiveRun) -> None: ...

    def phase_started(self, phase: PhaseConfig, start: float) -> None: ...  # start: run clock

    def progress(self, now: float) -> None: ...  # now: run clock; read `live.sample()` if wanted

    def phase_finished(self, timing: PhaseTiming) -> None: ...  # all shards' timing, merged

    def phases_ended(self) -> None: ...

    def run_finished(self, result: RunResult) -> None: ...


class Unobserved:
    """No one watches: nothing is rendered."""

    def run_started(self, live: LiveRun) -> None:
        pass

    def phase_started(self, phase: PhaseConfig, start: float) -> None:
        pass

    def progress(self, now: float) -> None:
        pass

    def phase_finished(self, timing: PhaseTiming) -> None:
        pass

    def phases_ended(self) -> None:
        pass

    def run_finished(self, result: RunResult) -> None:
        pass
