"""A phase's own workload (`[phases.workload]`): the scenario's with some keys changed, for that
phase only, validated at load, kept by the command-line flags, sent alike by any number of
shards."""

from __future__ import annotations

import tomllib
from pathlib import Path

import anyio
import pytest

from loadgen.errors import ScenarioError
from loadgen.orchestrator import RunOptions, RunResult, run_scenario
from loadgen.records import Outcome
from loadgen.results.files import read_requests
from loadgen.scenario import Overrides, apply_overrides, load_scenario, parse_scenario
from loadgen.workload.workload import Workload
from tests.conftest import StartSim

SCENARIO = """
seed = 4
[load]
concurrency = 2
requests = 10
[workload]
ignore_eos = true
max_tokens = 6
prompt = "Describe it."
[workload.images]
width = 40
height = 30
[[phases]]
name = "plain"
warmup_requests = 2
[[phases]]
name = "own"
[phases.workload]
prompt = "Name the colours."
max_tokens = 3
images_per_request = 2
invalid_share = 0.3
invalid_kind = "undecodable_image"
[phases.workload.images]
format = "png"
width = 20
height = 20
[[phases]]
name = "again"
repeat_of = "own"
"""


def _parse(text: str) -> object:
    return parse_scenario(tomllib.loads(text), "s.toml", Path("."))


def test_each_phase_builds_its_bodies_from_its_own_workload() -> None:
    scenario = parse_scenario(tomllib.loads(SCENARIO), "s.toml", Path("."))
    own = scenario.phases[1].workload
    assert scenario.phases[0].workload is None and own is not None
    assert scenario.phases[2].workload is None  # a replay sends its source's
    workload = Workload(scenario.workload, scenario.seed, "m")
    plain = workload.prepare("plain", 10)
    mine = workload.prepare("own", 10, workload=own)
    again = workload.prepare("again", 10, repeat_of="own")
    assert b'"max_tokens":6' in plain.body(0) and b"Describe it." in plain.body(0)
    assert len(plain.image_ids(0)) == 1
    assert not any(plain.invalid_kind(i) for i in range(10))
    good = next(i for i in range(10) if not mine.invalid_kind(i))
    assert b'"max_tokens":3' in mine.body(good) and b"Name the colours." in mine.body(good)
    assert b"data:image/png;base64," in mine.body(good) and len(mine.image_ids(good)) == 2
    assert [again.body(i) for i in range(10)] == [mine.body(i) for i in range(10)]
    assert any(mine.invalid_kind(i) for i in range(10))


@pytest.mark.parametrize(
    ("phase", "message"),
    [
        (
            'repeat_of = "a"\n[phases.workload]\nmax_tokens = 3',
            r"\[phases #2\] workload: a replay sends the requests of 'a' as they were",
        ),
        (
            "[phases.workload]\ntemperature = -1.0",
            r"\[phases #2.workload\] temperature: expected 0 or more",
        ),
        (
            "[phases.workload]\nextra_body = { top_k = 3 }",
            r"\[phases #2.workload\] extra_body: a phase cannot change this; it may change: prompts",
        ),
        (
            '[phases.workload.images]\nsource = "folder"',
            r"\[phases #2.workload.images\] source: a phase cannot change this; it may change: width",
        ),
        (
            "[phases.workload]\nmax_tokens = 2",
            r"\[phases #2.workload\] min_tokens: expected 0 to max_tokens \(2\), got 4",
        ),
        ("workload = 3", r"\[phases #2\] workload: expected a table"),
    ],
)
def test_a_bad_phase_workload_is_refused(phase: str, message: str) -> None:
    text = f"""
[workload]
min_tokens = 4
[[phases]]
name = "a"
requests = 3
[[phases]]
name = "b"
requests = 3
{phase}
"""
    with pytest.raises(ScenarioError, match=message):
        _parse(text)


def test_a_phase_workload_follows_the_flags_but_for_what_it_changes() -> None:
    scenario = parse_scenario(tomllib.loads(SCENARIO), "s.toml", Path("."))
    changed = apply_overrides(scenario, Overrides(max_tokens=9, image_size=(64, 48)))
    own = changed.phases[1].workload
    assert changed.workload.max_tokens == 9
    assert own is not None and own.max_tokens == 3  # its own
    assert (own.images.width, own.images.height) == (20, 20)  # its own
    assert own.images.format == "png" and own.ignore_eos is True
    text_only = apply_overrides(scenario, Overrides(prompts=("Other.",), ignore_eos=False))
    own = text_only.phases[1].workload
    assert own is not None and own.prompts == ("Name the colours.",) and own.ignore_eos is False
    with pytest.raises(ScenarioError, match="takes no images"):
        apply_overrides(scenario, Overrides(api="completions", images_per_request=0))


def _run(path: Path, url: str, workers: int) -> RunResult:
    scenario = load_scenario(path, Overrides(urls=(url,)))
    options = RunOptions(
        run_dir=str(path.parent / f"run-{workers}"), handle_signals=False, workers=workers
    )
    return anyio.run(run_scenario, scenario, options, lambda _: None)


def test_phases_with_their_own_workloads_against_the_simulator(
    tmp_path: Path, sim_server: StartSim
) -> None:
    sim = sim_server("--enable-prompt-tokens-details")
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO)

    def sent(workers: int) -> set[tuple[object, ...]]:
        result = _run(path, sim.base_url, workers)
        records = [
            r for r in read_requests(result.run_dir / "requests.jsonl") if r.phase != "warmup"
        ]
        for name, tokens, images in (("plain", 6, 1), ("own", 3, 2), ("again", 3, 2)):
            mine = [r for r in records if r.phase == name]
            good = [r for r in mine if not r.invalid]
            assert len(mine) == 10
            assert all(r.outcome is Outcome.OK and r.completion_tokens == tokens for r in good)
            assert all(len(r.images) == images for r in mine)
            assert all(r.outcome is Outcome.INVALID_REJECTED for r in mine if r.invalid)
            phase = result.summary.phases[name]
            assert phase.requests.invalid == len(mine) - len(good)
            assert phase.tokens.generation == tokens * len(good)
            server = result.summary.server.phases[name]
            assert server.delta is not None
            assert server.delta.generation_tokens == phase.tokens.generation
            assert server.delta.prompt_tokens == phase.tokens.prompt
        assert not any(r.invalid for r in records if r.phase == "plain")
        own = {(r.index, r.body, r.invalid) for r in records if r.phase == "own"}
        assert any(invalid for _, _, invalid in own)
        assert {(r.index, r.body, r.invalid) for r in records if r.phase == "again"} == own
        return {(r.phase, r.index, r.body, r.invalid, tuple(r.images)) for r in records}

    assert sent(1) == sent(2)
