"""The Ray shard's parts that need no Ray cluster: the actor's worker between its inbox and
outbox (the real worker, against the simulator), the clock offset, the [distributed] keys and
--ray, and what a driver without Ray says. The cluster itself: tests/ray."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadgen import rayshard
from loadgen.client import ClientSettings
from loadgen.commands.flags import ray_address
from loadgen.config import DistributedConfig, TargetConfig
from loadgen.errors import ScenarioError
from loadgen.safetext import for_terminal
from loadgen.scenario import Overrides, load_scenario, parse_scenario
from loadgen.scenario_toml import scenario_to_toml
from loadgen.shard import PhaseResult, ShardJob, phases_with_warmup
from loadgen.shards import placement
from loadgen.workers import job_line
from tests.conftest import StartSim, start_loadgen

ROOT = Path(__file__).resolve().parents[1]


@given(
    offset=st.floats(-1e4, 1e4),
    trips=st.lists(
        st.tuples(
            st.floats(0, 100),  # driver's send time
            st.floats(1e-6, 0.05),  # way there
            st.floats(1e-6, 0.05),  # way back
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_the_clock_offset_is_within_its_stated_uncertainty(
    offset: float, trips: list[tuple[float, float, float]]
) -> None:
    samples = [(t, t + there + offset, t + there + back) for t, there, back in trips]
    found = rayshard.best_offset(samples)
    shortest = min(there + back for _, there, back in trips)
    assert found.uncertainty == pytest.approx(shortest / 2, abs=1e-9)
    assert abs(found.offset - offset) <= found.uncertainty + 1e-6
    assert found.round_trips == len(trips)


def test_the_outbox_gives_everything_once_in_bounded_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rayshard, "TAKE_MAX_BYTES", 10)
    box = rayshard._Outbox()
    assert box.take(0.01) == (b"", False, None)  # nothing yet: waits, then empty
    box.write(b"R 1\nR 22\nR 333\n")
    box.flush()
    box.end(0)
    # At most 10 bytes a batch (a line may be split: the driver joins the chunks); ended only
    # once everything was taken.
    assert box.take(1.0) == (b"R 1\nR 22\nR", False, 0)
    assert box.take(1.0) == (b" 333\n", True, 0)


def _write(box: rayshard._Outbox, data: bytes) -> None:
    box.write(data)
    box.flush()


def test_a_take_that_finds_records_waits_for_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records arrive a few at a time: a take returns a batch of them, not the first line
    (each take is a Ray call, costlier than many records): after TAKE_LINGER_S, or as soon as
    TAKE_BATCH_BYTES are there."""
    monkeypatch.setattr(rayshard, "TAKE_LINGER_S", 0.2)
    box = rayshard._Outbox()
    box.write(b"R 1\n")
    box.flush()

    def more() -> None:
        time.sleep(0.05)
        box.write(b"G {}\n")  # progress: no hurry either
        box.flush()

    writer = threading.Thread(target=more)
    writer.start()
    assert box.take(1.0) == (b"R 1\nG {}\n", False, None)  # the second written 50 ms later
    writer.join()

    monkeypatch.setattr(rayshard, "TAKE_LINGER_S", 30.0)
    monkeypatch.setattr(rayshard, "TAKE_BATCH_BYTES", 12)
    box.write(b"R 1\n")
    box.flush()
    full = threading.Timer(0.05, _write, (box, b"R 22222222\n"))
    full.start()
    began = time.monotonic()
    assert box.take(1.0) == (b"R 1\nR 22222222\n", False, None)
    assert time.monotonic() - began < 10  # a whole batch: no lingering
    full.join()


def test_slow_actors_are_taken_from_a_few_times_a_second_in_all() -> None:
    """An actor that fills no batch returns by time; the more actors, the longer each waits,
    so the driver's calls a second do not grow with the actors (up to the cap)."""
    assert rayshard.take_linger(1) == rayshard.TAKE_LINGER_S
    flat = int(rayshard.TAKE_LINGER_MAX_S * rayshard.TAKES_PER_S)  # the most actors it holds for
    for shards in range(2, flat + 1):  # calls a second, in all
        assert shards / rayshard.take_linger(shards) == pytest.approx(rayshard.TAKES_PER_S)
    assert rayshard.take_linger(1000) == rayshard.TAKE_LINGER_MAX_S


