"""Scenarios and shard jobs as JSON: what summary.json holds and what a worker is handed. A job
round-trips exactly; a worker refuses a job of another version, or one that is not this JSON,
in one line and never unpickles anything."""

from __future__ import annotations

import ast
import base64
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen import __version__, workers
from loadgen.client import ClientSettings, TransportName
from loadgen.config import (
    INVALID_KINDS,
    ImageContent,
    ImageFormat,
    ImageMixEntry,
    ImagesConfig,
    LoadConfig,
    LoadMode,
    OutputConfig,
    PhaseConfig,
    Scenario,
    SloConfig,
    TargetConfig,
    WorkloadConfig,
)
from loadgen.datasets import DATASETS
from loadgen.endpoints import ENDPOINTS
from loadgen.errors import ScenarioError
from loadgen.scenario import load_scenario, scenario_from_json, scenario_to_json
from loadgen.shard import ShardJob

ROOT = Path(__file__).resolve().parent.parent

text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
names = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,11}", fullmatch=True)
seconds = st.floats(min_value=0.001, max_value=1e6, allow_nan=False)
counts = st.integers(0, 1_000_000)
finite = st.floats(allow_nan=False, allow_infinity=False)
# What a TOML table's values can be, as JSON holds them (lists of pairs included).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


def pairs(values: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[tuple[str, Any], ...]]:
    return st.dictionaries(names, values, max_size=3).map(lambda d: tuple(d.items()))


targets = st.builds(
    TargetConfig,
    urls=st.lists(st.sampled_from(["http://127.0.0.1:8000", "https://h.example/v1"])).map(tuple),
    model=text,
    endpoint=st.just("/v1/chat/completions"),
    api=st.sampled_from(sorted(ENDPOINTS)),
    headers=pairs(st.from_regex(r"[ -~]{0,10}", fullmatch=True)),
    api_key_env=text,
    api_key_file=text,
    verify_tls=st.booleans(),
    connect_timeout=seconds,
    read_timeout=seconds,
    request_timeout=st.none() | seconds,
    pool_size=counts,
    scrape_metrics=st.booleans(),
    scrape_interval=seconds,
)
images = st.builds(
    ImagesConfig,
    source=st.sampled_from(sorted(DATASETS)),
    folder=text,
    max_side=counts,
    width=st.integers(1, 16384),
    height=st.integers(1, 16384),
    format=st.sampled_from(get_args(ImageFormat)),
    quality=st.integers(1, 100),
    content=st.sampled_from(get_args(ImageContent)),
    pool_size=counts,
    repeat_ratio=st.floats(0, 0.99),
    skip_bad=st.booleans(),
    mix=st.lists(
        st.builds(
            ImageMixEntry,
            size=st.sampled_from(["448x336", "20x20"]),
            format=st.sampled_from(get_args(ImageFormat)),
            content=st.sampled_from(get_args(ImageContent)),
            weight=st.floats(0.001, 1e6),
        ),
        max_size=3,
    ).map(tuple),
)
workloads = st.builds(
    WorkloadConfig,
    images=images,
    images_per_request=st.integers(0, 256),
    prompts=st.lists(text, min_size=1, max_size=3).map(tuple),
    system_prompt=text,
    max_tokens=st.integers(1, 10_000_000),
    min_tokens=st.none() | counts,
    ignore_eos=st.booleans(),
    temperature=st.floats(0, 2),
    extra_body=pairs(json_values),
    images_per_request_spec=st.sampled_from(["", "{ min = 1, max = 4 }", "{ 1 = 70, 3 = 30 }"]),
    invalid_share=st.floats(0, 0.99),
    invalid_kind=st.lists(st.sampled_from(INVALID_KINDS), min_size=1, max_size=3, unique=True).map(
        tuple
    ),
)
loads = st.builds(
    LoadConfig,
    mode=st.sampled_from(get_args(LoadMode)),
    concurrency=st.integers(1, 100_000),
    rate=st.floats(0, 1e6),
    burstiness=st.floats(0.001, 1000),
    max_concurrency=counts,
    ramp_up=seconds,
    requests=counts,
    duration=seconds,
    drain_timeout=st.none() | seconds,
    warmup_requests=counts,
)
phase_lists = st.lists(
    st.builds(
        PhaseConfig,
        name=names,
        load=loads,
        repeat_of=st.just("") | names,
        workload=st.none() | workloads,
    ),
    min_size=1,
    max_size=3,
).map(tuple)
scenarios = st.builds(
    Scenario,
    name=names,
    source=text,
    seed=st.integers(0, 2**63 - 1),
    target=targets,
    workload=workloads,
    phases=phase_lists,
    slo=st.builds(SloConfig, ttft_ms=seconds, tpot_ms=seconds, e2e_ms=seconds),
    output=st.builds(
        OutputConfig,
        directory=text,
        window=seconds,
        progress=st.booleans(),
        progress_interval=seconds,
    ),
    description=text,
)
jobs = st.builds(
    ShardJob,
    scenario=scenarios,
    model=text,
    endpoints=st.lists(st.just("http://127.0.0.1:8000/v1/chat/completions")).map(tuple),
    settings=st.builds(
        ClientSettings,
        pool_size=counts,
        connect_timeout=seconds,
        read_timeout=seconds,
        request_timeout=st.none() | seconds,
        verify_tls=st.booleans(),
        headers=pairs(st.from_regex(r"[ -~]{0,10}", fullmatch=True)),
        api_key=st.none(),
        api=st.sampled_from(sorted(ENDPOINTS)),
    ),
    transport=st.sampled_from(get_args(TransportName)),
    shard=st.integers(0, 63),
    shards=st.integers(1, 64),
    origin=st.floats(0, 1e9),
    phases=phase_lists,
)


