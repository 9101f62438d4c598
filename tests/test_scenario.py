"""Scenario files: every shipped one loads; every kind of mistake gets one precise message."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.errors import ScenarioError
from loadgen.scenario import Overrides, apply_overrides, load_scenario, scenario_to_json

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.toml"))

MINIMAL = """
[load]
concurrency = 2
requests = 4
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_shipped_scenarios_load(path: Path) -> None:
    s = load_scenario(path)
    assert s.name
    assert s.phases
    for phase in s.phases:
        assert phase.load.requests or phase.load.duration


def test_seed_case_is_30_streams_one_image() -> None:
    s = load_scenario(Path(__file__).parent.parent / "scenarios" / "caption-30.toml")
    assert s.phases[0].load.mode == "closed"
    assert s.phases[0].load.concurrency == 30
    assert s.workload.images_per_request == 1


def test_defaults_from_a_minimal_file(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, MINIMAL))
    assert s.name == "s"
    assert s.target.urls == ()
    assert s.target.verify_tls is True
    assert s.phases[0].name == "main"
    assert s.workload.prompts == ("Describe this image in one sentence.",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[load\nconcurrency = 2", "s.toml: not valid TOML"),
        (
            MINIMAL + "\n[workload]\nmax_token = 5\n",
            "[workload] max_token: unknown key (did you mean 'max_tokens'?)",
        ),
        (
            MINIMAL.replace("concurrency = 2", "concurrency = 'many'"),
            "[load] concurrency: expected an integer, got 'many'",
        ),
        (
            MINIMAL.replace("concurrency = 2", "concurrency = 0"),
            "[load] concurrency: expected 1 to 100,000 streams, got 0",
        ),
        (
            "[load]\nconcurrency = 2\n",
            "[load] requests: set requests and/or duration: a run must be bounded",
        ),
        (
            "[load]\nmode = 'poisson'\nrequests = 3\n",
            "[load] rate: mode 'poisson' needs rate > 0 requests/s",
        ),
        (
            "[load]\nmode = 'bursty'\nrequests = 3\n",
            "[load] mode: expected one of 'closed', 'constant', 'poisson', 'gamma', got 'bursty'",
        ),
        (
            MINIMAL + "\n[workload]\nmax_tokens = 8\nmin_tokens = 9\n",
            "[workload] min_tokens: expected 0 to max_tokens (8), got 9",
        ),
        (
            MINIMAL + "\n[workload.images]\nquality = 101\n",
            "[workload.images] quality: expected 1 to 100, got 101",
        ),
        (
            MINIMAL + "\n[workload.images]\nsource = 'folder'\n",
            "[workload.images] folder: required when source = 'folder'",
        ),
        (
            MINIMAL + "\n[target]\nurl = 'localhost:8000'\n",
            "[target] url: expected an http:// or https:// URL, got 'localhost:8000'",
        ),
        (
            MINIMAL + "\n[target]\napi_key = 'sk-123'\n",
            "[target] api_key: API keys never go in a scenario file",
        ),
        (
            MINIMAL + "\n[target.headers]\nAuthorization = 'Bearer x'\n",
            "API keys never go in a scenario file",
        ),
        ("speed = 3\n" + MINIMAL, "s.toml: speed: unknown key"),
        (
            MINIMAL + "\n[[phases]]\nname = 'warm'\nrequests = 2\nrepeat_of = 'cold'\n",
            "[phases #1] repeat_of: expected the name of an earlier phase, got 'cold'",
        ),
        (
            MINIMAL + "\n[[phases]]\nname = 'a'\nconcurrenc = 2\n",
            "[phases #1] concurrenc: unknown key",
        ),
        (
            "[load]\nconcurrency = 2\nduration = 5\ndrain_timeout = -1\n",
            "[load] drain_timeout: expected 0 to 1,000,000 seconds, got -1",
        ),
        (
            MINIMAL.replace("[load]", "[load]\ndrain_timeout = 2"),
            "drain_timeout: bounds the wait after `duration`; set duration too",
        ),
        (
            MINIMAL + "\n[output]\nwindow = 0\n",
            "[output] window: expected 0.1 to 1,000,000 seconds, got 0",
        ),
    ],
)
def test_malformed_scenarios_name_file_key_and_expectation(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, text))
    text_of_error = str(info.value)
    assert text_of_error.startswith(str(tmp_path / "s.toml") + ": ")
    assert message in text_of_error
    assert "\n" not in text_of_error


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.toml")


