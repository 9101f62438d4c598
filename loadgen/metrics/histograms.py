"""Latency histograms: HdrHistogram buckets in integer microseconds, merged exactly across shards.

Recording keeps, per metric, a sparse map from HdrHistogram counts index to count, filled with the
same index arithmetic as `hdrh` itself. A real `HdrHistogram` is built from it only to read
percentiles, encode, or write logs. This keeps per-request recording cheap (no per-sample method
calls) and lets a run keep one small histogram set per throughput window, where a dense
HdrHistogram would cost about 190 KB per metric per window. Merging adds counts index by index,
which is exactly what `HdrHistogram.add` does for histograms of the same layout.

Samples are bucketed in bulk: `record` only appends a request's values (seconds) and chunk times to
pending lists; every `BATCH` samples, and before anything reads the counts, numpy turns them into
microseconds and counts indices for the whole batch at once (the same float arithmetic, rounding
and clamping as one `add_us` per sample, so the counts are identical). This costs a small fraction
of bucketing each inter-token gap in Python, which would otherwise be the most expensive part of
accounting for a finished request.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import UTC, datetime
from itertools import compress
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogWriter

from loadgen.metrics.windows import window_index
from loadgen.records import RequestRecord
from loadgen.safetext import path_name

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour; larger values are clamped to it and counted
SIGNIFICANT_DIGITS = 3

# Every latency metric, in the order reports list them.
METRICS: tuple[str, ...] = (
    "ttft",
    "ttft_intended",
    "itl",
    "itl_chunk",
    "tpot",
    "e2e",
    "e2e_intended",
    "schedule_lag",
)

# (key in the percentiles dict, percentile)
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
)

LOG_FILE_SUFFIX = ".hlog"
BATCH = 32_768  # pending samples (values and chunk times) bucketed together


def new_histogram() -> HdrHistogram:
    """An empty histogram of loadgen's layout: 1 us .. 1 h, 3 significant digits."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


class _Layout:
    """The counts-index arithmetic of an `HdrHistogram` of loadgen's layout, read off a real one."""

    def __init__(self) -> None:
        h = new_histogram()
        self.template = h
        self.mask: int = h.sub_bucket_mask
        self.unit_magnitude: int = h.unit_magnitude
        self.half_count_magnitude: int = h.sub_bucket_half_count_magnitude
        self.half_count: int = h.sub_bucket_half_count
        self.counts_len: int = h.counts_len
        # (v | mask).bit_length() - shift == hdrh's bucket index of v
        self.shift: int = self.unit_magnitude + self.half_count_magnitude + 1
        if self.unit_magnitude != 0:
            raise AssertionError("the inlined index arithmetic assumes a lowest value of 1")

    def index(self, value: int) -> int:
        b = (value | self.mask).bit_length() - self.shift
        return (
            ((b + 1) << self.half_count_magnitude)
            + (value >> (b + self.unit_magnitude))
            - (self.half_count)
        )

    def value(self, index: int) -> int:
        """The lowest value of the bucket at `index`."""
        return int(self.template.get_value_from_index(index))

    def highest_equivalent(self, value: int) -> int:
        return int(self.template.get_highest_equivalent_value(value))

    def median_equivalent(self, index: int) -> int:
        """hdrh's representative value of a bucket, used for its mean."""
        low = self.value(index)
        size = self.highest_equivalent(low) - low + 1
        return low + (size >> 1)


LAYOUT = _Layout()


