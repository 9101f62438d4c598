"""Processes that die: a lost or crashing worker, SIGTERM, and children that must not outlive
`loadgen run`. Real processes, signals and sockets throughout."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from loadgen import workers
from loadgen.orchestrator import RunOptions, exit_status, run_scenario
from loadgen.records import Outcome
from loadgen.results.files import read_json, read_requests
from loadgen.results.schema import to_builtins
from loadgen.scenario import Overrides, load_scenario
from tests.conftest import StartSim, start_loadgen

ROOT = Path(__file__).resolve().parent.parent

SCENARIO = """
name = "life"
seed = 5
[workload]
prompt = "Describe this in one sentence."
max_tokens = {max_tokens}
ignore_eos = true
images_per_request = 0
[load]
mode = "closed"
concurrency = 4
requests = {requests}
"""


def scenario_file(tmp_path: Path, max_tokens: int = 64, requests: int = 400) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO.format(max_tokens=max_tokens, requests=requests))
    return path


def wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    """Poll `check()` until it returns something true (a deadline, not a measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (Linux /proc)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                out.append(kid)
                todo.append(kid)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def worker_pids(pid: int) -> list[int]:
    return [p for p in children(pid) if "loadgen.workers" in cmdline(p)]


def running(port: int) -> float:
    """The simulator's vllm:num_requests_running."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    found = re.search(r"^vllm:num_requests_running\{[^}]*\} (\S+)", text, re.M)
    return float(found.group(1)) if found else 0.0


def refuses(port: int) -> bool:
    """Nothing listens on the port. A connection to a free port in the ephemeral range can
    connect to itself (Linux's simultaneous open, when the kernel picks that very port as the
    source): that is no listener either."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return True
    with sock:
        return bool(sock.getsockname() == sock.getpeername())


linux_only = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")


# ---- a worker lost mid-run -------------------------------------------------------------------


@linux_only
def test_a_killed_worker_is_a_stated_loss(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server("--step-base-ms", "20")
    run_dir = tmp_path / "run"
    proc = start_loadgen(
        "run", str(scenario_file(tmp_path, max_tokens=16, requests=80)), "--url", sim.base_url,
        "--run-dir", str(run_dir), "--no-progress", "--no-report", "--workers", "2",
    )  # fmt: skip
    wait_for(lambda: lines(run_dir / "requests.jsonl") >= 8, "records")
    pids = wait_for(lambda: len(worker_pids(proc.pid)) == 2 and worker_pids(proc.pid), "workers")
    victim = sorted(pids)[1]
    os.kill(victim, signal.SIGKILL)
    _out, err = proc.communicate(timeout=120)
    text = err.decode()
    assert "Traceback" not in text, text
    assert proc.returncode == 3, text
    assert "lost" in text
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "incomplete"
    (loss,) = summary["losses"]
    assert loss["phase"] == "main" and loss["in_flight"] >= 0
    assert "signal 9" in loss["cause"]
    records = read_requests(run_dir / "requests.jsonl")
    lost = loss["shard"]
    survivor = [r for r in records if r.shard != lost]
    # The other shard ran its whole share of the phase to the end.
    assert len(survivor) == 40
    assert all(r.outcome is Outcome.OK for r in survivor)
    # The lost shard's delivered records are kept and counted; nothing else is.
    delivered = [r for r in records if r.shard == lost]
    assert loss["records"] == len(delivered) >= 1
    assert summary["phases"]["main"]["requests"]["total"] == len(records)


CRASHING_WORKER = textwrap.dedent(
    """
    import loadgen.shard as shard
    from loadgen import workers

    add = shard.BookkeepingSink.add
    seen = [0]

    def failing_add(self, rec):
        add(self, rec)
        seen[0] += 1
        if rec.shard == 1 and seen[0] == 3:
            raise RuntimeError("bookkeeping broke")

    shard.BookkeepingSink.add = failing_add
    workers.main()
    """
)


@pytest.mark.timeout(120)
def test_a_worker_that_raises_reports_it_and_exits(
    tmp_path: Path, sim_server: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception inside a worker reaches the parent as an error line, the worker process ends
    by itself, and the other shard finishes its phase."""
    monkeypatch.setattr(workers, "WORKER_COMMAND", ("-c", CRASHING_WORKER))
    sim = sim_server()
    scenario = load_scenario(
        scenario_file(tmp_path, max_tokens=8, requests=40), Overrides(urls=(sim.base_url,))
    )
    options = RunOptions(run_dir=str(tmp_path / "run"), handle_signals=False, workers=2)
    messages: list[str] = []
    result = anyio.run(run_scenario, scenario, options, messages.append)
    assert result.status == "incomplete"
    (loss,) = to_builtins(result.summary)["losses"]
    assert loss["shard"] == 1
    assert "bookkeeping broke" in loss["cause"]
    assert loss["exit_status"] == 1  # it exited on its own, nothing had to kill it
    records = read_requests(result.run_dir / "requests.jsonl")
    assert sum(r.shard == 0 for r in records) == 20
    assert to_builtins(result.summary)["phases"]["main"]["requests"]["total"] == len(records)
    code, why = exit_status(result)
    assert code == 3 and "worker 1 lost" in why


# ---- SIGTERM -----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers_n", [1, 2])
def test_sigterm_is_a_first_ctrl_c(tmp_path: Path, sim_server: StartSim, workers_n: int) -> None:
    sim = sim_server("--step-base-ms", "20")
    run_dir = tmp_path / "run"
    proc = start_loadgen(
        "run", str(scenario_file(tmp_path)), "--url", sim.base_url, "--run-dir", str(run_dir),
        "--no-progress", "--no-report", "--workers", str(workers_n),
    )  # fmt: skip
    wait_for(lambda: lines(run_dir / "requests.jsonl") >= 8, "records")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert "Traceback" not in err.decode()
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "interrupted"
    assert "SIGTERM" in summary["reason"]
    records = read_requests(run_dir / "requests.jsonl")
    assert summary["phases"]["main"]["requests"]["total"] == len(records) < 400
    assert all(r.outcome is Outcome.OK for r in records)  # in flight were let finish


@linux_only
def test_sigterm_during_start_up_stops_the_simulator(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start_loadgen(
        "run", str(scenario_file(tmp_path)), "--run-dir", str(run_dir), "--no-progress",
        "--no-report", "--workers", "2",
    )  # fmt: skip
    # As soon as the simulator is listening: model discovery and worker start-up still to come.
    log = run_dir / "simulator.log"
    wait_for(lambda: log.exists() and b"vLLM simulator" in log.read_bytes(), "simulator up")
    sims = [p for p in children(proc.pid) if "loadgen sim" in cmdline(p)]
    assert sims
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    text = err.decode()
    assert "Traceback" not in text, text
    assert proc.returncode == 143, text
    assert wait_for(lambda: not any(alive(p) for p in sims), "simulator gone", timeout=15)


# ---- children die with their parent -----------------------------------------------------------


@linux_only
def test_sigkill_of_loadgen_takes_its_children_along(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start_loadgen(
        "run", str(scenario_file(tmp_path, max_tokens=2000, requests=40)), "--run-dir",
        str(run_dir), "--no-progress", "--no-report", "--workers", "2",
    )  # fmt: skip
    assert proc.stderr is not None
    first = proc.stderr.readline().decode()  # "no URL given: started the ... simulator at URL"
    port_match = re.search(r"127\.0\.0\.1:(\d+)", first)
    assert port_match, first
    port = int(port_match.group(1))
    wait_for(lambda: len(worker_pids(proc.pid)) == 2, "workers")
    # Streams in flight (long outputs), then the parent dies without any clean-up of its own.
    wait_for(lambda: running(port) >= 2, "streams in flight")
    kids = children(proc.pid)
    assert len(kids) >= 3, [cmdline(p) for p in kids]
    proc.kill()
    proc.wait(timeout=10)
    wait_for(lambda: not any(alive(p) for p in kids), "children gone", timeout=15)
    assert refuses(port)


def test_results_that_cannot_be_written_stop_the_run_and_say_what_was_lost(
    tmp_path: Path, sim_server: StartSim
) -> None:
    """A file size limit (as a full disk would) on `loadgen run`: requests.jsonl stops growing
    mid-run. The run stops, says in one line what could not be written and how much was lost,
    exits 3, and what was written stays readable."""
    sim = sim_server()
    path = tmp_path / "scenario.toml"
    path.write_text(
        "[workload]\nmax_tokens = 16\nimages_per_request = 0\n"
        '[load]\nmode = "closed"\nconcurrency = 4\nrequests = 2000\n'
    )
    run_dir = tmp_path / "run"
    limit = 24 * 1024

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "loadgen", "run", str(path), "--url", sim.base_url,
         "--run-dir", str(run_dir), "--no-progress", "--workers", "1"],
        capture_output=True, timeout=120, preexec_fn=limit_files, cwd=ROOT,
    )  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "Traceback" not in err
    assert f"cannot write {run_dir / 'requests.jsonl'}" in err
    assert "finished requests not recorded" in err or "requests.jsonl keeps the first" in err
    records = read_requests(run_dir / "requests.jsonl")
    assert 0 < len(records) < 2000  # stopped early, and what was written reads back
    assert not (run_dir / "summary.json.tmp").exists()