@pytest.mark.parametrize("line", [b"D {}\n", b"V {}\n", b"E bad\n", b"READY x\n"])
def test_a_line_the_driver_acts_on_ends_the_lingering(
    monkeypatch: pytest.MonkeyPatch, line: bytes
) -> None:
    """A phase's end, the verdict, an error: the driver waits for them (the next phase, the
    run's end), so they go at once, with the records before them."""
    monkeypatch.setattr(rayshard, "TAKE_LINGER_S", 30.0)
    box = rayshard._Outbox()
    box.write(b"R 1\n")
    box.flush()
    urgent = threading.Timer(0.05, _write, (box, line))
    urgent.start()
    began = time.monotonic()
    assert box.take(1.0) == (b"R 1\n" + line, False, None)
    assert time.monotonic() - began < 10
    urgent.join()
    box.write(b"R 2\n")  # the next take lingers again
    box.flush()
    monkeypatch.setattr(rayshard, "TAKE_LINGER_S", 0.2)
    began = time.monotonic()
    assert box.take(1.0) == (b"R 2\n", False, None)
    assert time.monotonic() - began >= 0.15
    box.write(b"V {}\n")
    box.end(0)
    monkeypatch.setattr(rayshard, "TAKE_LINGER_S", 30.0)
    began = time.monotonic()
    assert box.take(1.0) == (b"V {}\n", True, 0)
    assert time.monotonic() - began < 10  # ended: no lingering


def test_the_actor_serves_a_job_between_its_inbox_and_outbox(sim_server: StartSim) -> None:
    """ShardActor without Ray: the worker of a worker process, in a thread, fed and drained as
    the driver does through Ray."""
    sim = sim_server()
    scenario = load_scenario(ROOT / "scenarios" / "smoke.toml", Overrides(urls=(sim.base_url,)))
    job = ShardJob(
        scenario=scenario,
        model="sim-vlm",
        endpoints=(f"{sim.base_url}/v1/chat/completions",),
        settings=ClientSettings(pool_size=4, connect_timeout=5.0, read_timeout=30.0),
        transport="native",
        shard=0,
        shards=1,
        origin=time.perf_counter(),
        phases=phases_with_warmup(scenario),
    )
    actor = rayshard.ShardActor()
    actor.send(job_line(job) + b"\n")
    out = b""

    def until(kind: bytes) -> list[bytes]:
        nonlocal out
        deadline = time.monotonic() + 60
        while not any(line.startswith(kind) for line in out.split(b"\n")):
            assert time.monotonic() < deadline, out[-500:]
            data, ended, _ = actor.take(0.5)
            out += data
            assert not ended or any(line.startswith(kind) for line in out.split(b"\n")), out
        return out.split(b"\n")

    assert any(line.startswith(b"READY ") for line in until(b"READY"))
    for phase in job.phases:
        actor.send(b"P " + orjson.dumps({"name": phase.name, "start": 0.1}) + b"\n")
        until(b"D ")
        done = [line for line in out.split(b"\n") if line.startswith(b"D ")]
        result = PhaseResult.from_json(orjson.loads(done[-1][2:]))
        assert result.timing.name == phase.name
        out = b""
    assert result.accumulator is not None
    assert result.accumulator.finish().requests.succeeded == phase.load.requests
    actor.send(b"X\n")
    until(b"V ")
    deadline = time.monotonic() + 30
    while True:
        _data, ended, status = actor.take(0.5)
        if ended:
            break
        assert time.monotonic() < deadline
    assert status == 0
    assert actor.clock() == pytest.approx(time.perf_counter(), abs=1.0)


