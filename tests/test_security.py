"""Hostile inputs and servers: header injection, key leaks, path traversal, terminal escapes,
a reused results folder and markup in reports. Servers are scripted raw sockets on 127.0.0.1
(tests/hostile.py) that record the bytes they receive and echo the API key back."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter
from typing import Any

import orjson
import pytest

from loadgen.client import ClientSettings, make_transport
from loadgen.config import TargetConfig
from loadgen.errors import LoadgenError, ScenarioError, TargetError
from loadgen.records import Outcome, RequestRecord
from loadgen.results.schema import Knee, Sweep, to_builtins
from loadgen.sim.process import SimulatorProcess
from tests.hostile import ANSI, IMG, MODEL, PAYLOAD, SCRIPT, hostile_server

SCENARIO = (
    'name = "hostile"\nseed = 1\n[workload]\nmax_tokens = 4\n'
    "[workload.images]\nwidth = 32\nheight = 32\n"
    '[load]\nmode = "closed"\nconcurrency = 1\nrequests = {requests}\n'
)


def write_scenario(tmp_path: Path, extra: str = "", requests: int = 5, head: str = "") -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(head + SCENARIO.format(requests=requests) + extra)
    return path


def load(tmp_path: Path, text: str) -> Any:
    from loadgen.scenario import load_scenario

    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_scenario(path)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "\r" not in text and "\x00" not in text, text
    return text


# ---- header injection ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    [
        '[target.headers]\nX-A = "v\\r\\nX-Injected: 1"\n',
        '[target.headers]\nX-A = "v\\nX-Injected: 1"\n',
        '[target.headers]\nX-A = "v\\u0000"\n',
        '[target.headers]\nX-A = "v\\u001b[2J"\n',
        '[target.headers]\n"X-A\\r\\nX-Injected" = "1"\n',
        '[target.headers]\n"X A" = "1"\n',
        '[target.headers]\n"X:A" = "1"\n',
        '[target.headers]\n"" = "1"\n',
        '[target]\nendpoint = "/v1/chat/completions\\r\\nX-Injected: 1"\n',
        '[target]\nendpoint = "/v1/chat/completions HTTP/1.0"\n',
        '[target]\nurl = "http://127.0.0.1:1/v1\\r\\nX-Injected: 1"\n',
        '[target]\nurl = "http://127.0.0.1:1/ v1"\n',
    ],
)
def test_control_characters_in_headers_endpoint_and_urls_are_refused_at_load(
    tmp_path: Path, target: str
) -> None:
    with pytest.raises(ScenarioError) as info:
        load(tmp_path, SCENARIO.format(requests=1) + target)
    one_line(info.value)


def test_ordinary_headers_still_load(tmp_path: Path) -> None:
    scenario = load(
        tmp_path,
        SCENARIO.format(requests=1)
        + '[target.headers]\nX-Request-Source = "loadgen; team=a\\tb"\n"X_Odd!#$%&*+.^`|~" = "1"\n',
    )
    assert dict(scenario.target.headers)["X-Request-Source"] == "loadgen; team=a\tb"


def test_a_url_override_with_control_characters_is_refused(tmp_path: Path) -> None:
    from loadgen.scenario import Overrides, load_scenario

    path = write_scenario(tmp_path)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, Overrides(urls=("http://127.0.0.1:1/v1\r\nX-Injected: 1",)))
    one_line(info.value)


KEY = "sk-" + secrets.token_hex(20)


@pytest.mark.parametrize(
    "content", [f"{KEY}\nX-Injected: 1\n", f"{KEY}\r\nX-Injected: 1", f"{KEY}\x00", f"a {KEY}\x1b"]
)
def test_an_api_key_file_of_more_than_one_line_is_refused(tmp_path: Path, content: str) -> None:
    from loadgen.target import read_api_key

    key_file = tmp_path / "key"
    key_file.write_text(content)
    with pytest.raises(TargetError) as info:
        read_api_key(TargetConfig(api_key_file=str(key_file)))
    assert KEY not in one_line(info.value)  # the message never shows the key


def test_an_api_key_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from loadgen.target import read_api_key

    monkeypatch.setenv("LOADGEN_TEST_KEY", f"{KEY}\r\nX-Injected: 1")
    with pytest.raises(TargetError) as info:
        read_api_key(TargetConfig(api_key_env="LOADGEN_TEST_KEY"))
    assert KEY not in one_line(info.value)
    monkeypatch.setenv("LOADGEN_TEST_KEY", f"  {KEY}\n")  # surrounding blanks are not the key
    assert read_api_key(TargetConfig(api_key_env="LOADGEN_TEST_KEY")) == KEY


def test_a_two_line_key_file_ends_the_run_before_any_request(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\nX-Injected: 1\n")
    with hostile_server() as server:
        done = _loadgen(
            "run",
            str(write_scenario(tmp_path)),
            "--url",
            server.url,
            "--api-key-file",
            str(key_file),
            "--run-dir",
            str(tmp_path / "run"),
        )
        posts = [r for r in server.received if r.startswith(b"POST")]
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loadgen: "), lines
    assert KEY.encode() not in done.stderr + done.stdout
    assert posts == []


@pytest.mark.parametrize("transport", ["native", "aiohttp", "httpx"])
def test_no_transport_writes_an_injected_header_onto_the_wire(transport: str) -> None:
    """Defence in depth: settings that bypassed the scenario's checks still send no header
    made of a value's second line, and no second line in the request line."""
    settings = ClientSettings(
        pool_size=0,
        connect_timeout=5.0,
        read_timeout=10.0,
        headers=(("X-A", "v\r\nX-Injected: 1"),),
        api_key=f"{KEY}\r\nX-Key-Injected: 1",
    )
    plain = ClientSettings(pool_size=0, connect_timeout=5.0, read_timeout=10.0)

    async def main(base: str) -> list[RequestRecord]:
        out = []
        for s, path in (
            (settings, "/v1/chat/completions"),
            (plain, "/v1/chat/completions\r\nX-Path-Injected: 1"),
            (plain, "/v1/chat/completions HTTP/1.0\r\nX-Path-Injected: 1\r\n\r\n"),
        ):
            t = make_transport(transport, s)  # type: ignore[arg-type]
            rec = RequestRecord(0, "p", 0, "t", 0.0, 0.0, 0.0)
            try:
                async with asyncio.timeout(20):
                    await t.send(rec, base + path, b"{}", perf_counter())
            finally:
                await t.aclose()
            out.append(rec)
        return out

    with hostile_server(answers=("ok",)) as server:
        records = asyncio.run(main(server.url))
        received = list(server.received)
    for raw in received:
        head = raw.split(b"\r\n\r\n", 1)[0]
        lines = head.split(b"\r\n")
        assert len(lines[0].split(b" ")) == 3, lines[0]  # METHOD TARGET VERSION, nothing more
        names = [line.split(b":", 1)[0].strip().lower() for line in lines[1:]]
        assert b"x-injected" not in names and b"x-key-injected" not in names
        assert b"x-path-injected" not in names
        assert b"\n" not in head.replace(b"\r\n", b"")
    assert records[0].outcome is not Outcome.OK  # the bad headers were not sent
    for rec in records:  # a URL may be refused, or sent percent-encoded (aiohttp): never split
        assert KEY not in (rec.error or "")


