"""Bad local input: one line on stderr and exit status 2 before any request; never a traceback,
never a hang. Scenario values (finite, in range, bounded), flags, files, results folders."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadgen import cli
from loadgen.errors import ScenarioError
from loadgen.scenario import load_scenario, parse_scenario, scenario_to_json

LOAD = "[load]\nrequests = 2\n"
MAX_FILE_BYTES = 4 * 1024 * 1024  # README: a scenario file


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback port bound but not listening: every connection is refused, and no other test
    can take the port meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str = "") -> str:
    """Run `loadgen ARGV` in process: exit status 2 and exactly one line on stderr."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse refuses a flag by exiting
        code = exc.code if isinstance(exc.code, int) else 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert expected in lines[0], err
    return lines[0]


# --- scenario values ---------------------------------------------------------------------------

BAD_VALUES = [
    # Each would run forever, hang before or after the requests, or overflow on the wire.
    ("[load]\nduration = nan\n", "[load] duration: expected a finite number"),
    ("[load]\nrequests = 2\nramp_up = inf\n", "[load] ramp_up: expected a finite number"),
    ("[load]\nrequests = 2\nduration = 1e300\n", "[load] duration: expected 0 to 1,000,000"),
    ("[load]\nrequests = 2\nconcurrency = 1000000000\n", "[load] concurrency: expected 1 to"),
    ("[load]\nrequests = 1000000000000000\n", "[load] requests: expected 0 to 1,000,000"),
    ("[load]\nrequests = 2\nwarmup_requests = 1000000000000\n", "[load] warmup_requests"),
    ('[load]\nmode = "poisson"\nrate = 1e300\nrequests = 2\n', "[load] rate:"),
    ('[load]\nmode = "poisson"\nrate = inf\nrequests = 2\n', "[load] rate: expected a finite"),
    ('[load]\nmode = "poisson"\nrate = 1000\nduration = 100000\n', "plans up to"),
    ('[load]\nmode = "gamma"\nrate = 1\nburstiness = inf\nrequests = 2\n', "burstiness"),
    ('[load]\nmode = "gamma"\nrate = 1\nburstiness = 1e-9\nrequests = 2\n', "burstiness"),
    ('[load]\nmode = "poisson"\nrate = 1\nmax_concurrency = 10000000\nrequests = 2\n', "max_c"),
    ("[load]\nrequests = 2\nduration = 10\ndrain_timeout = inf\n", "drain_timeout"),
    (LOAD + "[output]\nwindow = 1e-9\n", "[output] window: expected 0.1 to"),
    (LOAD + "[output]\nwindow = inf\n", "[output] window: expected a finite number"),
    (LOAD + "[output]\nprogress_interval = nan\n", "progress_interval"),
    (LOAD + "[target]\nread_timeout = 1e300\n", "[target] read_timeout"),
    (LOAD + "[target]\nconnect_timeout = inf\n", "[target] connect_timeout"),
    (LOAD + "[target]\npool_size = 1000000000\n", "[target] pool_size"),
    (LOAD + "[slo]\nttft_ms = inf\n", "[slo] ttft_ms"),
    (LOAD + "[workload]\nmax_tokens = 9223372036854775807\n", "[workload] max_tokens"),
    (LOAD + "[workload]\ntemperature = nan\n", "[workload] temperature"),
    (LOAD + "[workload]\nimages_per_request = 100000\n", "[workload] images_per_request"),
    (LOAD + "[workload.images]\npool_size = 1000000000000\n", "[workload.images] pool_size"),
    (LOAD + "[workload.images]\nrepeat_ratio = nan\n", "[workload.images] repeat_ratio"),
    ("seed = 99999999999999999999\n" + LOAD, "seed: expected an integer from 0 to"),
    (LOAD + "[workload]\nextra_body = {stream = false}\n", "[workload] extra_body.stream"),
    (LOAD + '[workload]\nextra_body = {messages = "x"}\n', "[workload] extra_body.messages"),
    (LOAD + '[workload]\nextra_body = {model = "x"}\n', "[workload] extra_body.model"),
    (LOAD + "[workload]\nextra_body = {n = 99999999999999999999}\n", "extra_body.n"),
    (LOAD + "[workload]\nextra_body = {x = " + "[" * 40 + "]" * 40 + "}\n", "nest deeper"),
    (LOAD + "x = " + "[" * 5000 + "]" * 5000 + "\n", "nest"),
    ('name = "' + "n" * 1000 + '"\n' + LOAD, "name: expected 1 to 100 letters"),
    ('name = "a\\u0000b"\n' + LOAD, "name: expected 1 to 100 letters"),
    ('name = "a\\u001bb"\n' + LOAD, "name: expected 1 to 100 letters"),
    ('[[phases]]\nname = "a\\u0000"\nrequests = 2\n', "[phases #1] name"),
    (LOAD + '[target]\nmodel = "m\\u0000"\n', "[target] model"),
    (LOAD + '[target]\napi_key_env = "K\\u0000"\n', "[target] api_key_env"),
    (LOAD + '[target.headers]\nX-Name = "caf\\u00e9"\n', "[target] headers.X-Name: expected ASCII"),
    (LOAD + '[target]\nurl = "http://[::1"\n', "[target] url: not a valid URL"),
    (LOAD + '[target]\nurl = "http://127.0.0.1:99999"\n', "[target] url: not a valid URL"),
    (LOAD + '[target]\nurl = "http://"\n', "[target] url: expected a host name"),
]


