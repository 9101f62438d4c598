"""A finished results folder read back: its summary.json and, on demand, its histogram logs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loadgen.errors import LoadgenError
from loadgen.results.files import read_json
from loadgen.results.spectra import MetricLog, read_metric_log


class ResultsError(LoadgenError):
    """A results folder that cannot be read."""


@dataclass(slots=True)
class Run:
    path: Path
    summary: dict[str, Any]
    _logs: dict[tuple[str, str], MetricLog | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.summary.get("run", {}).get("name", self.path.name))

    @property
    def label(self) -> str:
        """The results folder's name: unique among runs of one scenario."""
        return self.path.name

    @property
    def phases(self) -> dict[str, dict[str, Any]]:
        phases: dict[str, dict[str, Any]] = self.summary.get("phases", {})
        return phases

    def phase_config(self, phase: str) -> dict[str, Any]:
        for p in self.summary.get("scenario", {}).get("phases", []):
            if p.get("name") == phase:
                return dict(p)
        return {}

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
        summary = read_json(summary_path)
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ResultsError(f"{summary_path}: cannot read: {exc}") from exc
    phases = summary.get("phases") if isinstance(summary, dict) else None
    if not isinstance(phases, dict) or not all(isinstance(p, dict) for p in phases.values()):
        raise ResultsError(f"{summary_path}: not a loadgen run summary")
    return Run(summary_path.parent, summary)


def corrupt_results(exc: Exception) -> str:
    """One line for a results file whose JSON has the wrong shape (edited by hand, or cut): what
    failed reading it, without a traceback."""
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"summary.json does not have the shape loadgen writes ({type(exc).__name__}: {detail})"
