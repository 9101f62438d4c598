"""A finished results folder read back: its summary.json and, on demand, its histogram logs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen.errors import LoadgenError
from loadgen.results.schema import Phase, RunSummary, SchemaError, decode
from loadgen.results.spectra import MetricLog, read_metric_log


class ResultsError(LoadgenError):
    """A results folder that cannot be read."""


@dataclass(slots=True)
class Run:
    path: Path
    summary: RunSummary
    _logs: dict[tuple[str, str], MetricLog | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.summary.run.name or self.path.name

    @property
    def label(self) -> str:
        """The results folder's name: unique among runs of one scenario."""
        return self.path.name

    @property
    def phases(self) -> dict[str, Phase]:
        return self.summary.phases

    def phase_config(self, phase: str) -> dict[str, Any]:
        return self.summary.phase_config(phase)

    def open_loop(self, phase: str) -> bool:
        return bool(self.phase_config(phase).get("load", {}).get("mode", "closed") != "closed")

    def metric_log(self, phase: str, metric: str) -> MetricLog | None:
        """The phase's histogram log of `metric` (None if the run wrote none), read once."""
        key = (phase, metric)
        if key not in self._logs:
            self._logs[key] = read_metric_log(self.path, phase, metric)
        return self._logs[key]


def load_run(path: str | Path) -> Run:
    """Read a results folder (or its summary.json)."""
    p = Path(path)
    summary_path = p if p.is_file() else p / "summary.json"
    if not summary_path.is_file():
        raise ResultsError(f"{p}: not a results folder (no summary.json)")
    try:
        data = summary_path.read_bytes()
    except OSError as exc:
        raise ResultsError(f"{summary_path}: cannot read: {exc}") from exc
    try:
        summary = decode(data)
    except SchemaError as exc:
        raise ResultsError(f"{summary_path}: {exc}") from None
    return Run(summary_path.parent, summary)


def corrupt_results(exc: Exception) -> str:
    """One line for a results file whose JSON has the wrong shape (edited by hand, or cut): what
    failed reading it, without a traceback."""
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"summary.json does not have the shape loadgen writes ({type(exc).__name__}: {detail})"
