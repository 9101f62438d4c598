"""A run as a person sees it: the progress line on stderr while it goes, and the HTML report at the
end (`loadgen run`, `loadgen sweep`). The orchestrator only emits the events
(`loadgen.observer`); this module renders them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from loadgen.config import PhaseConfig, Scenario
from loadgen.observer import LiveRun
from loadgen.results.console import Progress, ProgressMode
from loadgen.runner import PhaseTiming

if TYPE_CHECKING:
    from loadgen.orchestrator import RunResult


def progress_mode(scenario: Scenario) -> ProgressMode:
    """A live line on a terminal; plain lines when stderr is a file or a pipe (CI, containers)."""
    if not scenario.output.progress:
        return "off"
    return "live" if sys.stderr.isatty() else "plain"


class ConsoleObserver:
    """Renders a run: its progress (`Progress`, on `output`, stderr by default) and, when the
    results files were written, its HTML report (`report`), announced through `say`."""

    def __init__(
        self, say: Callable[[str], None], output: TextIO | None = None, *, report: bool = True
    ) -> None:
        self.say = say
        self.output = output
        self.report = report
        self.live: LiveRun | None = None
        self.display: Progress | None = None

    def run_started(self, live: LiveRun) -> None:
        self.live = live
        self.display = Progress(
            live.sample,
            live.stop,
            mode=progress_mode(live.scenario),
            origin=live.origin,
            interval=live.scenario.output.progress_interval,
            out=self.output,
        )

    def phase_started(self, phase: PhaseConfig, start: float) -> None:
        if self.display is not None:
            self.display.begin_phase(phase.name, phase.load, start)

    def progress(self, now: float) -> None:
        if self.display is not None:
            self.display.tick(now)

    def phase_finished(self, timing: PhaseTiming) -> None:
        pass

    def phases_ended(self) -> None:
        if self.display is not None:
            self.display.clear()

    def run_finished(self, result: RunResult) -> None:
        if self.report and not result.write_failed:
            from loadgen.results.report_run import report_after_run

            report_after_run(result.run_dir, self.say)  # report.html; never raises, only warns