def test_distributed_keys_are_read_checked_and_written_back(tmp_path: Path) -> None:
    doc = {
        "load": {"requests": 4},
        "distributed": {"backend": "ray", "address": "head:6379", "workers_per_node": 2},
    }
    scenario = parse_scenario(doc, "s.toml")
    assert scenario.distributed == DistributedConfig(
        backend="ray", address="head:6379", workers_per_node=2
    )
    assert parse_scenario({}, "s.toml").distributed.backend == "local"
    (tmp_path / "back.toml").write_text(scenario_to_toml(scenario))
    assert load_scenario(tmp_path / "back.toml").distributed == scenario.distributed
    bad = {
        "backend": ("kubernetes", "expected"),
        "address": ("head 6379\x1b[2J", "HOST:PORT"),
        "workers": (-1, "expected 0 to"),
        "workers_per_node": (0, "expected 1 to"),
        "num_cpus": (0, "more than 0"),
        "wokers": (2, "did you mean 'workers'"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ScenarioError, match=message) as info:
            parse_scenario({"distributed": {key: value}}, "s.toml")
        assert f"[distributed] {key}" in str(info.value)


def test_the_ray_flag_sets_the_backend_and_refuses_a_scenario_in_its_place() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "smoke.toml", Overrides(ray="auto"))
    assert (scenario.distributed.backend, scenario.distributed.address) == ("ray", "auto")
    assert ray_address("10.0.0.5:6379") == "10.0.0.5:6379"
    for mistaken in ("scenarios/smoke.toml", "smoke.toml"):
        with pytest.raises(Exception, match="not a Ray address"):
            ray_address(mistaken)
    proc = start_loadgen("run", "--ray", "scenarios/smoke.toml", cwd=ROOT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert b"give the scenario before --ray" in err


def test_without_ray_installed_the_run_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    scenario = load_scenario(ROOT / "scenarios" / "smoke.toml", Overrides(ray="auto"))
    with pytest.raises(rayshard.RayUnavailable, match=r"pip install 'loadgen\[ray\]'"):
        placement(scenario, 0, simulated=False)


def test_workers_per_node_counts_the_nodes_that_can_hold_an_actor() -> None:
    nodes = [
        {"Alive": True, "Resources": {"CPU": 0.0}},  # a head that runs no actor
        {"Alive": True, "Resources": {"CPU": 4.0}},
        {"Alive": False, "Resources": {"CPU": 4.0}},
        {"Alive": True, "Resources": {"CPU": 1.0}},
    ]
    assert rayshard.usable_nodes(nodes, 1.0) == 2
    assert rayshard.usable_nodes(nodes, 2.0) == 1
    cfg = replace(DistributedConfig(), backend="ray")
    assert cfg.workers_per_node == 1


def test_a_node_without_the_drivers_api_key_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each node reads the key from its own environment: a node without it would turn the run
    into 401s; the driver refuses before the job, and never says the key."""
    target = TargetConfig(api_key_env="LOADGEN_TEST_KEY")
    monkeypatch.setenv("LOADGEN_TEST_KEY", "sk-secret-1234")
    assert rayshard.api_key_state(target) == "set"
    monkeypatch.delenv("LOADGEN_TEST_KEY")
    assert rayshard.api_key_state(target) == "unset"
    problem = rayshard.key_mismatch("set", "unset", target)
    assert "$LOADGEN_TEST_KEY is not set" in problem and "every node" in problem
    assert rayshard.key_mismatch("set", "set", target) == ""
    assert rayshard.key_mismatch("unset", "unset", target) == ""  # nobody sends a key
    assert rayshard.key_mismatch("unset", "set", target) == ""
    missing = TargetConfig(api_key_file=str(tmp_path / "nope"))
    state = rayshard.api_key_state(missing)
    assert "cannot read the API key file" in state
    assert rayshard.key_mismatch("set", state + "\x1b[2J", missing) == for_terminal(
        state + "\x1b[2J"
    )
    (tmp_path / "key").write_text("sk-secret-1234\n")
    assert rayshard.api_key_state(TargetConfig(api_key_file=str(tmp_path / "key"))) == "set"
