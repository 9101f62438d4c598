"""The simulator's own faults: a stall that never ends, times measured before they began, and
clients that hang up mid-body."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from loadgen.sim.engine import EngineCore
from loadgen.sim.process import SimulatorProcess
from loadgen.sim.profiles import get_profile
from tests.sim.sim_helpers import chat_body, metric, metrics, stream_chat

StartSim = Callable[..., SimulatorProcess]

SERVER_TIMES = (
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
)


@pytest.mark.parametrize(("stall", "every"), [("7", "4"), ("4", "4")])
def test_a_stall_as_long_as_its_interval_is_refused(stall: str, every: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadgen", "sim", "--port", "0",
         "--fault-stall", stall, "--fault-stall-every", every],
        capture_output=True, timeout=20,
    )  # fmt: skip
    assert proc.returncode == 2
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "--fault-stall" in err[0], err


def test_a_step_never_admits_a_request_that_arrived_after_it_started() -> None:
    """The driver may run a step on its timeline slightly in the past (a late wake-up); a request
    that arrived after that instant waits for the next step instead of being 'scheduled' before
    it was queued."""
    core = EngineCore(get_profile("fast"), enable_prefix_caching=False)
    early = core.make_request("early", list(range(32)), 4, arrival=9.0)
    late = core.make_request("late", list(range(100, 132)), 4, arrival=10.0)
    core.add(early, 9.0)
    core.add(late, 10.0)
    plan = core.schedule(9.99)
    assert [r.request_id for r, _ in plan.scheduled] == ["early"]
    assert early.scheduled_ts >= early.queued_ts
    assert late.scheduled_ts < 0  # still waiting


def test_server_side_times_are_never_negative_after_stalls(sim_server: StartSim) -> None:
    sim = sim_server("--fault-stall", "0.3", "--fault-stall-every", "0.6")
    body = chat_body(max_tokens=24, ignore_eos=True)

    def one(i: int) -> int:
        time.sleep(0.02 * (i % 40))  # arrivals spread over several stall windows
        return stream_chat(sim.base_url, body)[0]

    with ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(one, range(120)))
    assert statuses == [200] * 120
    values = metrics(sim.base_url)
    for name in SERVER_TIMES:
        count = metric(values, name + "_count")
        assert count > 0, name
        assert metric(values, name + "_sum") / count >= 0, name  # the mean
    assert metric(values, "vllm:request_success_total") >= 120


def test_a_client_hanging_up_mid_body_is_one_line_not_a_traceback(sim_server: StartSim) -> None:
    sim = sim_server()
    host, port = sim.base_url.removeprefix("http://").rsplit(":", 1)
    for _ in range(3):
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"model"'
            )
            time.sleep(0.05)
    # A normal request afterwards: the server goes on.
    status, _events = stream_chat(sim.base_url, chat_body())
    assert status == 200
    sim.wait_for_log("client went away", timeout=10)
    log = sim.log_lines()
    assert not any("Traceback" in line for line in log), "\n".join(log)
    assert sum("client went away" in line for line in log) <= 3
