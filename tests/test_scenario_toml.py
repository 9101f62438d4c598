"""`--save-scenario`: a resolved scenario written as TOML reads back into an equal scenario."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.config import ImageMixEntry, Scenario
from loadgen.scenario import load_scenario, parse_scenario
from loadgen.scenario_toml import TomlWriteError, scenario_to_toml

SCENARIOS = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.toml"))


def _round_trip(scenario: Scenario, folder: Path) -> Scenario:
    text = scenario_to_toml(scenario)
    return parse_scenario(tomllib.loads(text), scenario.source, folder)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_reads_back_equal(path: Path) -> None:
    scenario = load_scenario(path)
    assert _round_trip(scenario, path.parent) == scenario


def test_optional_values_and_odd_text_survive(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIOS[0])
    target = dataclasses.replace(
        scenario.target,
        headers=(("X-Odd.Key", "a"), ("X-Team", "vision")),  # as loading orders them
        request_timeout=12.5,
    )
    workload = dataclasses.replace(
        scenario.workload,
        prompts=('Say "hi"\n\tthen \\ stop', "é ü 中文"),
        min_tokens=3,
        extra_body=(("chat_template_kwargs", {"enable_thinking": False}), ("top_k", 5), ("x", [])),
    )
    changed = dataclasses.replace(scenario, target=target, workload=workload)
    assert _round_trip(changed, tmp_path) == changed


def test_a_mix_and_drawn_counts_survive(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIOS[0])
    images = dataclasses.replace(
        scenario.workload.images,
        source="synthetic",
        folder="",
        width=640,  # the defaults: a mix gives each entry its size
        height=480,
        mix=(
            ImageMixEntry("448x336", "jpeg", "photo", 60.0),
            ImageMixEntry("20x20", "png", "solid", 0.5),
        ),
    )
    workload = dataclasses.replace(
        scenario.workload,
        images=images,
        images_per_request=3,
        images_per_request_spec="{ 0 = 1, 1 = 70, 3 = 29.5 }",
    )
    changed = dataclasses.replace(scenario, workload=workload)
    text = scenario_to_toml(changed)
    assert "images_per_request = { 0 = 1, 1 = 70, 3 = 29.5 }" in text
    assert _round_trip(changed, tmp_path) == changed


def test_null_in_extra_body_is_refused_by_name() -> None:
    scenario = load_scenario(SCENARIOS[0])
    workload = dataclasses.replace(scenario.workload, extra_body=(("stop", None),))
    with pytest.raises(TomlWriteError, match=r"extra_body\.stop: null cannot be written"):
        scenario_to_toml(dataclasses.replace(scenario, workload=workload))


@settings(max_examples=60, deadline=None)
@given(
    prompts=st.lists(
        st.text(st.characters(blacklist_characters="\x00"), min_size=1, max_size=20),
        min_size=1,
        max_size=3,
    ),
    seed=st.integers(0, 2**63 - 1),
    max_tokens=st.integers(1, 10_000),
    temperature=st.floats(0, 2, allow_nan=False),
)
def test_any_prompts_and_numbers_read_back(
    prompts: list[str], seed: int, max_tokens: int, temperature: float
) -> None:
    scenario = load_scenario(SCENARIOS[0])
    workload = dataclasses.replace(
        scenario.workload, prompts=tuple(prompts), max_tokens=max_tokens, temperature=temperature
    )
    changed = dataclasses.replace(scenario, seed=seed, workload=workload)
    assert _round_trip(changed, Path.cwd()) == changed


def test_a_phases_own_workload_and_bad_requests_read_back(tmp_path: Path) -> None:
    doc = tomllib.loads(
        """
[workload]
prompt = "A"
max_tokens = 20
invalid_share = 0.1
invalid_kind = ["oversized_image", "min_tokens_above_max"]
[[phases]]
name = "a"
requests = 5
[[phases]]
name = "b"
requests = 5
[phases.workload]
prompt = "B"
max_tokens = 8
images_per_request = 2
invalid_share = 0.0
[phases.workload.images]
format = "png"
width = 100
"""
    )
    scenario = parse_scenario(doc, "s.toml", tmp_path)
    assert scenario.phases[0].workload is None
    own = scenario.phases[1].workload
    assert own is not None and (own.prompts, own.max_tokens, own.images.format) == (
        ("B",),
        8,
        "png",
    )
    assert _round_trip(scenario, tmp_path) == scenario


def test_a_phase_workload_beside_drawn_counts_reads_back_equal(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        """
[workload]
images_per_request = { 1 = 70, 3 = 30 }
max_tokens = 16
[load]
concurrency = 2
[[phases]]
name = "a"
requests = 4
[[phases]]
name = "b"
requests = 4
[phases.workload]
max_tokens = 8
[[phases]]
name = "c"
requests = 4
[phases.workload]
images_per_request = { min = 0, max = 2 }
"""
    )
    scenario = load_scenario(path)
    assert scenario.phases[1].workload is not None
    assert scenario.phases[1].workload.images_per_request_spec == "{ 1 = 70, 3 = 30 }"
    assert _round_trip(scenario, tmp_path) == scenario
