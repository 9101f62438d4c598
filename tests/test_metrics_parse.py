"""The filtered /metrics parser reads exactly what prometheus_client's parser reads, on generated
pages: tricky label values (quotes, backslashes, newlines, braces, commas), every value format,
timestamps, families that share a prefix with a kept one, buckets, `_created` samples."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from loadgen.metrics import scrape
from loadgen.metrics.scrape import COUNTERS, GAUGES, HISTOGRAMS, KEPT_NAMES, parse_metrics

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench_scrape.py"


def oracle_samples(text: str) -> tuple[list[tuple[str, dict[str, str], float]], str | None]:
    """The reference: prometheus_client's parser, keeping the sample names loadgen reads."""
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in KEPT_NAMES
    ], None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


label_values = st.one_of(
    st.sampled_from(["m", "other", "0", "1", "stop", "abort", ""]),
    st.text(alphabet='ab "\\\n,{}=#é\t:', max_size=12),
)
LABEL_NAMES = ("engine", "model_name", "finished_reason", "source", "le_x")


@st.composite
def label_sets(draw: st.DrawFn) -> list[tuple[str, str]]:
    names = draw(st.lists(st.sampled_from(LABEL_NAMES), unique=True, max_size=4))
    return [(n, draw(label_values)) for n in names]


numbers = st.one_of(
    st.integers(min_value=0, max_value=10**15).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.floats(min_value=0, max_value=1e12).map(lambda x: f"{x:e}"),
    st.sampled_from(["NaN", "+Inf", "-Inf", "0.0", "1e+09", "-0"]),
)


@st.composite
def sample_line(draw: st.DrawFn, name: str, extra: list[tuple[str, str]] | None = None) -> str:
    labels = draw(label_sets()) + (extra or [])
    sep = draw(st.sampled_from([" ", "\t"]))
    if labels:
        comma = draw(st.sampled_from([",", ", "]))
        body = comma.join(f'{k}="{_escape(v)}"' for k, v in labels)
        if draw(st.booleans()):
            body += ","  # a trailing comma is allowed
        head = f"{name}{{{body}}}"
    else:
        head = name
    line = f"{head}{sep}{draw(numbers)}"
    if draw(st.booleans()):
        line += f"{sep}{draw(st.integers(min_value=0, max_value=2 * 10**12))}"
    return line


def _help(draw: st.DrawFn, name: str) -> list[str]:
    if not draw(st.booleans()):
        return []
    text = draw(st.text(alphabet='ab \\"{}', max_size=10)).replace("\\", "\\\\")
    return [f"# HELP {name} {text}"]


@st.composite
def counter_family(draw: st.DrawFn, sample: str) -> list[str]:
    # prometheus_client writes the family name without `_total`; older exporters with it.
    family = sample.removesuffix("_total") if draw(st.booleans()) else sample
    lines = [*_help(draw, family), f"# TYPE {family} counter"]
    for _ in range(draw(st.integers(0, 3))):
        lines.append(draw(sample_line(sample)))
        if draw(st.booleans()):
            lines.append(draw(sample_line(sample.removesuffix("_total") + "_created")))
    return lines


@st.composite
def gauge_family(draw: st.DrawFn, name: str) -> list[str]:
    lines = [*_help(draw, name), f"# TYPE {name} gauge"]
    lines += [draw(sample_line(name)) for _ in range(draw(st.integers(0, 3)))]
    return lines


@st.composite
def histogram_family(draw: st.DrawFn, base: str) -> list[str]:
    lines = [*_help(draw, base), f"# TYPE {base} histogram"]
    for _ in range(draw(st.integers(0, 2))):
        for le in ("0.01", "0.1", "1.0", "+Inf"):
            lines.append(draw(sample_line(f"{base}_bucket", [("le", le)])))
        lines.append(draw(sample_line(f"{base}_count")))
        lines.append(draw(sample_line(f"{base}_sum")))
        if draw(st.booleans()):
            lines.append(draw(sample_line(f"{base}_created")))
    return lines


KEPT_COUNTERS = sorted({n for names in COUNTERS.values() for n in names})
KEPT_GAUGES = sorted({n for names in GAUGES.values() for n in names})
# Families loadgen does not read; several start with a name it does.
OTHER_COUNTERS = ["vllm:prompt_tokens_by_source_total", "python_gc_objects_collected_total"]
OTHER_GAUGES = ["vllm:num_requests_running_max", "vllm:kv_cache_usage_perc_x", "process_open_fds"]
OTHER_HISTOGRAMS = ["vllm:request_prompt_tokens", "vllm:time_to_first_token_seconds_x"]


@st.composite
def pages(draw: st.DrawFn) -> str:
    family = st.one_of(
        st.sampled_from(KEPT_COUNTERS + OTHER_COUNTERS).flatmap(counter_family),
        st.sampled_from(KEPT_GAUGES + OTHER_GAUGES).flatmap(gauge_family),
        st.sampled_from(sorted(HISTOGRAMS.values()) + OTHER_HISTOGRAMS).flatmap(histogram_family),
    )
    families = draw(st.lists(family, max_size=12))
    lines = [line for f in families for line in f]
    if draw(st.booleans()):
        lines.append("")
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return newline.join(lines) + newline


def _key(samples: list[tuple[str, dict[str, str], float]]) -> list[Any]:
    return [(n, sorted(labels.items()), "nan" if math.isnan(v) else v) for n, labels, v in samples]


@settings(max_examples=300, deadline=None)
@given(pages())
def test_same_samples_as_prometheus_client(page: str) -> None:
    ours, error = scrape._samples(page)
    theirs, _ = oracle_samples(page)
    assert error is None
    assert _key(ours) == _key(theirs)


@settings(max_examples=200, deadline=None)
@given(pages(), st.sampled_from([None, "m", "other"]))
def test_same_snapshot_as_prometheus_client(page: str, model: str | None) -> None:
    ours = parse_metrics(page, 1.0, model=model)
    with mock.patch.object(scrape, "_samples", oracle_samples):
        theirs = parse_metrics(page, 1.0, model=model)
    assert ours == theirs


def test_escaped_quotes_braces_and_commas_in_label_values() -> None:
    page = (
        'vllm:prompt_tokens_total{model_name="a\\"},b",engine="x\\\\"} 5\n'
        'vllm:prompt_tokens_total{engine="1",model_name="m\\nn"} 7 1700000000000\n'
        'vllm:request_success_total{finished_reason="stop",model_name="a\\"},b"} 2\n'
    )
    assert parse_metrics(page, 0.0, model='a"},b').prompt_tokens_total == 5.0
    assert parse_metrics(page, 0.0, model="m\nn").prompt_tokens_total == 7.0
    snap = parse_metrics(page, 0.0)
    assert snap.prompt_tokens_total == 12.0 and snap.request_success_by_reason == {"stop": 2.0}
    assert snap.parse_error is None and snap.vllm_samples == 3


def test_a_long_real_page_is_parsed_the_same() -> None:
    spec = importlib.util.spec_from_file_location("bench_scrape", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    page = bench.vllm_like_page(engines=2, models=1)
    assert len(page) > 100_000
    ours = parse_metrics(page, 0.0)
    with mock.patch.object(scrape, "_samples", oracle_samples):
        theirs = parse_metrics(page, 0.0)
    assert ours == theirs and ours.parse_error is None
    assert ours.prompt_tokens_total is not None and len(ours.histograms) == len(HISTOGRAMS)