# ---- a hostile server: key leaks, terminal escapes, markup in the report ------------------------
def _loadgen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "loadgen", *args],
        capture_output=True,
        env=full,
        timeout=120,
        check=False,
    )


def _fragments(key: str, size: int = 12) -> list[bytes]:
    """Every `size`-character piece of the key: none may be stored or printed, not even the
    part left where an error text was cut."""
    return [key[i : i + size].encode() for i in range(len(key) - size + 1)]


HostileRun = tuple[Path, subprocess.CompletedProcess[bytes]]


@pytest.fixture(scope="module", params=[("native", 1), ("aiohttp", 1), ("httpx", 1), ("native", 2)])
def hostile_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostileRun]:
    transport, workers = request.param
    tmp = tmp_path_factory.mktemp(f"hostile-{transport}-{workers}")
    scenario = write_scenario(tmp, requests=12)
    with hostile_server() as server:
        done = _loadgen(
            "run",
            str(scenario),
            "--url",
            server.url,
            "--transport",
            transport,
            "--workers",
            str(workers),
            "--run-dir",
            str(tmp / "run"),
            env={"OPENAI_API_KEY": KEY},
        )
        # the key was sent (so it could leak), and was echoed back in every kind of error
        assert any(KEY.encode() in r for r in server.received if r.startswith(b"POST"))
    assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
    yield tmp / "run", done


def test_the_key_is_in_no_stored_file_and_never_printed(hostile_run: HostileRun) -> None:
    run_dir, done = hostile_run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {"requests.jsonl", "summary.json", "report.html"} <= {p.name for p in files}
    for path in [*files, None]:
        data = path.read_bytes() if path is not None else done.stdout + done.stderr
        for fragment in _fragments(KEY):
            assert fragment not in data, (path, fragment)
    records = [
        orjson.loads(line) for line in (run_dir / "requests.jsonl").read_bytes().splitlines()
    ]
    kinds = {r["outcome"] for r in records}
    # every way the echo came back was recorded (and redacted)
    assert {"http_4xx", "stream_error", "malformed_stream", "ok"} <= kinds, kinds
    assert any("[redacted]" in (r["error"] or "") for r in records)


