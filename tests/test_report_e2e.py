"""Every report type rendered from real runs against the simulator, and opened in Chromium.

One module fixture makes the runs (a few seconds each, fast simulator profile, short windows so
that every run has several throughput windows): a cold/warm caching run, an open-loop run with
SLOs, two closed-loop runs of different concurrency to compare, and a two-level sweep that starts
its own simulator.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape as html_escape
from pathlib import Path
from typing import Any

import anyio
import pytest

from loadgen.cli import main
from loadgen.commands.observe import ConsoleObserver
from loadgen.orchestrator import RunOptions, RunResult, run_scenario
from loadgen.results.files import read_json
from loadgen.results.html import num, pct
from loadgen.results.report_run import REPORT_FILE
from loadgen.results.rundir import load_run
from loadgen.results.schema import to_builtins
from loadgen.scenario import Overrides, apply_overrides, load_scenario
from loadgen.sim.process import SimulatorProcess
from tests.test_report_browser import Chromium, assert_renders, chromium  # noqa: F401

WORKLOAD = """
seed = 5
[workload]
prompt = "Describe this image in one sentence."
max_tokens = 8
ignore_eos = true
[workload.images]
width = 64
height = 64
content = "gradient"
pool_size = 12
[output]
window = 0.25
"""

CACHE = """
name = "cache"
{workload}
[load]
mode = "closed"
concurrency = 4
[[phases]]
name = "cold"
requests = 24
[[phases]]
name = "warm"
requests = 24
repeat_of = "cold"
"""

OPEN = """
name = "open"
{workload}
[load]
mode = "constant"
rate = 40.0
duration = 1.2
[slo]
ttft_ms = 1000
tpot_ms = 50
"""

CLOSED = """
name = "closed"
{workload}
[load]
mode = "closed"
concurrency = 2
duration = 1.2
"""


@dataclass
class Made:
    cache: RunResult
    open: RunResult
    a: RunResult
    b: RunResult
    compare_html: Path
    compare_text: str
    compare_err: str
    sweep: Path
    messages: list[str]


def _scenario_file(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text.format(workload=WORKLOAD))
    return path


def _run(
    folder: Path, file: Path, url: str, name: str, messages: list[str], **kw: Any
) -> RunResult:
    scenario = apply_overrides(load_scenario(file), Overrides(urls=(url,), **kw))
    options = RunOptions(run_dir=str(folder / name), handle_signals=False, workers=1)
    observer = ConsoleObserver(messages.append)  # renders the report, as `loadgen run` does
    return anyio.run(run_scenario, scenario, options, messages.append, observer)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Made]:
    folder = tmp_path_factory.mktemp("reports")
    messages: list[str] = []
    with SimulatorProcess(["--profile", "fast", "--enable-prompt-tokens-details"]) as sim:
        url = sim.base_url
        cache = _run(folder, _scenario_file(folder, "cache", CACHE), url, "cache", messages)
        open_ = _run(folder, _scenario_file(folder, "open", OPEN), url, "open", messages)
        closed = _scenario_file(folder, "closed", CLOSED)
        a = _run(folder, closed, url, "a", messages)
        b = _run(folder, closed, url, "b", messages, concurrency=4)
    out, err = io.StringIO(), io.StringIO()
    html = folder / "compare.html"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["compare", str(a.run_dir), str(b.run_dir), "--html", str(html)]) == 0
        sweep = folder / "sweep"
        code = main(
            [
                "sweep", str(closed), "--concurrency", "1,2", "--requests", "8",
                "--sweep-dir", str(sweep), "--workers", "1", "--sim-arg=--profile=fast",
            ]
        )  # fmt: skip
    assert code == 0, err.getvalue()
    yield Made(cache, open_, a, b, html, out.getvalue(), err.getvalue(), sweep, messages)


# ---- run reports ------------------------------------------------------------------------------


def _plot_names(run_dir: Path) -> set[str]:
    return {p.stem for p in (run_dir / "plots").glob("*.png")}


def test_every_run_writes_its_report_and_plots(made: Made) -> None:
    for result in (made.cache, made.open, made.a, made.b):
        assert (result.run_dir / REPORT_FILE).is_file()
        assert f"report: {result.run_dir / REPORT_FILE}" in made.messages
    base = {"latency-ttft", "latency-itl", "latency-tpot", "latency-e2e", "throughput"}
    assert base | {"concurrency", "cache-hit-rates", "compare-cold-warm"} <= _plot_names(
        made.cache.run_dir
    )
    assert base | {"concurrency"} <= _plot_names(made.open.run_dir)


def test_report_shows_the_runs_own_figures(made: Made) -> None:
    html = (made.cache.run_dir / REPORT_FILE).read_text()
    summary = to_builtins(made.cache.summary)
    for name in ("cold", "warm"):
        phase = summary["phases"][name]
        assert f"Phase {name}" in html
        assert f"{phase['throughput']['generation_tokens_per_s']:,.1f}" in html
        assert f"{phase['latency_ms']['ttft']['p99']:,.2f}" in html
    assert "Phase comparisons (cold vs warm)" in html
    conc = summary["phases"]["warm"]["concurrency"]
    assert f"of {conc['target']} asked ({pct(conc['mean_over_target'])} in flight)" in html
    assert "Client self-check" in html and "Scenario as run" in html
    # The self-check table shows each shard's own figures (they live under client.shards[i]).
    section = html[html.index("<h2>Client self-check</h2>") :]
    section = section[: section.index("<h2>", 4)]
    for shard in summary["client"]["shards"]:
        lag, cpu = shard["loop_lag_ms"], shard["cpu"]
        for value in (lag["p50"], lag["p99"], lag["max"], cpu["loop_cores"], cpu["cores_used"]):
            assert value is not None
            assert f">{num(value, 2)}<" in section, value
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", section)
    assert cells and sum(c == "-" for c in cells) <= len(cells) // 3  # not a table of dashes
    # one <img> per plot file, all embedded
    assert html.count("<img ") == len(_plot_names(made.cache.run_dir))
    assert not re.search(r'(src|href)="(?!data:)', html)


def test_open_loop_report_has_the_corrected_curves_and_goodput(made: Made) -> None:
    html = (made.open.run_dir / REPORT_FILE).read_text()
    assert "TTFT from intended send" in html
    assert "Goodput (TTFT &le; 1000 ms, TPOT &le; 50 ms" in html
    run = load_run(made.open.run_dir)
    for metric in ("ttft", "ttft_intended", "e2e", "e2e_intended"):
        log = run.metric_log("main", metric)
        assert log is not None
        lat = to_builtins(made.open.summary)["phases"]["main"]["latency_ms"][metric]
        # the spectrum drawn is exactly the histogram the summary's percentiles came from
        assert log.spectrum.count == lat["count"] > 0
        for q in ("p50", "p90", "p99", "p99.9"):
            assert log.spectrum.value_at(float(q[1:])) == lat[q]


def test_report_command_rewrites_a_report(made: Made, capsys: pytest.CaptureFixture[str]) -> None:
    report = made.a.run_dir / REPORT_FILE
    report.unlink()
    assert main(["report", str(made.a.run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(report)
    assert report.is_file()


def test_report_refuses_a_folder_without_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a results folder" in capsys.readouterr().err


# ---- compare ----------------------------------------------------------------------------------


def test_compare_names_what_differs_and_writes_html(made: Made) -> None:
    assert "scenarios differ: phases.main.load.concurrency (2 vs 4)" in made.compare_err
    assert "generation tokens/s" in made.compare_text
    assert "TTFT p99 (ms)" in made.compare_text
    html = made.compare_html.read_text()
    assert "phases.main.load.concurrency" in html
    assert html.count("<img ") == 4  # TTFT, ITL, TPOT, E2E spectra, both runs on each


def test_compare_flags_the_doubled_concurrency(made: Made) -> None:
    """Twice the streams on an unsaturated server: a real rise in throughput, not noise."""
    from loadgen.results.compare import compare_runs

    a, b = load_run(made.a.run_dir), load_run(made.b.run_dir)
    (group,) = compare_runs([a, b])
    rows = {r.figure.label: r for r in group.rows}
    conc = rows["mean concurrency"].deltas[0]
    assert conc.noise is not None
    assert conc.verdict == "changed"


def test_compare_of_a_run_with_itself_flags_nothing(made: Made) -> None:
    from loadgen.results.compare import compare_runs, scenario_differences

    a = load_run(made.a.run_dir)
    (group,) = compare_runs([a, load_run(made.a.run_dir)])
    assert group.rows
    for row in group.rows:
        assert row.deltas[0].verdict == ""
        assert row.deltas[0].absolute in (0.0, None)
    assert scenario_differences([a, a]) == {}


# ---- sweep ------------------------------------------------------------------------------------


def test_sweep_runs_every_level_on_one_simulator(made: Made) -> None:
    doc = read_json(made.sweep / "sweep.json")
    assert doc["axis"] == "concurrency" and doc["simulator"] is True
    assert [lv["level"] for lv in doc["levels"]] == [1.0, 2.0]
    urls = set()
    for lv in doc["levels"]:
        summary = read_json(made.sweep / lv["run_dir"] / "summary.json")
        assert summary["scenario"]["phases"][0]["load"]["concurrency"] == int(lv["level"])
        assert summary["phases"]["main"]["requests"]["total"] == lv["requests"] == 8
        assert (made.sweep / lv["run_dir"] / REPORT_FILE).is_file()
        urls.add(tuple(summary["run"]["urls"]))
    assert len(urls) == 1  # one simulator served every level
    assert doc["knee"]["rule"] == "throughput" and doc["knee"]["level"] in (1.0, 2.0)
    html = (made.sweep / REPORT_FILE).read_text()
    assert html_escape(doc["knee"]["sentence"]) in html
    assert (made.sweep / "plots" / "sweep.png").is_file()


# ---- the published schemas --------------------------------------------------------------------


def test_written_documents_validate_against_the_published_schemas(made: Made) -> None:
    """summary.json of every run (with and without SLOs, a cold/warm pair, server figures) and
    sweep.json, as written, against docs/summary.schema.json and docs/sweep.schema.json."""
    import jsonschema

    docs = Path(__file__).resolve().parent.parent / "docs"
    summary_schema = read_json(docs / "summary.schema.json")
    for result in (made.cache, made.open, made.a, made.b):
        jsonschema.validate(read_json(result.run_dir / "summary.json"), summary_schema)
    sweep = read_json(made.sweep / "sweep.json")
    jsonschema.validate(sweep, read_json(docs / "sweep.schema.json"))
    for lv in sweep["levels"]:
        jsonschema.validate(read_json(made.sweep / lv["run_dir"] / "summary.json"), summary_schema)
    # and a schema is strict enough to refuse a summary whose writer lost a field
    broken = read_json(made.a.run_dir / "summary.json")
    del broken["phases"]["main"]["requests"]["succeeded"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, summary_schema)


# ---- in a real browser ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["cache", "open", "compare", "sweep"])
def test_reports_render_in_chromium(made: Made, chromium: Chromium, which: str) -> None:  # noqa: F811
    page, plots = {
        "cache": (made.cache.run_dir / REPORT_FILE, len(_plot_names(made.cache.run_dir))),
        "open": (made.open.run_dir / REPORT_FILE, len(_plot_names(made.open.run_dir))),
        "compare": (made.compare_html, 4),
        "sweep": (made.sweep / REPORT_FILE, 2),
    }[which]
    check = chromium.open(page)
    assert_renders(check, plots)
    assert len(check.images) == plots
    assert check.title.startswith("loadgen")
