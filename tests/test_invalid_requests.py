"""Deliberately bad requests (`[workload] invalid_share`): drawn per request from the seed, broken
one of three ways, counted under their own outcomes and left out of every other figure."""

from __future__ import annotations

import base64
import io
import tomllib
from pathlib import Path

import anyio
import orjson
import pytest
from PIL import Image

from loadgen.config import SloConfig, WorkloadConfig
from loadgen.errors import ScenarioError
from loadgen.metrics.summary import summarize_phase
from loadgen.orchestrator import RunOptions, RunResult, run_scenario
from loadgen.records import Outcome, RequestRecord
from loadgen.results.files import read_requests
from loadgen.scenario import Overrides, load_scenario, parse_scenario
from loadgen.workload.invalid import OVERSIZED_SIDE, invalid_kind
from loadgen.workload.workload import Workload
from tests.conftest import StartSim

KINDS = ("undecodable_image", "oversized_image", "min_tokens_above_max")


def _workload(**changes: object) -> WorkloadConfig:
    base = {"max_tokens": 7, "images": {"width": 32, "height": 24}} | changes
    doc = tomllib.loads("") | {"workload": base}
    return parse_scenario(doc, "t.toml", Path(".")).workload


def test_which_requests_are_bad_is_drawn_from_the_seed() -> None:
    cfg = _workload(invalid_share=0.2, invalid_kind=list(KINDS))
    kinds = [invalid_kind(cfg, 5, "phase\x1fmain", r) for r in range(2000)]
    assert kinds == [invalid_kind(cfg, 5, "phase\x1fmain", r) for r in range(2000)]
    assert kinds != [invalid_kind(cfg, 6, "phase\x1fmain", r) for r in range(2000)]
    bad = [k for k in kinds if k]
    assert 0.17 < len(bad) / len(kinds) < 0.23
    assert set(bad) == set(KINDS)
    assert not any(invalid_kind(_workload(), 5, "phase\x1fmain", r) for r in range(100))


def _body(kind: str, images: int = 1) -> dict[str, object]:
    cfg = _workload(invalid_share=0.999, invalid_kind=kind, images_per_request=images)
    reqs = Workload(cfg, 1, "m").prepare("main", 4)
    assert [reqs.invalid_kind(i) for i in range(4)] == [kind] * 4
    body: dict[str, object] = orjson.loads(reqs.body(0))
    return body


def _image_urls(body: dict[str, object]) -> list[str]:
    messages = body["messages"]
    assert isinstance(messages, list)
    return [p["image_url"]["url"] for p in messages[-1]["content"] if p["type"] == "image_url"]


def test_each_kind_breaks_the_body_its_way() -> None:
    body = _body("undecodable_image", images=2)
    urls = _image_urls(body)
    assert len(urls) == 2 and all(u.startswith("data:image/jpeg;base64,") for u in urls)
    data = base64.b64decode(urls[0].partition(",")[2])
    with pytest.raises(Exception, match="cannot identify"):
        Image.open(io.BytesIO(data))
    assert len(_image_urls(_body("undecodable_image", images=0))) == 1  # one added

    urls = _image_urls(_body("oversized_image", images=2))
    assert len(urls) == 2
    with Image.open(io.BytesIO(base64.b64decode(urls[0].partition(",")[2]))) as image:
        assert image.size == (OVERSIZED_SIDE, OVERSIZED_SIDE)

    body = _body("min_tokens_above_max")
    assert (body["max_tokens"], body["min_tokens"]) == (7, 8)
    assert len(_image_urls(body)) == 1


def test_warm_up_and_replays(tmp_path: Path) -> None:
    cfg = _workload(invalid_share=0.5)
    workload = Workload(cfg, 1, "m")
    assert not any(workload.prepare("w", 20, warmup=True).invalid_kind(i) for i in range(20))
    source = workload.prepare("cold", 20)
    replay = workload.prepare("warm", 20, repeat_of="cold")
    again = workload.prepare("other", 20)
    kinds = [source.invalid_kind(i) for i in range(20)]
    assert kinds == [replay.invalid_kind(i) for i in range(20)]
    assert kinds != [again.invalid_kind(i) for i in range(20)]
    assert [source.body(i) for i in range(20)] == [replay.body(i) for i in range(20)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"invalid_share": 1.0}, "invalid_share: expected 0 <= share < 1, got 1"),
        ({"invalid_share": -0.1}, "invalid_share: expected 0 <= share < 1"),
        ({"invalid_kind": "broken"}, "invalid_kind: expected one or more of 'undecodable_image'"),
        ({"invalid_kind": []}, "invalid_kind: expected one or more of"),
        ({"invalid_kind": ["oversized_image"] * 2}, "a kind is given twice"),
    ],
)
def test_bad_settings_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        _workload(**changes)


