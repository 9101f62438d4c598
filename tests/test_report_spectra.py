"""Spectra read back from histogram logs, plot axis labels, and the HTML building blocks."""

from __future__ import annotations

import base64
import io
import itertools
import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from loadgen.metrics.histograms import PERCENTILES, IntervalHistograms, LatencyHistograms
from loadgen.results import html
from loadgen.results.plots import DPI, HEIGHT, WIDTH, Curve, latency_spectra, percentile_label
from loadgen.results.spectra import Spectrum, read_metric_log, spectrum_of

samples_us = st.lists(st.integers(min_value=1, max_value=50_000_000), min_size=1, max_size=300)


def _histograms(values: list[int]) -> LatencyHistograms:
    h = LatencyHistograms()
    for v in values:
        h.add_us("ttft", v)
    return h


@given(samples_us)
def test_spectrum_percentiles_are_hdrhistograms(values: list[int]) -> None:
    h = _histograms(values)
    spectrum = spectrum_of(h.buckets("ttft"))
    expected = h.percentiles("ttft")
    assert spectrum.count == len(values)
    for key, p in PERCENTILES:
        assert spectrum.value_at(p) == expected[key]
    assert spectrum.values_ms[-1] == expected["max"]


@given(samples_us)
def test_step_points_run_from_zero_to_past_the_last_sample(values: list[int]) -> None:
    spectrum = spectrum_of(_histograms(values).buckets("ttft"))
    xs, ys = spectrum.step_points()
    n = len(values)
    assert xs[0] == 1.0  # the 0th percentile
    assert xs[-1] == 2.0 * n
    assert all(a <= b for a, b in itertools.pairwise(xs))
    assert all(a <= b for a, b in itertools.pairwise(ys))
    assert len(xs) == len(ys) == len(spectrum.values_ms) + 1


def test_an_empty_spectrum_has_no_values() -> None:
    empty = Spectrum((), ())
    assert empty.count == 0
    assert empty.value_at(50.0) is None
    assert empty.step_points() == ([], [])


@settings(max_examples=25, deadline=None)
@given(
    windows=st.lists(
        st.lists(st.integers(min_value=1, max_value=5_000_000), max_size=40), min_size=1, max_size=5
    ),
    origin=st.floats(min_value=0.0, max_value=1000.0),
    epoch=st.floats(min_value=1.0e9, max_value=2.0e9),
)
def test_interval_logs_add_up_to_the_whole_phase(
    windows: list[list[int]], origin: float, epoch: float
) -> None:
    state = {
        "window": 0.5,
        "origin": origin,
        "windows": {str(i): _histograms(w).to_state() for i, w in enumerate(windows) if w},
    }
    intervals = IntervalHistograms.from_state(state)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        intervals.write_interval_logs(run / "histograms", epoch, prefix="main.")
        log = read_metric_log(run, "main", "ttft")
    assert log is not None
    total = intervals.total()
    assert log.spectrum == spectrum_of(total.buckets("ttft"))
    filled = [i for i, w in enumerate(windows) if w]
    if filled:
        # one interval per window from the first to the last filled one, empty ones included
        assert len(log.windows) == filled[-1] - filled[0] + 1
        assert log.window_values(99.0) == [
            _histograms(windows[i]).percentiles("ttft")["p99"] for i in filled
        ]
    else:
        assert log.windows == ()


def test_a_missing_log_reads_as_none(tmp_path: Path) -> None:
    assert read_metric_log(tmp_path, "main", "ttft") is None


def test_percentile_axis_labels() -> None:
    assert [percentile_label(x) for x in (1.0, 2.0, 10.0, 100.0, 1000.0, 1e5)] == [
        "0%",
        "50%",
        "90%",
        "99%",
        "99.9%",
        "99.999%",
    ]


def test_spectrum_plot_is_a_png_of_the_stated_size() -> None:
    spectrum = spectrum_of(_histograms([1000, 2000, 3000, 50_000]).buckets("ttft"))
    png = latency_spectra("TTFT", [Curve("run", spectrum, "#1f77b4")])
    assert png is not None
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    assert img.size == (round(WIDTH * DPI), round(HEIGHT * DPI))
    assert latency_spectra("TTFT", [Curve("none", Spectrum((), ()), "#000")]) is None


def test_html_escapes_text_and_embeds_images() -> None:
    table = html.table(["<a>"], [["<script>alert(1)</script>"], [html.Raw("<b>ok</b>")]])
    assert "<script>" not in table
    assert "&lt;script&gt;" in table and "<b>ok</b>" in table
    png = b"\x89PNG\r\n\x1a\nfake"
    figure = html.image(png, 'a "quoted" alt')
    data = re.search(r'src="data:image/png;base64,([^"]+)"', figure)
    assert data and base64.b64decode(data.group(1)) == png
    assert 'alt="a &quot;quoted&quot; alt"' in figure
    page = html.page("t", figure)
    assert "default-src 'none'" in page  # nothing may be fetched
    assert not re.search(r"(src|href)=\"https?:", page)
