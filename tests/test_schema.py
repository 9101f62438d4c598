"""The result documents' schema: what loadgen wrote before its types existed still reads back to
the same bytes, other versions are refused in one line, the earliest version-1 summaries still
open in `report` and `compare`, and docs/*.schema.json are the types' own.

tests/data/summary_run.json was written by `loadgen run` (two workers, the simulator, a cold and
a warm phase with SLOs) before summary.json had types (the run's `api` and `streamed`, added
since, at their values for that run). tests/data/summary_v1_early.json is the
same run in the shape of the first version-1 summaries: without the fields added since (losses,
run.workers, each phase's workload, targets and concurrency target, the per-chunk ITL, the
windows' cached prompt tokens, the servers' histogram counts and per-target figures, the host's
available cores) and with the first self-check's `client` (saturated / reasons, no shards).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import msgspec
import pytest

from loadgen.cli import main
from loadgen.results.files import write_json
from loadgen.results.html import num, pct
from loadgen.results.report_run import REPORT_FILE, client_section
from loadgen.results.report_text import render_summary
from loadgen.results.schema import (
    SCHEMA_VERSION,
    RunSummary,
    SchemaError,
    Sweep,
    decode,
    json_schema,
    schema_texts,
    to_builtins,
)

DATA = Path(__file__).resolve().parent / "data"
DOCS = Path(__file__).resolve().parent.parent / "docs"
RUN = DATA / "summary_run.json"
EARLY = DATA / "summary_v1_early.json"


def test_a_summary_written_before_the_types_reads_back_to_the_same_bytes(tmp_path: Path) -> None:
    summary = decode(RUN.read_bytes())
    assert isinstance(summary, RunSummary) and summary.schema_version == SCHEMA_VERSION
    assert set(summary.phases) == {"cold", "warm"}
    assert summary.phases["warm"].latency("ttft", "p99.9") is not None
    assert len(summary.client.shards) == 2
    write_json(tmp_path / "summary.json", summary)
    assert (tmp_path / "summary.json").read_bytes() == RUN.read_bytes()
    assert to_builtins(summary) == json.loads(RUN.read_bytes())


def test_other_versions_are_refused_in_one_line() -> None:
    doc = json.loads(RUN.read_bytes())
    for version in (2, 0, "1", None):
        doc["schema_version"] = version
        with pytest.raises(SchemaError) as err:
            decode(json.dumps(doc))
        message = str(err.value)
        assert "\n" not in message and f"version {version!r}" in message, message
    with pytest.raises(SchemaError, match="not a loadgen summary"):
        decode(b"[1, 2]")
    with pytest.raises(SchemaError, match="not a loadgen sweep"):
        decode(b"not json", Sweep)


def test_a_summary_of_another_version_is_refused_by_report_and_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(RUN.read_bytes())
    doc["schema_version"] = 2
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(doc))
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "schema version 2 is not supported" in err, err
    assert main(["compare", str(run), str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "schema version 2 is not supported" in err, err


def test_a_wrong_shape_is_one_line_naming_the_field() -> None:
    doc = json.loads(RUN.read_bytes())
    doc["phases"]["cold"]["requests"]["total"] = "many"
    with pytest.raises(SchemaError) as err:
        decode(json.dumps(doc))
    assert "requests.total" in str(err.value) and "Expected `int`, got `str`" in str(err.value)
    assert "\n" not in str(err.value)


def _results(tmp_path: Path, name: str, summary: Path) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(summary, folder / "summary.json")
    return folder


def test_an_early_version_1_summary_opens_in_report_and_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    early = decode(EARLY.read_bytes())
    assert early.losses == [] and early.run.workers == 1
    assert early.phases["cold"].workload is None and early.phases["cold"].targets == {}
    assert early.client.shards == [] and not early.client.client_bound
    text = render_summary(early)
    assert "== phase cold: 24 requests" in text and "client self-check" not in text
    a = _results(tmp_path, "early", EARLY)
    b = _results(tmp_path, "now", RUN)
    assert main(["report", str(a)]) == 0
    html = (a / REPORT_FILE).read_text()
    assert "Phase cold" in html and "Phase comparisons (cold vs warm)" in html
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "== phase cold" in out and "generation tokens/s" in out


def test_the_self_check_table_shows_every_shards_figures() -> None:
    client = decode(RUN.read_bytes()).client
    section = client_section(client)
    for shard in client.shards:
        lag, cpu, host = shard.loop_lag_ms, shard.cpu, shard.host
        for value in (lag.p50, lag.p99, lag.max, cpu.loop_cores, cpu.cores_used):
            assert value is not None
            assert f">{num(value, 2)}<" in section, value
        for share in (lag.late_share, cpu.fraction_of_available, host.run_queue_wait_share):
            assert f">{pct(share)}<" in section, share
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", section)
    assert len(cells) == 10 * (1 + len(client.shards))
    assert not [c for c in cells if c == "-"]  # every row filled, for every shard


def test_a_written_summary_validates_against_the_published_schema() -> None:
    schema = json.loads((DOCS / "summary.schema.json").read_text())
    jsonschema.validate(json.loads(RUN.read_bytes()), schema)
    jsonschema.validate(json.loads(EARLY.read_bytes()), schema)


def test_the_published_schemas_are_those_of_the_types() -> None:
    """Regenerate with `python -m loadgen.results.schema docs`."""
    for name, text in schema_texts().items():
        assert (DOCS / name).read_text() == text, f"docs/{name} is stale"
    assert json_schema(RunSummary)["$ref"] == "#/$defs/RunSummary"
    defs = json_schema(RunSummary)["$defs"]
    assert "p99.9" in defs["LatencyStats"]["properties"]  # the key on disk, not the attribute


def test_a_struct_is_written_with_the_keys_on_disk(tmp_path: Path) -> None:
    summary = decode(RUN.read_bytes())
    assert msgspec.json.decode(msgspec.json.encode(summary), type=RunSummary) == summary
    stats = to_builtins(summary.phases["cold"].latency_ms["ttft"])
    assert set(stats) == {"p50", "p90", "p95", "p99", "p99.9", "max", "mean", "count"}
