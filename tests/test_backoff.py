"""A closed loop whose requests fail fast backs off per stream instead of flooding the server."""

from __future__ import annotations

import random
import socket
from email.utils import formatdate
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadgen import backoff
from loadgen.client import TransportName
from loadgen.orchestrator import RunOptions, RunResult, run_scenario
from loadgen.records import Outcome, RequestRecord
from loadgen.results.files import read_requests
from loadgen.results.schema import to_builtins
from loadgen.scenario import Overrides, load_scenario
from tests.conftest import StartSim

TIMED = """
name = "backoff"
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
concurrency = 4
duration = {duration}
"""

TRANSPORTS: list[TransportName] = ["native", "aiohttp", "httpx"]


def _run(tmp_path: Path, url: str, transport: TransportName, duration: float = 3.0) -> RunResult:
    path = tmp_path / "scenario.toml"
    path.write_text(TIMED.format(duration=duration))
    scenario = load_scenario(path, Overrides(urls=(url,), model="sim-vlm"))
    options = RunOptions(run_dir=str(tmp_path / "run"), handle_signals=False, transport=transport)
    messages: list[str] = []
    return anyio.run(run_scenario, scenario, options, messages.append)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _most_per_stream(duration: float, retry_after: float = 0.0) -> int:
    """The most requests one stream can send in `duration` seconds when every request fails at
    once: its first at 0, then one after each of its shortest possible waits."""
    sent, t = 1, 0.0
    while True:
        t += max(backoff.shortest_delay(sent), min(retry_after, backoff.RETRY_AFTER_CAP_S))
        if t >= duration:
            return sent
        sent += 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_port_is_not_flooded(tmp_path: Path, transport: TransportName) -> None:
    result = _run(tmp_path, f"http://127.0.0.1:{_free_port()}", transport)
    phase = to_builtins(result.summary)["phases"]["main"]
    bound = 4 * _most_per_stream(3.0)
    assert 4 <= phase["requests"]["total"] <= bound
    assert phase["outcomes"]["connect_error"] == phase["requests"]["total"]
    records = read_requests(result.run_dir / "requests.jsonl")
    # the waits are schedule lag: each stream's later requests were sent after their backoff
    late = [r for r in records if r.schedule_lag >= backoff.shortest_delay(1) * 0.9]
    assert len(late) >= len(records) - 4


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_429_with_retry_after_is_honoured(
    tmp_path: Path, sim_server: StartSim, transport: TransportName
) -> None:
    sim = sim_server("--fault-429-rate", "1")  # the simulator answers with Retry-After: 1
    result = _run(tmp_path, sim.base_url, transport)
    phase = to_builtins(result.summary)["phases"]["main"]
    assert phase["outcomes"]["http_429"] == phase["requests"]["total"]
    assert 4 <= phase["requests"]["total"] <= 4 * _most_per_stream(3.0, retry_after=1.0)
    records = read_requests(result.run_dir / "requests.jsonl")
    assert {r.retry_after for r in records} == {1.0}
    # every stream's second request waited the server's second, recorded as schedule lag
    later = [r for r in records if r.schedule_lag > 0.5]
    assert len(later) == len(records) - 4
    assert all(r.schedule_lag >= 0.95 for r in later)


# ---- the pure part ----


def _failed(
    outcome: Outcome, status: int | None = None, retry_after: float | None = None
) -> RequestRecord:
    rec = RequestRecord(index=0, phase="p", shard=0, target="u", intended=0, sent=0, end=0)
    rec.outcome, rec.status, rec.retry_after = outcome, status, retry_after
    return rec


def test_only_refusals_and_overload_answers_back_off() -> None:
    b = backoff.Backoff(random.Random(1))
    assert b.after(_failed(Outcome.HTTP_5XX, 500)) == 0.0
    assert b.after(_failed(Outcome.DROPPED, 200)) == 0.0
    assert b.after(_failed(Outcome.OK, 200)) == 0.0
    assert b.after(_failed(Outcome.CONNECT)) > 0
    assert b.after(_failed(Outcome.HTTP_5XX, 503)) > 0
    assert b.after(_failed(Outcome.HTTP_429, 429)) > 0
    assert b.failures == 3
    assert b.after(_failed(Outcome.OK, 200)) == 0.0 and b.failures == 0  # a success resets it


@given(
    seed=st.integers(0, 2**32),
    kinds=st.lists(st.sampled_from(["connect", "429", "503", "ok"]), max_size=40),
    retry_after=st.one_of(st.none(), st.floats(0, 1e6)),
)
def test_delays_grow_within_their_bounds_and_are_seeded(
    seed: int, kinds: list[str], retry_after: float | None
) -> None:
    def delays() -> list[float]:
        b = backoff.Backoff(random.Random(seed))
        out = []
        for kind in kinds:
            if kind == "connect":
                rec = _failed(Outcome.CONNECT)
            elif kind == "ok":
                rec = _failed(Outcome.OK, 200)
            else:
                rec = _failed(Outcome.HTTP_429, int(kind), retry_after)
            n = b.failures + 1
            d = b.after(rec)
            out.append(d)
            if kind == "ok":
                assert d == 0.0
                continue
            assert backoff.shortest_delay(n) <= d
            assert d <= max(backoff.CAP_S, backoff.RETRY_AFTER_CAP_S)
            if kind != "connect" and retry_after is not None:
                assert d >= min(retry_after, backoff.RETRY_AFTER_CAP_S)
        return out

    assert delays() == delays()  # the same seed, the same waits


def test_retry_after_is_seconds_or_an_http_date() -> None:
    now = 1_700_000_000.0
    assert backoff.retry_after_seconds("1", now) == 1.0
    assert backoff.retry_after_seconds(" 120 ", now) == 120.0
    assert backoff.retry_after_seconds(formatdate(now + 30, usegmt=True), now) == 30.0
    assert backoff.retry_after_seconds(formatdate(now - 30, usegmt=True), now) == 0.0
    for bad in (None, "", "soon", "-1", "1e999", "nan", "1.5"):
        assert backoff.retry_after_seconds(bad, now) is None