@settings(max_examples=200, deadline=None)
@given(scenarios)
def test_a_scenario_round_trips_through_json(scenario: Scenario) -> None:
    doc = orjson.loads(orjson.dumps(scenario_to_json(scenario)))
    assert scenario_from_json(doc) == scenario


@settings(max_examples=100, deadline=None)
@given(jobs)
def test_a_job_round_trips_through_its_line(job: ShardJob) -> None:
    line = workers.job_line(job)
    assert b"\n" not in line
    assert workers.read_job_line(line + b"\n") == job


def test_shipped_scenarios_round_trip() -> None:
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        scenario = load_scenario(path)
        assert scenario_from_json(orjson.loads(orjson.dumps(scenario_to_json(scenario)))) == (
            scenario
        )


def test_scenario_json_is_checked_key_by_key() -> None:
    doc = scenario_to_json(load_scenario(ROOT / "scenarios" / "caption-30.toml"))
    doc["target"]["pool_sise"] = 4
    with pytest.raises(ScenarioError, match=r"\[target\] pool_sise: unknown key"):
        scenario_from_json(doc)
    del doc["target"]["pool_sise"]
    doc["phases"][0]["load"]["concurrency"] = "30"
    with pytest.raises(ScenarioError, match=r"\[phases #1.load\] concurrency: expected an integer"):
        scenario_from_json(doc)
    doc["phases"][0]["load"]["concurrency"] = 30
    del doc["seed"]
    with pytest.raises(ScenarioError, match="seed: missing"):
        scenario_from_json(doc)


def test_a_job_never_carries_the_api_key() -> None:
    job = _job()
    with pytest.raises(ValueError, match="API key"):
        workers.job_line(replace(job, settings=replace(job.settings, api_key="sk-secret")))
    doc = orjson.loads(workers.job_line(job)[2:])
    doc["job"]["settings"]["api_key"] = "sk-secret"
    with pytest.raises(workers.JobRefused, match="API key"):
        workers.read_job_line(b"J " + orjson.dumps(doc))


def _job() -> ShardJob:
    scenario = load_scenario(ROOT / "scenarios" / "caption-30.toml")
    return ShardJob(
        scenario=scenario,
        model="m",
        endpoints=("http://127.0.0.1:9/v1/chat/completions",),
        settings=ClientSettings(pool_size=2, connect_timeout=1.0, read_timeout=1.0),
        transport="native",
        shard=0,
        shards=2,
        origin=0.0,
        phases=scenario.phases,
    )


def _worker(stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "LOADGEN_PARENT_PID"}
    return subprocess.run(
        [sys.executable, *workers.WORKER_COMMAND],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("protocol", "version"), [(workers.PROTOCOL + 1, __version__), (workers.PROTOCOL, "0.0.1")]
)
def test_a_worker_refuses_a_job_of_another_version(protocol: int, version: str) -> None:
    doc = orjson.loads(workers.job_line(_job())[2:])
    doc["protocol"], doc["loadgen"] = protocol, version
    done = _worker(b"J " + orjson.dumps(doc) + b"\nX\n")
    assert done.returncode == 1
    (line,) = done.stdout.splitlines()  # one E line, nothing before it (no READY)
    assert line.startswith(b"E refused a job of ")
    text = line.decode()
    assert f"protocol {protocol} (loadgen '{version}')" in text
    assert f"protocol {workers.PROTOCOL} (loadgen {__version__})" in text


class _Trap:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_worker_never_unpickles_a_job(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    blob = base64.b64encode(pickle.dumps(_Trap(marker)))
    done = _worker(b"J " + blob + b"\nX\n")
    assert done.returncode == 1
    (line,) = done.stdout.splitlines()
    assert line.startswith(b"E the job is not JSON")
    assert f"protocol {workers.PROTOCOL} (loadgen {__version__})" in line.decode()
    assert not marker.exists()
    # The worker's module does not even import pickle (nor anything that unpickles).
    tree = ast.parse(Path(workers.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert not imported & {"pickle", "marshal", "shelve", "dill", "cloudpickle"}


def test_a_worker_refuses_anything_but_a_job_first() -> None:
    done = _worker(b"P {}\n")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [b"E expected a job first"]