def test_terminal_controls_from_the_server_are_not_printed(hostile_run: HostileRun) -> None:
    _, done = hostile_run
    out = done.stdout + done.stderr
    for control in (b"\x1b", b"\x07", b"\x9b"):
        assert control not in out, out.decode(errors="replace")
    assert b"m<script>" in out  # the model id was shown, made harmless


def _assert_no_markup(page: str) -> None:
    assert SCRIPT not in page and "<script" not in page.lower()
    assert "<img src=x" not in page and IMG not in page
    assert "\x1b" not in page


def test_the_run_report_escapes_every_server_string(hostile_run: HostileRun) -> None:
    run_dir, _ = hostile_run
    page = (run_dir / "report.html").read_text()
    _assert_no_markup(page)
    assert "&lt;script&gt;" in page  # the payload is there, as text


_NAMED_BY_KEY = {"phases", "targets", "request_success_by_reason", "phase_comparisons"}


def _poison(doc: Any, named: bool = False) -> Any:
    """Every string value of a summary with the payload appended, and the keys of the tables
    whose keys are names (phases, targets, finish reasons)."""
    if isinstance(doc, dict):
        return {
            (k + PAYLOAD if named else k): _poison(v, k in _NAMED_BY_KEY) for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [_poison(v) for v in doc]
    if isinstance(doc, str):
        return doc + PAYLOAD
    return doc


def test_reports_escape_every_string_of_a_poisoned_summary(
    tmp_path: Path, hostile_run: HostileRun
) -> None:
    """Phase names, target URLs, labels, warnings, errors: whatever a summary holds."""
    from loadgen.results.compare import compare_runs
    from loadgen.results.report_compare import render_compare_html
    from loadgen.results.report_run import render_run_report
    from loadgen.results.rundir import load_run

    run_dir, _ = hostile_run
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    poisoned = tmp_path / "poisoned"
    poisoned.mkdir()
    doc = _poison(summary)
    for key in ("schema_version", "status"):
        doc[key] = summary[key]
    (poisoned / "summary.json").write_bytes(orjson.dumps(doc))
    run = load_run(poisoned)
    _assert_no_markup(render_run_report(run, [], PAYLOAD))
    runs = [run, load_run(poisoned)]
    _assert_no_markup(render_compare_html(runs, compare_runs(runs), [PAYLOAD]))


def test_the_sweep_report_escapes_its_strings(tmp_path: Path) -> None:
    from loadgen.results.report_sweep import render_sweep_report

    doc = Sweep(
        name=PAYLOAD,
        axis="concurrency",
        phase=PAYLOAD,
        status=PAYLOAD,
        started_at=PAYLOAD,
        urls=[PAYLOAD],
        slo={},
        levels=[],
        attainment=0.99,
        min_gain=0.05,
        knee=Knee(level=None, rule="throughput", sentence=PAYLOAD),
        simulator=False,
        duration_s=1.0,
        scenario={"name": PAYLOAD},
    )
    _assert_no_markup(render_sweep_report(tmp_path, doc, []))


# ---- the terminal helper and key redaction, unit by unit ----------------------------------------
def test_for_terminal_strips_escape_sequences_and_escapes_controls() -> None:
    from loadgen.safetext import for_terminal

    assert for_terminal(f"a{ANSI}b") == "ab"
    assert for_terminal("a\x00b\x07c\x9bd\u202ee") == "a\\x00b\\x07c\\x9bd\\u202ee"
    assert for_terminal("line 1\nline 2\ttab") == "line 1\nline 2\ttab"
    assert for_terminal("x\ny\rz", lines=False) == "x\\ny\\rz"
    assert for_terminal("plain é 漢字") == "plain é 漢字"


def test_redact_hides_the_key_and_a_cut_off_start_of_it() -> None:
    from loadgen.safetext import redact

    assert redact(f"a {KEY} b {KEY}", KEY) == "a [redacted] b [redacted]"
    assert redact(f"cut here: {KEY[:20]}", KEY) == "cut here: [redacted]"
    assert redact(f"b'quoted {KEY[:30]}'", KEY) == "b'quoted [redacted]'"
    assert redact(f"{KEY[:6]}x {KEY[:5]}", KEY) == "[redacted]x " + KEY[:5]
    assert redact("nothing here", KEY) == "nothing here"
    assert redact("anything", None) == "anything"


# ---- path traversal ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        'name = "../../../../tmp/x"\n',
        'name = "a/b/c"\n',
        'name = "a\\\\b"\n',
        'name = ".hidden"\n',
        'name = "x\\u0000y"\n',
    ],
)
def test_names_used_in_paths_are_refused_at_load(tmp_path: Path, text: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load(tmp_path, text + SCENARIO.format(requests=1).replace('name = "hostile"\n', ""))
    one_line(info.value)


@pytest.mark.parametrize("phase", ["../p", "a/b", "..", "p\\u001b[2J"])
def test_phase_names_used_in_paths_are_refused_at_load(tmp_path: Path, phase: str) -> None:
    text = SCENARIO.format(requests=1) + f'[[phases]]\nname = "{phase}"\nrequests = 1\n'
    with pytest.raises(ScenarioError) as info:
        load(tmp_path, text)
    one_line(info.value)


def test_a_name_taken_from_the_file_name_is_made_safe(tmp_path: Path) -> None:
    from loadgen.scenario import load_scenario

    path = tmp_path / "my test (v2).toml"
    path.write_text(SCENARIO.format(requests=1).replace('name = "hostile"\n', ""))
    assert load_scenario(path).name == "my_test_v2"


def test_run_and_histogram_paths_stay_inside_their_folders(tmp_path: Path) -> None:
    """Where a name reaches a path without the scenario's checks (code, an old summary)."""
    from loadgen.metrics.histograms import IntervalHistograms
    from loadgen.results.files import new_run_dir
    from loadgen.results.spectra import log_path

    parent = tmp_path / "out"
    for name in ("../../../../tmp/x", "a/b/c", "..", "", "/abs"):
        path = new_run_dir(parent, name)
        assert path.parent == parent, path
    hist_dir = tmp_path / "run" / "histograms"
    assert log_path(tmp_path / "run", "../../p", "ttft").parent == hist_dir
    hist = IntervalHistograms(window=1.0)
    rec = RequestRecord(0, "p", 0, "t", 0.0, 0.0, 1.0)
    rec.first_token = 0.5
    hist.record(rec)
    written = hist.write_interval_logs(hist_dir, 0.0, prefix="../../p.")
    assert written and all(p.parent == hist_dir for p in written)


# ---- a reused results folder ------------------------------------------------------------------
def _run_into(
    tmp_path: Path, sim: SimulatorProcess, run_dir: Path, requests: int, overwrite: bool = False
) -> Any:
    import anyio

    from loadgen.orchestrator import RunOptions, run_scenario
    from loadgen.scenario import Overrides, load_scenario

    scenario = load_scenario(
        write_scenario(tmp_path, requests=requests), Overrides(urls=(sim.base_url,))
    )
    options = RunOptions(run_dir=str(run_dir), handle_signals=False, workers=1, overwrite=overwrite)
    return anyio.run(run_scenario, scenario, options, lambda _: None)


def test_a_non_empty_run_dir_is_refused_and_overwrite_replaces_loadgens_files(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    run_dir = tmp_path / "run"
    _run_into(tmp_path, sim, run_dir, requests=3)
    with pytest.raises(LoadgenError) as info:
        _run_into(tmp_path, sim, run_dir, requests=2)
    assert "--overwrite" in one_line(info.value)
    assert len((run_dir / "requests.jsonl").read_bytes().splitlines()) == 3  # untouched
    result = _run_into(tmp_path, sim, run_dir, requests=2, overwrite=True)
    lines = (run_dir / "requests.jsonl").read_bytes().splitlines()
    assert len(lines) == 2 == to_builtins(result.summary)["phases"]["main"]["requests"]["total"]


def test_overwrite_never_deletes_files_loadgen_did_not_write(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    run_dir = tmp_path / "run"
    _run_into(tmp_path, sim, run_dir, requests=1)
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(LoadgenError) as info:
        _run_into(tmp_path, sim, run_dir, requests=1, overwrite=True)
    assert "notes.txt" in one_line(info.value)
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert len((run_dir / "requests.jsonl").read_bytes().splitlines()) == 1


def test_the_command_line_refuses_a_used_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "requests.jsonl").write_text("{}\n")
    with hostile_server() as server:
        done = _loadgen(
            "run", str(write_scenario(tmp_path)), "--url", server.url, "--run-dir", str(run_dir)
        )
        posts = [r for r in server.received if r.startswith(b"POST")]
    assert done.returncode == 2 and posts == []
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--overwrite" in lines[0], lines
    assert (run_dir / "requests.jsonl").read_text() == "{}\n"


def test_model_id_payload_reaches_the_console_escaped(hostile_run: HostileRun) -> None:
    """The model id (chosen from the server's list) is in the summary as the server sent it."""
    run_dir, _ = hostile_run
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["run"]["model"] == MODEL
    assert re.search(r"\[redacted\]", (run_dir / "requests.jsonl").read_text())
