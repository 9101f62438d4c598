"""Latency percentile spectra, read back from a run's HdrHistogram interval logs.

A spectrum is the exact quantile function of one metric over a phase: the histogram's buckets in
order with the cumulative sample count at each. Its percentiles follow HdrHistogram's rule, so they
equal the figures in summary.json. The classic HdrHistogram plot draws it against 1 / (1 - p) on a
log axis, which spreads the tail: 10 is the 90th percentile, 100 the 99th, 1000 the 99.9th.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from loadgen.metrics.histograms import LAYOUT, LOG_FILE_SUFFIX, LatencyHistograms
from loadgen.safetext import path_name


@dataclass(frozen=True, slots=True)
class Spectrum:
    """Bucket values in ms (each bucket's highest equivalent value, ascending) and the number of
    samples at or below each; the last cumulative count is the sample count."""

    values_ms: tuple[float, ...]
    cumulative: tuple[int, ...]

    @property
    def count(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    def value_at(self, percentile: float) -> float | None:
        """HdrHistogram's value at `percentile` (0-100): the bucket holding the sample of rank
        p/100 * count, rounded half up, at least 1. None without samples."""
        if not self.count:
            return None
        rank = max(1, int(min(percentile, 100.0) * self.count / 100.0 + 0.5))
        for value, cum in zip(self.values_ms, self.cumulative, strict=True):
            if cum >= rank:
                return value
        return self.values_ms[-1]

    def step_points(self) -> tuple[list[float], list[float]]:
        """(x, y) for a post-step plot of latency against x = 1 / (1 - p).

        Bucket i holds the percentiles from its preceding cumulative fraction up to its own, so its
        value is drawn from x(before) onward. The maximum's segment would run to infinity: it is
        drawn to x = 2N (N samples), half a rank beyond the last sample's own percentile.
        """
        n = self.count
        if not n:
            return [], []
        xs: list[float] = []
        ys: list[float] = []
        before = 0
        for value, cum in zip(self.values_ms, self.cumulative, strict=True):
            xs.append(inverse_tail(before / n))
            ys.append(value)
            before = cum
        xs.append(2.0 * n)
        ys.append(self.values_ms[-1])
        return xs, ys


def inverse_tail(fraction: float) -> float:
    """x = 1 / (1 - p) for a fraction p in [0, 1) (infinite at 1)."""
    return math.inf if fraction >= 1.0 else 1.0 / (1.0 - fraction)


def spectrum_of(buckets: Mapping[int, int]) -> Spectrum:
    """The spectrum of loadgen histogram buckets (HdrHistogram counts index -> count, in us)."""
    values: list[float] = []
    cumulative: list[int] = []
    total = 0
    for index, count in sorted(buckets.items()):
        if count <= 0:
            continue
        total += count
        values.append(LAYOUT.highest_equivalent(LAYOUT.value(index)) / 1000.0)
        cumulative.append(total)
    return Spectrum(tuple(values), tuple(cumulative))


def read_interval_payloads(path: str | Path) -> list[str]:
    """The compressed histogram of every interval line of an HdrHistogram interval log, in file
    order (empty intervals too). Comment, legend and malformed lines are skipped."""
    out: list[str] = []
    for raw in Path(path).read_text("utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", '"')):
            continue
        if line.startswith("Tag="):
            line = line.partition(",")[2]
        fields = line.split(",")
        if len(fields) == 4 and fields[3].startswith("HIST"):
            out.append(fields[3])
    return out


@dataclass(frozen=True, slots=True)
class MetricLog:
    """One metric of one phase: the whole phase's spectrum and one spectrum per log interval
    (a throughput window; empty windows included)."""

    spectrum: Spectrum
    windows: tuple[Spectrum, ...]

    def window_values(self, percentile: float) -> list[float]:
        """The percentile (ms) of every window that has samples."""
        return [v for w in self.windows if (v := w.value_at(percentile)) is not None]


def log_path(run_dir: str | Path, phase: str, metric: str) -> Path:
    # The name the writer gave it (`IntervalHistograms.write_interval_logs`): one path component.
    return Path(run_dir) / "histograms" / path_name(f"{phase}.{metric}{LOG_FILE_SUFFIX}")


def read_metric_log(run_dir: str | Path, phase: str, metric: str) -> MetricLog | None:
    """The metric's interval log in the results folder, intervals added up exactly; None when
    the file is absent."""
    path = log_path(run_dir, phase, metric)
    if not path.is_file():
        return None
    total = LatencyHistograms()
    windows: list[Spectrum] = []
    for payload in read_interval_payloads(path):
        interval = LatencyHistograms.decode({metric: payload})
        windows.append(spectrum_of(interval.buckets(metric)))
        total.merge(interval)
    return MetricLog(spectrum_of(total.buckets(metric)), tuple(windows))