def test_broken_images_need_an_endpoint_taking_images() -> None:
    doc: dict[str, object] = {
        "target": {"api": "completions"},
        "workload": {"images_per_request": 0, "invalid_share": 0.1},
    }
    with pytest.raises(ScenarioError, match="api 'completions' takes no images"):
        parse_scenario(doc, "t.toml", Path("."))
    doc["workload"] = {
        "images_per_request": 0,
        "invalid_share": 0.1,
        "invalid_kind": "min_tokens_above_max",
    }
    assert parse_scenario(doc, "t.toml", Path(".")).workload.invalid_share == 0.1


def _record(index: int, outcome: Outcome, invalid: str = "", tokens: int = 3) -> RequestRecord:
    return RequestRecord(
        index=index,
        phase="main",
        shard=0,
        target="http://x",
        intended=0.0,
        sent=0.0,
        first_token=0.1 if outcome is Outcome.OK else None,
        end=0.2,
        outcome=outcome,
        status=200 if outcome is Outcome.OK else 400,
        prompt_tokens=10 if outcome is Outcome.OK else None,
        completion_tokens=tokens if outcome is Outcome.OK else None,
        invalid=invalid,
    )


def test_a_phase_counts_bad_requests_apart() -> None:
    records = [
        _record(0, Outcome.OK),
        _record(1, Outcome.HTTP_4XX, "undecodable_image"),  # as the sink settles it: unsettled
        _record(2, Outcome.INVALID_REJECTED, "oversized_image"),
        _record(3, Outcome.OK, "min_tokens_above_max", tokens=50),
        _record(4, Outcome.HTTP_5XX),
    ]
    phase = summarize_phase(
        records,
        slo=SloConfig(e2e_ms=1000),
        window=1.0,
        phase_name="main",
        started=0.0,
        ended=1.0,
    )
    assert (phase.requests.total, phase.requests.succeeded, phase.requests.failed) == (2, 1, 1)
    assert phase.requests.invalid == 3
    assert phase.outcomes["invalid_rejected"] == 2
    assert phase.outcomes["invalid_accepted"] == 1
    assert phase.outcomes["http_5xx"] == 1
    assert (phase.tokens.prompt, phase.tokens.generation) == (10, 3)
    assert phase.latency_ms["e2e"].count == 1
    assert phase.goodput is not None and phase.goodput.fraction == 0.5
    assert set(phase.errors) == {"invalid_rejected", "http_5xx"}


# --------------------------------------------------------------------------- against the simulator


def _run(path: Path, url: str, workers: int) -> RunResult:
    scenario = load_scenario(path, Overrides(urls=(url,)))
    options = RunOptions(
        run_dir=str(path.parent / f"run-{workers}"), handle_signals=False, workers=workers
    )
    return anyio.run(run_scenario, scenario, options, lambda _: None)


def test_the_simulator_refuses_every_kind_and_the_rest_is_unaffected(
    tmp_path: Path, sim_server: StartSim
) -> None:
    sim = sim_server("--enable-prompt-tokens-details")
    path = tmp_path / "s.toml"
    path.write_text(
        """
seed = 11
[load]
concurrency = 3
requests = 40
warmup_requests = 3
[workload]
ignore_eos = true
max_tokens = 6
invalid_share = 0.3
invalid_kind = ["undecodable_image", "oversized_image", "min_tokens_above_max"]
[workload.images]
width = 32
height = 24
"""
    )

    def sent(workers: int) -> set[tuple[object, ...]]:
        result = _run(path, sim.base_url, workers)
        everything = read_requests(result.run_dir / "requests.jsonl")
        assert not any(r.invalid for r in everything if r.phase == "warmup")
        records = [r for r in everything if r.phase == "main"]
        assert len(records) == 40
        bad = [r for r in records if r.invalid]
        good = [r for r in records if not r.invalid]
        assert {r.invalid for r in bad} == set(KINDS)
        assert all(r.outcome is Outcome.INVALID_REJECTED and r.status == 400 for r in bad)
        assert all(r.outcome is Outcome.OK and r.completion_tokens == 6 for r in good)
        phase = result.summary.phases["main"]
        assert phase.requests.invalid == len(bad)
        assert phase.outcomes["invalid_rejected"] == len(bad)
        assert (phase.requests.total, phase.requests.succeeded) == (len(good), len(good))
        assert phase.requests.failed == 0
        assert phase.latency_ms["e2e"].count == len(good)
        assert phase.tokens.generation == 6 * len(good)
        assert phase.tokens.prompt == sum(r.prompt_tokens or 0 for r in good)
        server = result.summary.server.phases["main"]
        assert server.delta is not None
        assert server.delta.generation_tokens == phase.tokens.generation
        assert server.delta.prompt_tokens == phase.tokens.prompt
        return {(r.index, r.invalid, r.body, tuple(r.images)) for r in records}

    assert sent(1) == sent(2)