@pytest.mark.parametrize(("text", "message"), BAD_VALUES)
def test_bad_values_are_refused_at_load(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, text))
    assert str(info.value).startswith(f"{tmp_path / 's.toml'}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_limits_admit_large_real_loads(tmp_path: Path) -> None:
    text = """
[load]
mode = "poisson"
rate = 500
duration = 1800
max_concurrency = 4096
[workload]
max_tokens = 32768
[output]
window = 0.5
"""
    load = load_scenario(write(tmp_path, text)).phases[0].load
    assert (load.rate, load.duration, load.max_concurrency) == (500.0, 1800.0, 4096)


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_bytes(b"\xef\xbb\xbf" + LOAD.encode())
    assert load_scenario(p).phases[0].load.requests == 2


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    text = LOAD + '[workload]\nprompt = "' + "x" * (MAX_FILE_BYTES + 10) + '"\n'
    with pytest.raises(ScenarioError, match="larger than the limit of 4,194,304 bytes"):
        load_scenario(write(tmp_path, text))


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    """A device (/dev/zero) or a pipe could be read forever: refused before reading."""
    fifo = tmp_path / "s.toml"
    os.mkfifo(fifo)

    def feed() -> None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # nobody opened the pipe to read it: fine
            return
        # The reader may have refused the pipe and closed it already: that is the point.
        with contextlib.suppress(BrokenPipeError), os.fdopen(fd, "w") as f:
            f.write(LOAD)

    writer = threading.Timer(0.5, feed)
    writer.start()
    try:
        with pytest.raises(ScenarioError, match="not a regular file"):
            load_scenario(fifo)
    finally:
        writer.cancel()
        writer.join()
    if Path("/dev/zero").exists():
        with pytest.raises(ScenarioError, match="not a regular file"):
            load_scenario("/dev/zero")


# --- flags and the command's error handling ------------------------------------------------------


def run_argv(path: Path, url: str, *more: str) -> list[str]:
    out = str(path.parent / "results")
    return ["run", str(path), "--url", url, "--model", "m", "--no-report", "--no-progress",
            "--workers", "1", "--output", out, *more]  # fmt: skip


BAD_FLAGS = [
    (["--rate", "inf"], "every request at once"),
    (["--rate", "nan"], "rate"),
    (["--rate", "-1"], "rate"),
    (["--rate", "1e300"], "rate"),
    (["--concurrency", "-5"], "concurrency"),
    (["--concurrency", "1000000000000"], "concurrency"),
    (["--requests", "1000000000000000"], "requests"),
    (["--duration", "inf"], "duration"),
    (["--duration", "nan"], "duration"),
    (["--window", "1e-9"], "window"),
    (["--window", "nan"], "window"),
    (["--max-tokens", "99999999999999999999"], "max-tokens"),
    (["--seed", "-1"], "seed"),
    (["--seed", "99999999999999999999"], "seed"),
    (["--workers", "-1"], "workers"),
    (["--workers", "1000000"], "workers"),
    (["--url", "http://[::1"], "not a valid URL"),
    (["--model", "a\x00b"], "--model"),
    (["--run-dir", "/dev/null/x"], "/dev/null/x"),
]


@pytest.mark.parametrize(("flags", "expected"), BAD_FLAGS, ids=lambda v: str(v))
def test_bad_flags_one_line_exit_2(
    tmp_path: Path,
    refused_url: str,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: str,
) -> None:
    scenario = write(tmp_path, LOAD)
    one_line_exit_2(capsys, run_argv(scenario, refused_url, *flags), expected)
    # Refused before any request: no results folder was made.
    assert not (tmp_path / "results").exists()


def test_sweep_bad_levels(
    tmp_path: Path, refused_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = write(tmp_path, LOAD)
    base = ["sweep", str(scenario), "--url", refused_url, "--model", "m"]
    one_line_exit_2(capsys, [*base, "--concurrency", ""], "--concurrency")
    one_line_exit_2(capsys, [*base, "--rate", "inf"], "--rate")
    one_line_exit_2(capsys, [*base, "--rate", "1,2", "--min-gain", "nan"], "--min-gain")
    one_line_exit_2(capsys, [*base, "--rate", "1,2", "--slo-attainment", "inf"], "--slo")


@pytest.mark.parametrize("port", ["-1", "99999", "x"])
def test_sim_refuses_a_port_out_of_range(capsys: pytest.CaptureFixture[str], port: str) -> None:
    one_line_exit_2(capsys, ["sim", "--port", port], "--port")


def test_sim_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_exit_2(capsys, ["sim", "--port", str(port)], f"127.0.0.1:{port}")


@pytest.mark.parametrize(
    "flag", ["--log-interval", "--fault-slow-headers", "--step-base-ms", "--fault-429-rate"]
)
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_sim_refuses_non_finite_numbers(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    one_line_exit_2(capsys, ["sim", flag, value], flag)


# --- hand-corrupted results folders --------------------------------------------------------------

CORRUPT_SUMMARIES = [
    b"",
    b"{",
    b"[]",
    b'{"phases": 5}',
    b'{"phases": {"main": 3}}',
    b'{"phases": {"main": {"requests": "x"}}, "scenario": 1}',
    b'{"phases": [], "scenario": {"load": null}}',
]


@pytest.mark.parametrize("content", CORRUPT_SUMMARIES)
def test_report_and_compare_on_a_corrupted_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_bytes(content)
    one_line_exit_2(capsys, ["report", str(run)], "summary.json")
    one_line_exit_2(capsys, ["compare", str(run), str(run)], "summary.json")


# --- fuzz: scenario files of any shape -----------------------------------------------------------

_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["closed", "poisson", "gamma", "constant", "folder", "jpeg", "", "\x00"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
_KEYS = {
    "": ["name", "seed", "description", "bogus"],
    "load": ["mode", "concurrency", "rate", "requests", "duration", "ramp_up", "burstiness",
             "max_concurrency", "warmup_requests", "drain_timeout", "bogus"],
    "workload": ["max_tokens", "min_tokens", "temperature", "prompts", "images_per_request",
                 "extra_body", "system_prompt", "ignore_eos"],
    "workload.images": ["source", "width", "height", "quality", "pool_size", "repeat_ratio",
                        "max_side", "format", "content", "folder"],
    "target": ["url", "model", "headers", "connect_timeout", "read_timeout", "pool_size",
               "endpoint", "api", "scrape_interval"],
    "output": ["window", "progress_interval", "directory"],
    "slo": ["ttft_ms", "tpot_ms", "e2e_ms"],
}  # fmt: skip


@st.composite
def _documents(draw: st.DrawFn) -> dict[str, object]:
    doc: dict[str, object] = {"load": {"requests": 2}}
    for table, keys in _KEYS.items():
        for key in draw(st.lists(st.sampled_from(keys), max_size=3)):
            value = draw(_VALUES)
            if not table:
                doc[key] = value
                continue
            node = doc
            for part in table.split("."):
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    break
                node = child
            else:
                node[key] = value
    if draw(st.booleans()):
        doc["phases"] = draw(st.lists(st.dictionaries(st.sampled_from(
            ["name", "requests", "rate", "mode", "duration", "repeat_of", "x"]), _VALUES,
            max_size=4), max_size=3))  # fmt: skip
    return doc


_FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@_FUZZ
@given(doc=_documents())
def test_fuzz_parsed_documents_load_or_fail_in_one_line(doc: dict[str, object]) -> None:
    try:
        scenario = parse_scenario(doc, "fuzz.toml")
    except ScenarioError as exc:
        assert "\n" not in str(exc)
        assert str(exc).startswith("fuzz.toml")
        return
    # What loads is sane: every number finite and every integer within 64 bits.
    todo: list[object] = [scenario_to_json(scenario)]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, float):
            assert math.isfinite(item)
        elif isinstance(item, int):
            assert -(2**63) <= item < 2**63


@_FUZZ
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda n, c: c * n,
            st.integers(0, 3_000_000),
            st.sampled_from(["a", "\x00", "[", "{a="]),
        ),
        st.builds(lambda t, k: LOAD + t * k, st.text(max_size=5), st.integers(0, 100_000)),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    )
)
def test_fuzz_scenario_files_never_raise_anything_else(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "s.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_scenario(path)
    except ScenarioError as exc:
        assert "\n" not in str(exc)


def _toml(value: object) -> str:
    """A value as inline TOML (JSON's string escapes are TOML's too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


@settings(max_examples=40, deadline=None, database=None)
@given(doc=_documents())
def test_fuzz_run_command_never_a_traceback(
    tmp_path_factory: pytest.TempPathFactory, doc: dict[str, object]
) -> None:
    """Through `loadgen run`: a file that does not load is one line and status 2 (one that loads
    is checked no further here: it may ask for hours of load)."""
    folder = tmp_path_factory.mktemp("run")
    text = "".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in doc.items())
    try:
        path = write(folder, text)
    except UnicodeEncodeError:  # a lone surrogate: no file can hold it
        return
    try:
        load_scenario(path)
    except ScenarioError:
        pass
    else:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        argv = ["run", str(path), "--url", url, "--model", "m", "--no-report", "--workers", "1",
                "--output", str(folder / "r")]  # fmt: skip
        assert cli.main(argv) == 2