def _nonzero_counts(h: HdrHistogram) -> list[tuple[int, int]]:
    """(counts index, count) of every non-empty bucket, scanning only the occupied range."""
    raw = bytes(h.counts)
    width = memoryview(h.counts).itemsize
    head = raw.rstrip(b"\0")
    first = (len(head) - len(head.lstrip(b"\0"))) // width
    last = -(-len(head) // width)
    words = memoryview(raw[first * width : last * width]).cast("B").cast("Q" if width == 8 else "I")
    return [(first + k, int(words[k])) for k in compress(range(len(words)), words)]


def _materialize(counts: Mapping[int, int]) -> HdrHistogram:
    """An `HdrHistogram` with exactly these bucket counts.

    Writes the counts array and sets the min/max/total the way hdrh's own decoder does, which is
    observably identical to `record_value(lowest value of the bucket, count)` per bucket (tested).
    """
    h = new_histogram()
    if not counts:
        return h
    arr = h.counts
    for i, c in counts.items():
        arr[i] = c
    h.set_internal_tacking_values(min(counts), max(counts), sum(counts.values()))
    return h


def _bucket_counts(
    us: npt.NDArray[np.float64], weights: npt.NDArray[np.int64] | None
) -> tuple[npt.NDArray[np.int64], int]:
    """Dense counts (by counts index) of microsecond values not yet rounded (`x * 1e6 + 0.5`),
    and how many (weighted) were above `HIGHEST_US`: truncating, clamping and indexing exactly
    as `int()` then `add_us` would, one value at a time."""
    v = np.clip(us, -1.0, HIGHEST_US + 1.0).astype(np.int64)  # truncates towards 0, like int()
    np.maximum(v, 0, out=v)
    over = v > HIGHEST_US
    clamped = int(over.sum() if weights is None else weights[over].sum())
    v[over] = HIGHEST_US
    # frexp's exponent of a positive integer below 2**53 is its bit_length
    b = np.frexp((v | LAYOUT.mask).astype(np.float64))[1].astype(np.int64) - LAYOUT.shift
    index = ((b + 1) << LAYOUT.half_count_magnitude) + (v >> b) - LAYOUT.half_count
    dense = np.bincount(index, weights=weights, minlength=LAYOUT.counts_len)
    # float sums of integer weights are exact below 2**53
    return dense.astype(np.int64, copy=False), clamped


class _Runs:
    """Chunk times of several requests, one run after the other, waiting to be bucketed."""

    __slots__ = ("starts", "times", "tokens")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []  # tokens of each chunk, when some chunk had several
        self.starts: list[int] = []  # where each request's run starts in `times`

    def add(self, times: list[float]) -> None:
        self.starts.append(len(self.times))
        self.times.extend(times)

    def take(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64] | None]:
        """The gaps inside each run (not between two runs), with the later chunk's token count
        (at least 1) when counts were kept; and empty the runs."""
        times = np.array(self.times, dtype=np.float64)
        keep = np.ones(len(times) - 1, dtype=bool)
        keep[np.array(self.starts[1:], dtype=np.int64) - 1] = False
        gaps = np.diff(times)[keep]
        k = None
        if self.tokens:
            k = np.maximum(np.array(self.tokens, dtype=np.int64)[1:][keep], 1)
        self.times.clear()
        self.tokens.clear()
        self.starts.clear()
        return gaps, k


