"""Runs from flags alone: `loadgen run` without a scenario file, vLLM bench's spellings as
aliases, the workload flags as overrides validated like the scenario's keys, and
`--save-scenario`, whose file replays the same requests."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen import cli
from loadgen.commands.flags import command_scenario, scenario_overrides
from loadgen.config import Scenario
from loadgen.results.schema import decode
from loadgen.scenario import FLAGS_SCENARIO, Overrides, apply_overrides, load_scenario
from loadgen.scenario_toml import scenario_to_toml
from tests.conftest import StartSim
from tests.test_input_validation import one_line_exit_2

SMOKE = Path(__file__).resolve().parents[1] / "scenarios" / "smoke.toml"


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback port bound but not listening: a run that got that far would fail."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def parsed(*argv: str, command: str = "run") -> Scenario:
    """The scenario `loadgen COMMAND ARGV` would run (nothing is run)."""
    args = cli.build_parser(command).parse_args([command, *argv])
    return command_scenario(args.scenario, scenario_overrides(args))


def overrides_of(*argv: str) -> Overrides:
    return scenario_overrides(cli.build_parser("run").parse_args(["run", *argv]))


def run_quietly(tmp_path: Path, name: str, *argv: str) -> Path:
    run_dir = tmp_path / name
    code = cli.main(["run", *argv, "--no-report", "--no-progress", "--workers", "1",
                     "--run-dir", str(run_dir)])  # fmt: skip
    assert code == 0
    return run_dir


def request_set(run_dir: Path) -> set[tuple[object, ...]]:
    """What was asked of the server, request by request (timings apart)."""
    lines = (run_dir / "requests.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {
        (r["phase"], r["index"], tuple(r["images"]), r["prompt_tokens"], r["completion_tokens"])
        for r in records
    }


def test_a_run_from_flags_alone(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server()
    run_dir = run_quietly(
        tmp_path, "run", "--url", sim.base_url, "--concurrency", "3", "--requests", "12",
        "--image-size", "96x64", "--image-format", "png", "--max-tokens", "7", "--ignore-eos",
        "--prompt", "One word.", "--prompt", "Two words.", "--warmup-requests", "2",
    )  # fmt: skip
    summary = decode((run_dir / "summary.json").read_bytes())
    assert summary.status == "completed"
    assert summary.scenario["name"] == FLAGS_SCENARIO
    main = summary.phases["main"]
    assert main.requests.total == main.requests.succeeded == 12
    assert main.tokens.generation == 12 * 7  # --ignore-eos: exactly --max-tokens each
    assert main.concurrency.peak == 3
    workload = summary.scenario["workload"]
    assert workload["prompts"] == ["One word.", "Two words."]
    assert (workload["images"]["width"], workload["images"]["height"]) == (96, 64)
    assert workload["images"]["format"] == "png"
    assert summary.scenario["phases"][0]["load"]["warmup_requests"] == 2


def test_saved_scenario_reads_back_equal_and_replays_the_same_requests(
    tmp_path: Path, sim_server: StartSim
) -> None:
    sim = sim_server()
    saved = tmp_path / "flags.toml"
    flags = ["--concurrency", "2", "--requests", "10", "--image-size", "64x48", "--image-pool",
             "4", "--max-tokens", "5", "--min-tokens", "2", "--temperature", "0.5",
             "--system-prompt", "Be brief.", "--seed", "11"]  # fmt: skip
    first = run_quietly(
        tmp_path, "first", *flags, "--url", sim.base_url, "--save-scenario", str(saved)
    )
    expected = parsed(*flags, "--url", sim.base_url, "--no-progress")
    assert load_scenario(saved) == dataclasses.replace(expected, source=str(saved))
    replay = run_quietly(tmp_path, "replay", str(saved))
    assert request_set(replay) == request_set(first)
    assert len(request_set(first)) == 10


def test_save_scenario_with_a_file_and_overrides(tmp_path: Path) -> None:
    scenario = parsed(str(SMOKE), "--max-tokens", "9", "--image-format", "webp", "--rate", "3")
    saved = tmp_path / "smoke-rate.toml"
    saved.write_text(scenario_to_toml(scenario))
    assert load_scenario(saved) == dataclasses.replace(scenario, source=str(saved))
    assert scenario.name == "smoke"
    assert scenario.phases[0].load.mode == "poisson"
    assert scenario.workload.images.format == "webp"


def test_save_scenario_never_overwrites(
    tmp_path: Path, refused_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "mine.toml"
    saved.write_text("keep me")
    argv = ["run", "--url", refused_url, "--requests", "2", "--save-scenario", str(saved),
            "--run-dir", str(tmp_path / "run")]  # fmt: skip
    line = one_line_exit_2(capsys, argv, "--save-scenario")
    assert "exists" in line
    assert saved.read_text() == "keep me"
    assert not (tmp_path / "run").exists()


ALIASES = [
    (["--max-concurrency", "30"], ["--concurrency", "30"]),
    (["--request-rate", "2.5"], ["--rate", "2.5"]),
    (["--num-prompts", "300"], ["--requests", "300"]),
    (["--base-url", "http://h:8000"], ["--url", "http://h:8000"]),
]


@pytest.mark.parametrize(("alias", "flag"), ALIASES, ids=lambda v: v[0])
def test_vllm_bench_spellings_are_aliases(alias: list[str], flag: list[str]) -> None:
    assert overrides_of(*alias) == overrides_of(*flag) != Overrides()


def test_max_concurrency_is_the_stream_count_or_the_in_flight_cap() -> None:
    # Closed loop (vLLM bench's default infinite rate under the cap): N streams.
    closed = parsed("--max-concurrency", "30", "--num-prompts", "300").phases[0].load
    assert (closed.mode, closed.concurrency, closed.max_concurrency) == ("closed", 30, 0)
    # With a rate: Poisson arrivals, at most N in flight.
    opened = parsed("--max-concurrency", "30", "--request-rate", "4", "--num-prompts", "300")
    load = opened.phases[0].load
    assert (load.mode, load.rate, load.max_concurrency) == ("poisson", 4.0, 30)


def test_every_workload_flag_reaches_its_key() -> None:
    s = parsed(
        "--requests", "5", "--image-size", "448x336", "--image-format", "webp",
        "--image-content", "noise", "--images-per-request", "3", "--prompt", "a", "--prompt",
        "b", "--system-prompt", "sys", "--max-tokens", "320", "--min-tokens", "10",
        "--ignore-eos", "--temperature", "0.7", "--image-pool", "50", "--warmup-requests", "4",
        "--endpoint", "/gateway/chat", "--name", "mine",
    )  # fmt: skip
    w, images = s.workload, s.workload.images
    assert (images.width, images.height, images.format, images.content) == (
        448, 336, "webp", "noise"
    )  # fmt: skip
    assert images.pool_size == 50
    assert (w.images_per_request, w.prompts, w.system_prompt) == (3, ("a", "b"), "sys")
    assert (w.max_tokens, w.min_tokens, w.ignore_eos, w.temperature) == (320, 10, True, 0.7)
    assert s.phases[0].load.warmup_requests == 4
    assert (s.target.endpoint, s.target.api) == ("/gateway/chat", "chat")
    assert s.name == "mine"
    assert parsed(str(SMOKE), "--no-ignore-eos").workload.ignore_eos is False
    assert parsed(str(SMOKE), "--api", "chat").target.endpoint == "/v1/chat/completions"


def test_defaults_of_a_flags_only_run_are_a_keyless_scenario_file(tmp_path: Path) -> None:
    empty = tmp_path / "flags.toml"
    empty.write_text("[load]\nrequests = 1\n")
    assert parsed("--requests", "1") == dataclasses.replace(load_scenario(empty), source="")


BAD_FLAGS = [
    (["--image-size", "448"], "WIDTHxHEIGHT"),
    (["--image-size", "0x10"], "--image-size: expected 1 to 16384 pixels"),
    (["--image-size", "20000x10"], "--image-size"),
    (["--image-format", "gif"], "--image-format: expected one of 'jpeg', 'png', 'webp'"),
    (["--image-content", "cats"], "--image-content"),
    (["--images-per-request", "300"], "--images-per-request: expected 0 to 256"),
    (["--max-tokens", "10", "--min-tokens", "11"], "--min-tokens: expected 0 to max_tokens (10)"),
    (["--min-tokens", "-1"], "--min-tokens"),
    (["--temperature", "-1"], "--temperature: expected 0 or more"),
    (["--temperature", "nan"], "--temperature"),
    (["--image-pool", "-1"], "--image-pool"),
    (["--image-pool", "2000000"], "--image-pool"),
    (["--api", "nope"], "--api: unknown api 'nope'"),
    (["--endpoint", "v1/chat"], "--endpoint: expected a path starting with '/'"),
    (["--endpoint", "/v1\r\nX: y"], "--endpoint"),
    (["--warmup-requests", "-1"], "warmup_requests"),
    (["--prompt", "a\x00b"], "--prompt: expected a string without NUL"),
    (["--system-prompt", "a\x00b"], "--system-prompt"),
    (["--name", "../x"], "--name"),
    (["--requests", "0"], "set requests and/or duration"),
    (["--max-concurrency", "0"], "concurrency"),
    (["--request-rate", "inf"], "every request at once"),
]


@pytest.mark.parametrize(("flags", "expected"), BAD_FLAGS, ids=lambda v: str(v))
def test_bad_flags_are_refused_in_one_line(
    tmp_path: Path,
    refused_url: str,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: str,
) -> None:
    argv = ["run", "--url", refused_url, "--requests", "2", *flags, "--output", str(tmp_path)]
    one_line_exit_2(capsys, argv, expected)
    assert not list(tmp_path.iterdir())  # refused before anything was made


def test_synthetic_image_flags_on_a_folder_scenario_are_refused(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    path = tmp_path / "folder.toml"
    path.write_text(
        '[workload.images]\nsource = "folder"\nfolder = "images"\n[load]\nrequests = 1\n'
    )
    s = load_scenario(path)
    with pytest.raises(Exception, match="--image-size: sets synthetic images"):
        apply_overrides(s, Overrides(image_size=(10, 10)))


def test_run_with_neither_scenario_nor_bound_says_what_it_needs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["run"], ["run", "--concurrency", "4"]):
        line = one_line_exit_2(capsys, argv, "without a scenario file")
        assert "--requests N and/or --duration S" in line
        assert "scenarios/smoke.toml" in line


def test_sweep_from_flags_alone(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server()
    out = tmp_path / "sweep"
    code = cli.main(["sweep", "--concurrency", "1,2", "--num-prompts", "4", "--max-tokens", "3",
                     "--ignore-eos", "--image-size", "32x32", "--base-url", sim.base_url, "--workers", "1",
                     "--sweep-dir", str(out)])  # fmt: skip
    assert code == 0
    levels = sorted(p.name for p in out.iterdir() if p.name.startswith("concurrency-"))
    assert len(levels) == 2
    for level in levels:
        summary = decode((out / level / "summary.json").read_bytes())
        assert summary.phases["main"].requests.succeeded == 4
        assert summary.phases["main"].tokens.generation == 4 * 3


def test_every_flag_the_readme_names_for_flags_alone_exists() -> None:
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### A run from flags alone", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(--[a-z-]+)", section)) | set(re.findall(r"/ `(--[a-z-]+)", section))
    parser = cli.build_parser("run")
    run = next(a for a in parser._actions if a.dest == "command").choices["run"]  # type: ignore[union-attr]
    known = {s for action in run._actions for s in action.option_strings}
    assert named - {"--mode"} <= known, named - known
    assert {"--max-concurrency", "--request-rate", "--num-prompts", "--base-url"} <= named