def test_overrides(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, MINIMAL))
    o = apply_overrides(
        s,
        Overrides(
            urls=("http://127.0.0.1:9/",),
            model="m",
            concurrency=7,
            requests=9,
            seed=5,
            max_tokens=3,
        ),
    )
    assert o.target.urls == ("http://127.0.0.1:9",)
    assert o.target.model == "m"
    assert o.phases[0].load.concurrency == 7
    assert o.phases[0].load.requests == 9
    assert o.seed == 5
    assert o.workload.max_tokens == 3

    rate = apply_overrides(s, Overrides(rate=5.0, concurrency=3))
    assert rate.phases[0].load.mode == "poisson"
    assert rate.phases[0].load.rate == 5.0
    assert rate.phases[0].load.max_concurrency == 3  # open loop: --concurrency caps in-flight

    with pytest.raises(
        ScenarioError, match=r"s.toml \(with command-line overrides\): \[load\] concurrency"
    ):
        apply_overrides(s, Overrides(concurrency=0))
    with pytest.raises(ScenarioError, match="--url"):
        apply_overrides(s, Overrides(urls=("ftp://x",)))


def test_phases_inherit_load_and_repeat(tmp_path: Path) -> None:
    text = """
[load]
concurrency = 3
[[phases]]
name = "cold"
requests = 5
[[phases]]
name = "warm"
requests = 5
repeat_of = "cold"
concurrency = 4
"""
    s = load_scenario(write(tmp_path, text))
    assert [p.name for p in s.phases] == ["cold", "warm"]
    assert s.phases[0].load.concurrency == 3
    assert s.phases[1].load.concurrency == 4
    assert s.phases[1].repeat_of == "cold"


def test_resolved_scenario_json_has_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    s = load_scenario(write(tmp_path, MINIMAL + "\n[target.headers]\nX-Team = 'vision'\n"))
    doc = scenario_to_json(s)
    assert doc["target"]["headers"] == {"X-Team": "vision"}
    assert doc["target"]["api_key_env"] == "OPENAI_API_KEY"
    assert "sk-secret-value" not in repr(doc)


def test_drain_timeout_is_unbounded_unless_set(tmp_path: Path) -> None:
    text = "[load]\nconcurrency = 2\nduration = 5\n"
    assert load_scenario(write(tmp_path, text)).phases[0].load.drain_timeout is None
    bounded = load_scenario(write(tmp_path, text + "drain_timeout = 0.5\n"))
    assert bounded.phases[0].load.drain_timeout == 0.5
    assert scenario_to_json(bounded)["phases"][0]["load"]["drain_timeout"] == 0.5


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_request_timeout_is_unbounded_unless_a_finite_positive_number(
    tmp_path: Path, value: str
) -> None:
    assert load_scenario(write(tmp_path, MINIMAL)).target.request_timeout is None
    text = MINIMAL + "\n[target]\nrequest_timeout = 120\n"
    assert load_scenario(write(tmp_path, text)).target.request_timeout == 120.0
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, MINIMAL + f"\n[target]\nrequest_timeout = {value}\n"))
    message = str(info.value)
    assert "[target] request_timeout: expected" in message
    assert "more than 0" in message or "expected a number" in message  # nan and inf: not numbers


def test_extra_body_pairs_stay_lists_in_the_resolved_json(tmp_path: Path) -> None:
    """A value that happens to be a list of [name, value] pairs is a list, not a table."""
    text = MINIMAL + '[workload.extra_body]\npairs = [["a", 1], ["b", [2, 3]]]\nempty = []\n'
    doc = scenario_to_json(load_scenario(write(tmp_path, text)))
    assert doc["workload"]["extra_body"] == {"empty": [], "pairs": [["a", 1], ["b", [2, 3]]]}