class LatencyHistograms:
    """One histogram per name in `METRICS`, filled from finished requests."""

    __slots__ = (
        "_clamped",
        "_counts",
        "_dense",
        "_packed",
        "_pending",
        "_pending_n",
        "_runs",
        "_weighted",
    )

    def __init__(self) -> None:
        self._counts: dict[str, dict[int, int]] = {name: {} for name in METRICS}
        self._clamped: dict[str, int] = {}
        # waiting to be bucketed (see the module docstring):
        self._pending: dict[str, list[float]] = {name: [] for name in METRICS}  # seconds
        self._dense: dict[str, npt.NDArray[np.int64]] = {}  # bucketed, not yet in _counts
        # a finished window's counts, packed: (indices, counts), 12 bytes a bucket, not ~80
        self._packed: dict[str, tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]] = {}
        self._runs = _Runs()  # chunk times of requests with one token per chunk
        self._weighted = _Runs()  # ... and of those with several tokens in some chunks
        self._pending_n = 0

    # ---- recording ----
    def record(self, rec: RequestRecord) -> None:
        """Record one finished request (see docs/metrics.md for what each metric takes).

        Every request contributes its schedule lag; only successful ones contribute latencies.
        """
        pending = self._pending
        pending["schedule_lag"].append(rec.schedule_lag)
        self._pending_n += 1
        if not rec.outcome.is_success:
            if self._pending_n >= BATCH:
                self._flush()
            return
        pending["e2e"].append(rec.e2e)
        pending["e2e_intended"].append(rec.e2e_intended)
        ttft = rec.ttft
        ttft_intended = rec.ttft_intended
        if ttft is not None and ttft_intended is not None:
            pending["ttft"].append(ttft)
            pending["ttft_intended"].append(ttft_intended)
        tpot = rec.tpot
        if tpot is not None:
            pending["tpot"].append(tpot)
        times = rec.chunk_times
        if len(times) > 1:
            self._record_itl(times, rec.chunk_tokens)
        self._pending_n += 5
        if self._pending_n >= BATCH:
            self._flush()

    def _record_itl(self, times: list[float], tokens: list[int]) -> None:
        """`itl`: one sample per gap between chunks, a chunk of k tokens giving k samples of
        gap / k; `itl_chunk`: one sample per gap, whatever k (vLLM bench's ITL)."""
        n = len(times)
        if len(tokens) != n or tokens.count(1) == n:  # one token per chunk (or counts unknown)
            self._runs.add(times)
        else:
            self._weighted.add(times)
            self._weighted.tokens.extend(tokens)
        self._pending_n += n

    def _flush(self) -> None:
        """Bucket everything pending (exactly as one `add_us` per sample would)."""
        if not self._pending_n:
            return
        self._pending_n = 0
        for name, seconds in self._pending.items():
            if seconds:
                s = np.array(seconds, dtype=np.float64)
                seconds.clear()
                # as add_us(to_us(seconds)): rounded half up, a duration <= 0 is 0
                us = np.where(s > 0.0, s * 1e6 + 0.5, 0.0)
                self._add_counts(name, *_bucket_counts(us, None))
        if self._runs.starts:
            # one token per chunk: a chunk gap is a token gap, so both ITLs take the same counts
            gaps, _ = self._runs.take()
            counts, clamped = _bucket_counts(gaps * 1e6 + 0.5, None)
            self._add_counts("itl_chunk", counts.copy(), clamped)
            self._add_counts("itl", counts, clamped)
        if self._weighted.starts:
            gaps, k = self._weighted.take()
            assert k is not None
            self._add_counts("itl", *_bucket_counts(gaps * 1e6 / k + 0.5, k))
            self._add_counts("itl_chunk", *_bucket_counts(gaps * 1e6 + 0.5, None))

    def _add_counts(self, name: str, counts: npt.NDArray[np.int64], clamped: int) -> None:
        mine = self._dense.get(name)
        if mine is None:
            self._dense[name] = counts
        else:
            mine += counts
        if clamped:
            self._clamped[name] = self._clamped.get(name, 0) + clamped

    def _flush_all(self) -> None:
        """Bucket what is pending and move the dense counts into the sparse maps."""
        if self._pending_n:
            self._flush()
        for name, dense in self._dense.items():
            keys = np.flatnonzero(dense)
            mine = self._counts[name]
            get = mine.get
            for i, c in zip(keys.tolist(), dense[keys].tolist(), strict=True):
                mine[i] = get(i, 0) + c
        self._dense.clear()

    def _all(self) -> dict[str, dict[int, int]]:
        """The counts, with everything pending bucketed (packed ones in new dicts: read only)."""
        if self._pending_n or self._dense:
            self._flush_all()
        if not self._packed:
            return self._counts
        out: dict[str, dict[int, int]] = {}
        for name, live in self._counts.items():
            packed = self._packed.get(name)
            if packed is None:
                out[name] = live
                continue
            merged = dict(zip(packed[0].tolist(), packed[1].tolist(), strict=True))
            for i, c in live.items():
                merged[i] = merged.get(i, 0) + c
            out[name] = merged
        return out

    def has_unpacked(self) -> bool:
        """Whether anything was recorded since the last `pack()` (or ever)."""
        return bool(self._pending_n or self._dense or any(self._counts.values()))

    def pack(self) -> None:
        """Keep the counts as arrays (a window that is over): reads still see them, and later
        samples go to the usual maps beside them."""
        counts = self._all()
        self._packed = {}
        for name, mine in counts.items():
            if mine:
                self._packed[name] = (
                    np.fromiter(mine.keys(), dtype=np.int32, count=len(mine)),
                    np.fromiter(mine.values(), dtype=np.int64, count=len(mine)),
                )
            self._counts[name] = {}

    def add_us(self, name: str, value: int, count: int = 1) -> None:
        if count <= 0:
            return
        if value < 0:  # a negative duration (a clock step) is 0
            value = 0
        elif value > HIGHEST_US:
            value = HIGHEST_US
            self._clamped[name] = self._clamped.get(name, 0) + count
        counts = self._counts[name]
        i = LAYOUT.index(value)
        counts[i] = counts.get(i, 0) + count

    # ---- combining ----
    def merge(self, other: LatencyHistograms) -> None:
        """Add `other` into this set: exact, bucket by bucket."""
        for name, theirs in other._all().items():
            mine = self._counts[name]
            for i, c in theirs.items():
                mine[i] = mine.get(i, 0) + c
        for name, n in other._clamped.items():
            self._clamped[name] = self._clamped.get(name, 0) + n

    # ---- reading ----
    def count(self, name: str) -> int:
        return sum(self._all()[name].values())

    def buckets(self, name: str) -> dict[int, int]:
        """HdrHistogram counts index -> count (a copy)."""
        return dict(self._all()[name])

    @property
    def clamped(self) -> dict[str, int]:
        """Samples above one hour, recorded as one hour, by metric."""
        self._all()
        return dict(self._clamped)

    def histogram(self, name: str) -> HdrHistogram:
        """A new `HdrHistogram` holding this metric's samples."""
        return _materialize(self._all()[name])

    def percentiles(self, name: str) -> dict[str, float | int | None]:
        """p50 .. p99.9, max and mean in milliseconds, and the sample count.

        Percentiles and max are HdrHistogram's: the highest value equivalent to the sample, i.e.
        at most 0.1 % above it. With no samples every figure is None and count is 0.
        """
        counts = self._all()[name]
        total = sum(counts.values())
        out: dict[str, float | int | None] = {key: None for key, _ in PERCENTILES}
        out.update(max=None, mean=None, count=total)
        if not total:
            return out
        h = self.histogram(name)
        values = h.get_percentile_to_value_dict([p for _, p in PERCENTILES])
        for key, p in PERCENTILES:
            out[key] = values[p] / 1000.0
        out["max"] = h.get_max_value() / 1000.0
        weighted = sum(LAYOUT.median_equivalent(i) * c for i, c in counts.items())
        out["mean"] = weighted / total / 1000.0
        return out

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        return {name: self.percentiles(name) for name in METRICS}

    # ---- encoding ----
    def encode(self) -> dict[str, str]:
        """Metric name -> HdrHistogram V2 compressed base64 ("HISTF..."); empty ones left out."""
        return {
            name: self.histogram(name).encode().decode("ascii")
            for name in METRICS
            if self._all()[name]
        }

    @classmethod
    def decode(cls, encoded: Mapping[str, str]) -> LatencyHistograms:
        """The inverse of `encode`; also accepts histograms of another layout (re-bucketed)."""
        out = cls()
        for name, blob in encoded.items():
            if name not in out._counts:
                raise ValueError(f"unknown histogram {name!r}")
            h = HdrHistogram.decode(blob)
            counts = out._counts[name]
            same_layout = (
                h.lowest_trackable_value == LOWEST_US
                and h.highest_trackable_value == HIGHEST_US
                and h.significant_figures == SIGNIFICANT_DIGITS
            )
            for i, c in _nonzero_counts(h):
                j = (
                    i
                    if same_layout
                    else LAYOUT.index(min(int(h.get_value_from_index(i)), HIGHEST_US))
                )
                counts[j] = counts.get(j, 0) + c
        return out

    def to_state(self) -> dict[str, Any]:
        return {"hdr": self.encode(), "clamped": self.clamped}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LatencyHistograms:
        out = cls.decode(state.get("hdr", {}))
        out._clamped = {str(k): int(v) for k, v in (state.get("clamped") or {}).items()}
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistograms):
            return NotImplemented
        return self._all() == other._all() and self._clamped == other._clamped

    __hash__ = None  # type: ignore[assignment]


class IntervalHistograms:
    """Latency histograms per throughput window, a request counted in the window of its end.

    Windows are [origin + i*window, origin + (i+1)*window) on the run clock. The whole phase's
    histograms are the exact sum of its windows (`total()`).
    """

    __slots__ = ("_windows", "origin", "window")

    def __init__(self, window: float, origin: float = 0.0) -> None:
        if not window > 0:
            raise ValueError("window must be > 0 seconds")
        self.window = float(window)
        self.origin = float(origin)
        self._windows: dict[int, LatencyHistograms] = {}

    def index(self, t: float) -> int:
        return window_index(t, self.origin, self.window)

    def record(self, rec: RequestRecord) -> None:
        i = self.index(rec.end)
        h = self._windows.get(i)
        if h is None:
            for done in self._windows.values():  # earlier windows: packed, a few hundred KB less
                if done.has_unpacked():
                    done.pack()
            h = self._windows[i] = LatencyHistograms()
        h.record(rec)

    def merge(self, other: IntervalHistograms) -> None:
        if (other.window, other.origin) != (self.window, self.origin):
            raise ValueError(
                f"cannot merge interval histograms of different windows: "
                f"{other.window}s from {other.origin} vs {self.window}s from {self.origin}"
            )
        for i, h in other._windows.items():
            mine = self._windows.get(i)
            if mine is None:
                mine = self._windows[i] = LatencyHistograms()
            mine.merge(h)

    @property
    def windows(self) -> dict[int, LatencyHistograms]:
        """Window index -> histograms (the live objects; windows with no request are absent)."""
        return self._windows

    def total(self) -> LatencyHistograms:
        out = LatencyHistograms()
        for i in sorted(self._windows):
            out.merge(self._windows[i])
        return out

    def to_state(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "origin": self.origin,
            "windows": {str(i): self._windows[i].to_state() for i in sorted(self._windows)},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> IntervalHistograms:
        out = cls(state["window"], state["origin"])
        for key, sub in state.get("windows", {}).items():
            out._windows[int(key)] = LatencyHistograms.from_state(sub)
        return out

    # ---- HdrHistogram interval logs ----
    def interval_log(self, name: str, start_epoch: float, *, comment: str = "") -> str:
        """The HdrHistogram interval log (format 1.2) of one metric, as text.

        One interval line per window, from the first window with a request to the last, empty
        windows included. Interval timestamps are seconds on the run clock; the log's BaseTime is
        `start_epoch` (wall-clock epoch seconds of run-clock 0), so standard tools
        (HistogramLogProcessor, HdrHistogram plotters) place the intervals in wall time. Values are
        microseconds; the Interval_Max column is in milliseconds (rounded down).
        """
        if name not in METRICS:
            raise ValueError(f"unknown histogram {name!r}")
        buf = io.StringIO()
        writer = HistogramLogWriter(buf)
        if comment:
            writer.output_comment(comment)
        writer.output_comment(f"loadgen {name}, values in microseconds")
        writer.output_log_format_version()
        start = start_epoch + self.origin
        # hdrh's output_start_time mis-formats the date: write the line the same way by hand.
        iso = datetime.fromtimestamp(start, UTC).isoformat(" ")
        buf.write(f"#[StartTime: {start:f} (seconds since epoch), {iso}]\n")
        writer.output_base_time(start_epoch * 1000.0)
        writer.output_legend()
        if self._windows:
            for i in range(min(self._windows), max(self._windows) + 1):
                lo = self.origin + i * self.window
                h = self._windows[i].histogram(name) if i in self._windows else new_histogram()
                # hdrh treats a 0.0 timestamp as "unset" and falls back to the histogram's own
                # (milliseconds): set them too so window 0 at time 0 is written correctly.
                h.set_start_time_stamp(lo * 1000.0)
                h.set_end_time_stamp((lo + self.window) * 1000.0)
                writer.output_interval_histogram(h, lo, lo + self.window, 1000.0)
        return buf.getvalue()

    def write_interval_logs(
        self,
        directory: str | Path,
        start_epoch: float,
        *,
        prefix: str = "",
        comment: str = "",
    ) -> list[Path]:
        """Write `<prefix><metric>.hlog` in `directory` for every metric; returns the paths."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        for name in METRICS:
            path = folder / path_name(f"{prefix}{name}{LOG_FILE_SUFFIX}")
            path.write_text(self.interval_log(name, start_epoch, comment=comment), "utf-8")
            paths.append(path)
        return paths
