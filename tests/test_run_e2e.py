"""`loadgen run` end to end against the simulator, a real server process on loopback."""

from __future__ import annotations

import re
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from loadgen.orchestrator import RunOptions, RunResult, run_scenario
from loadgen.records import Outcome
from loadgen.results.files import read_json, read_requests
from loadgen.results.schema import to_builtins
from loadgen.scenario import Overrides, load_scenario
from tests.conftest import StartSim, start_loadgen

ROOT = Path(__file__).resolve().parent.parent

SMALL = """
name = "e2e"
seed = 3
[workload]
prompt = "Describe this image in one sentence."
max_tokens = {max_tokens}
ignore_eos = true
[workload.images]
width = 224
height = 224
pool_size = 4
[load]
mode = "closed"
concurrency = {concurrency}
requests = {requests}
"""


def scenario_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def run(
    tmp_path: Path, text: str, overrides: Overrides, name: str = "run", workers: int = 0
) -> RunResult:
    scenario = load_scenario(scenario_file(tmp_path, text), overrides)
    options = RunOptions(run_dir=str(tmp_path / name), handle_signals=False, workers=workers)
    messages: list[str] = []
    return anyio.run(run_scenario, scenario, options, messages.append)


def small(max_tokens: int = 16, concurrency: int = 4, requests: int = 12) -> str:
    return SMALL.format(max_tokens=max_tokens, concurrency=concurrency, requests=requests)


def test_token_totals_equal_the_servers_counters(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server("--enable-prompt-tokens-details")
    result = run(tmp_path, small(requests=20), Overrides(urls=(sim.base_url,)))
    summary = to_builtins(result.summary)
    phase = summary["phases"]["main"]
    records = read_requests(result.run_dir / "requests.jsonl")
    assert len(records) == 20
    assert all(r.outcome is Outcome.OK for r in records)
    assert phase["requests"]["succeeded"] == 20
    assert (
        phase["tokens"]["generation"] == 20 * 16 == sum(r.completion_tokens or 0 for r in records)
    )
    assert phase["tokens"]["prompt"] == sum(r.prompt_tokens or 0 for r in records)
    server = summary["server"]["phases"]["main"]
    assert server["delta"]["prompt_tokens"] == phase["tokens"]["prompt"]
    assert server["delta"]["generation_tokens"] == phase["tokens"]["generation"]
    assert server["comparison"]["mismatch"] is False
    # every streamed token is accounted for, chunk by chunk
    for r in records:
        assert sum(r.chunk_tokens) == r.completion_tokens
        assert r.first_token == r.chunk_times[0]
        assert r.sent <= r.headers_at <= r.first_token <= r.end  # type: ignore[operator]
    assert summary["status"] == "completed"
    assert (result.run_dir / "summary.json").exists()
    assert list((result.run_dir / "histograms").glob("main.*.hlog"))


def test_latencies_agree_with_the_simulators_step_time(
    tmp_path: Path, sim_server: StartSim
) -> None:
    # Every engine step takes 25 ms whatever the batch: one token per step per request.
    step_ms = 25.0
    sim = sim_server(
        "--step-base-ms", str(step_ms), "--step-per-seq-ms", "0", "--step-per-prefill-token-ms", "0",
        "--mm-process-us-per-token", "0",
    )  # fmt: skip
    result = run(
        tmp_path, small(max_tokens=24, concurrency=2, requests=6), Overrides(urls=(sim.base_url,))
    )
    lat = to_builtins(result.summary)["phases"]["main"]["latency_ms"]
    # Tolerance: 15 % on the medians (timer and scheduling noise on a shared machine).
    assert lat["itl"]["p50"] == pytest.approx(step_ms, rel=0.15)
    assert lat["tpot"]["p50"] == pytest.approx(step_ms, rel=0.15)
    # First token after one prefill step (plus HTTP and queueing up to one more step).
    assert step_ms * 0.85 <= lat["ttft"]["p50"] <= step_ms * 2 + 15


def test_stall_shows_from_the_intended_send_time_only(tmp_path: Path, sim_server: StartSim) -> None:
    """Coordinated omission: open loop capped at 2 in flight, a server that stalls 1 s every 3 s."""
    stall = 1.0
    sim = sim_server("--fault-stall", str(stall), "--fault-stall-every", "3")
    text = small(max_tokens=2) + "\n"
    overrides = Overrides(
        urls=(sim.base_url,), mode="constant", rate=25.0, requests=0, duration=7.0, concurrency=2
    )
    result = run(tmp_path, text, overrides)
    phase = to_builtins(result.summary)["phases"]["main"]
    lat = phase["latency_ms"]
    assert phase["requests"]["failed"] == 0
    stall_ms = stall * 1000
    assert lat["e2e_intended"]["p99"] >= 0.7 * stall_ms  # the stall is seen from the schedule
    assert lat["ttft_intended"]["p99"] >= 0.7 * stall_ms
    assert lat["e2e"]["p90"] < 0.2 * stall_ms  # ... and mostly hidden from the actual send
    assert lat["schedule_lag"]["p99"] >= 0.5 * stall_ms  # the lag is where it went
    for r in read_requests(result.run_dir / "requests.jsonl"):
        assert r.e2e_intended == pytest.approx(r.e2e + r.schedule_lag, abs=1e-9)


def test_cold_then_warm_shows_cached_tokens_and_lower_ttft(
    tmp_path: Path, sim_server: StartSim
) -> None:
    sim = sim_server("--enable-prompt-tokens-details", "--step-per-prefill-token-ms", "0.2")
    text = (ROOT / "scenarios" / "cache-cold-warm.toml").read_text()
    result = run(tmp_path, text, Overrides(urls=(sim.base_url,), requests=16))
    cold, warm = (
        to_builtins(result.summary)["phases"]["cold"],
        to_builtins(result.summary)["phases"]["warm"],
    )
    assert cold["tokens"]["cached_fraction"] < warm["tokens"]["cached_fraction"]
    assert warm["tokens"]["cached"] > 0.8 * warm["tokens"]["prompt"]
    assert warm["latency_ms"]["ttft"]["p50"] < cold["latency_ms"]["ttft"]["p50"]
    comparison = to_builtins(result.summary)["phase_comparisons"]["cold->warm"]
    assert comparison["ttft_p50_ratio"] < 1.0
    server = to_builtins(result.summary)["server"]["phases"]
    assert server["warm"]["delta"]["mm_cache"]["hits"] >= 16
    assert (
        server["warm"]["delta"]["prefix_cache"]["hits"]
        > server["cold"]["delta"]["prefix_cache"]["hits"]
    )


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        ("http_429", Outcome.HTTP_429),
        ("http_500", Outcome.HTTP_5XX),
        ("http_503", Outcome.HTTP_5XX),
        ("drop_after=3", Outcome.DROPPED),
        ("stream_error_after=2", Outcome.STREAM_ERROR),
        ("malformed_after=2", Outcome.MALFORMED),
        ("no_usage", Outcome.MISSING_USAGE),
    ],
)
def test_each_fault_is_counted_under_its_kind(
    tmp_path: Path, sim_server: StartSim, fault: str, outcome: Outcome
) -> None:
    sim = sim_server()
    text = small(requests=6) + f'\n[target.headers]\nX-Sim-Fault = "{fault}"\n'
    result = run(tmp_path, text, Overrides(urls=(sim.base_url,)))
    phase = to_builtins(result.summary)["phases"]["main"]
    assert phase["requests"]["total"] == 6
    assert phase["outcomes"][str(outcome)] == 6
    records = read_requests(result.run_dir / "requests.jsonl")
    assert {r.outcome for r in records} == {outcome}
    assert all(r.error for r in records)
    if outcome is Outcome.MISSING_USAGE:
        assert phase["tokens"]["generation"] == 0  # never estimated
        assert phase["tokens"]["missing_usage_requests"] == 6
        assert phase["requests"]["succeeded"] == 6


def test_slow_headers_past_the_read_timeout_is_a_timeout(
    tmp_path: Path, sim_server: StartSim
) -> None:
    sim = sim_server()
    text = (
        small(requests=2)
        + '\n[target]\nread_timeout = 0.3\n[target.headers]\nX-Sim-Fault = "slow_headers=2"\n'
    )
    result = run(tmp_path, text, Overrides(urls=(sim.base_url,)))
    assert to_builtins(result.summary)["phases"]["main"]["outcomes"]["timeout"] == 2


def test_mixed_faults_the_run_goes_on(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server("--fault-503-rate", "0.2", "--fault-drop-rate", "0.2", "--seed", "5")
    result = run(tmp_path, small(requests=40), Overrides(urls=(sim.base_url,)))
    phase = to_builtins(result.summary)["phases"]["main"]
    outcomes = phase["outcomes"]
    assert phase["requests"]["total"] == 40 == sum(outcomes.values())
    assert outcomes["ok"] > 0 and outcomes["http_5xx"] > 0 and outcomes["dropped_stream"] > 0
    server = to_builtins(result.summary)["server"]["phases"]["main"]["delta"]
    # the server counted the tokens of the requests that finished for the client too
    assert phase["tokens"]["generation"] == outcomes["ok"] * 16
    assert server["generation_tokens"] >= phase["tokens"]["generation"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_refused_connection_is_counted(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    result = run(tmp_path, small(requests=3), Overrides(urls=(url,), model="m"))
    phase = to_builtins(result.summary)["phases"]["main"]
    assert phase["outcomes"]["connect_error"] == 3
    assert any("cannot connect" in w for w in to_builtins(result.summary)["warnings"])


def test_tls_to_a_plain_http_server_is_a_tls_error(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server()
    url = sim.base_url.replace("http://", "https://")
    result = run(tmp_path, small(requests=2), Overrides(urls=(url,), model="sim-vlm"))
    assert to_builtins(result.summary)["phases"]["main"]["outcomes"]["tls_error"] == 2


def _wait_lines(path: Path, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


@pytest.mark.parametrize(("presses", "workers"), [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_ctrl_c_leaves_a_complete_results_folder(
    tmp_path: Path, sim_server: StartSim, presses: int, workers: int
) -> None:
    sim = sim_server("--step-base-ms", "20")
    path = scenario_file(tmp_path, small(max_tokens=64, concurrency=4, requests=400))
    run_dir = tmp_path / "interrupted"
    proc = start_loadgen(
        "run", str(path), "--url", sim.base_url, "--run-dir", str(run_dir), "--no-progress",
        "--workers", str(workers), "--no-report",
    )  # fmt: skip
    _wait_lines(run_dir / "requests.jsonl", 8)
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "interrupted"
    records = read_requests(run_dir / "requests.jsonl")
    phase = summary["phases"]["main"]
    assert phase["requests"]["total"] == len(records) < 400
    cancelled = sum(r.outcome is Outcome.CANCELLED for r in records)
    if presses == 1:
        assert cancelled == 0  # in-flight requests were let finish
        assert all(r.outcome is Outcome.OK for r in records)
    else:
        assert cancelled >= 1
        assert phase["outcomes"]["cancelled"] == cancelled


def test_malformed_scenario_is_refused_before_any_request(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, "[load]\nconcurrency = -1\nrequests = 3\n")
    proc = start_loadgen("run", str(path), "--url", "http://127.0.0.1:9")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert lines == [f"loadgen: {path}: [load] concurrency: expected 1 to 100,000 streams, got -1"]


def test_main_command_with_no_url_starts_the_simulator(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, small(requests=8))
    proc = start_loadgen("run", str(path), "--output", str(tmp_path / "out"), "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert b"started the built-in vLLM simulator" in err
    summary = orjson.loads(out)
    assert summary["run"]["simulator"] is True
    assert summary["phases"]["main"]["requests"]["succeeded"] == 8
    run_dirs = list((tmp_path / "out").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "simulator.log").exists()


def test_api_key_is_sent_but_never_written(
    tmp_path: Path, sim_server: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-5f1b2c-never-written"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    sim = sim_server()
    result = run(tmp_path, small(requests=2), Overrides(urls=(sim.base_url,)))
    assert to_builtins(result.summary)["phases"]["main"]["requests"]["succeeded"] == 2
    for file in result.run_dir.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file


def test_one_and_two_workers_measure_the_same_run(tmp_path: Path, sim_server: StartSim) -> None:
    """Splitting the load over worker processes changes no figure beyond noise."""
    text = small(max_tokens=24, concurrency=6, requests=36)
    results = {}
    for workers in (1, 2):
        sim = sim_server("--enable-prompt-tokens-details", "--step-base-ms", "10")
        result = run(tmp_path, text, Overrides(urls=(sim.base_url,)), f"w{workers}", workers)
        assert to_builtins(result.summary)["run"]["workers"] == workers
        results[workers] = result
    one, two = (to_builtins(results[w].summary)["phases"]["main"] for w in (1, 2))
    assert one["requests"] == two["requests"]
    # Exact: the same requests, the same usage. (Cached tokens are not compared: which request
    # finds an image already cached depends on the server's timing, not on the client.)
    for key in ("prompt", "generation", "total", "missing_usage_requests"):
        assert one["tokens"][key] == two["tokens"][key], key
    assert one["outcomes"] == two["outcomes"]
    for metric in ("ttft", "itl", "itl_chunk", "tpot", "e2e"):
        assert one["latency_ms"][metric]["count"] == two["latency_ms"][metric]["count"]
    # Percentiles within tolerance: the engine's 10 ms step dominates ITL and TPOT.
    assert two["latency_ms"]["itl"]["p50"] == pytest.approx(
        one["latency_ms"]["itl"]["p50"], rel=0.2
    )
    assert two["latency_ms"]["tpot"]["p50"] == pytest.approx(
        one["latency_ms"]["tpot"]["p50"], rel=0.2
    )
    # The same requests were sent: identical (index, images) sets.
    reqs = {
        w: sorted(
            (r.index, tuple(r.images)) for r in read_requests(results[w].run_dir / "requests.jsonl")
        )
        for w in (1, 2)
    }
    assert reqs[1] == reqs[2]
    shards = {r.shard for r in read_requests(results[2].run_dir / "requests.jsonl")}
    assert shards == {0, 1}


def test_unreachable_server_without_a_model_is_one_clear_line(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, small(requests=2))
    url = f"http://127.0.0.1:{_free_port()}"
    proc = start_loadgen("run", str(path), "--url", url, "--run-dir", str(tmp_path / "r"))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"loadgen: cannot connect to {url}/v1/models")
    assert "is the server up?" in lines[0]


def _sim_stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/sim/stats", timeout=5) as response:
        stats: dict[str, Any] = orjson.loads(response.read())
    return stats


def test_open_loop_cap_holds_over_workers(tmp_path: Path, sim_server: StartSim) -> None:
    """A cap on requests in flight is shared over the workers: the server never sees more, and a
    request waiting for a free slot is schedule lag, not latency. A server that stalls 1.5 s every
    3 s (counted from its first request, so both runs meet the same stalls) makes every shard wait
    at its cap."""
    cap = 3  # odd: split 2 + 1 over two workers
    text = small(max_tokens=2) + "\n"
    phases = {}
    for workers in (1, 2):
        sim = sim_server("--fault-stall", "1.5", "--fault-stall-every", "3")
        result = run(
            tmp_path,
            text,
            Overrides(
                urls=(sim.base_url,),
                mode="constant",
                rate=20.0,
                requests=0,
                duration=7.0,
                concurrency=cap,
            ),
            f"w{workers}",
            workers,
        )
        assert to_builtins(result.summary)["run"]["workers"] == workers
        assert _sim_stats(sim.base_url)["peak_in_flight"] <= cap, workers
        phases[workers] = to_builtins(result.summary)["phases"]["main"]
        records = read_requests(result.run_dir / "requests.jsonl")
        events = sorted([(r.sent, 1) for r in records] + [(r.end, -1) for r in records])
        level = peak = 0
        for _, step in events:
            level += step
            peak = max(peak, level)
        assert peak <= cap, workers  # from the records themselves
    one, two = phases[1], phases[2]
    assert one["requests"]["failed"] == two["requests"]["failed"] == 0
    assert one["concurrency"]["peak"] == two["concurrency"]["peak"] == cap
    lat1, lat2 = one["latency_ms"], two["latency_ms"]
    # Raw TTFT is the server's answer time once sent: a few ms, not the 1.5 s stall; the stall is
    # in the schedule lag and the latencies from the intended time, alike for 1 and 2 workers.
    for lat in (lat1, lat2):
        assert lat["ttft"]["p90"] < 300
        assert lat["schedule_lag"]["p90"] >= 500
    for metric in ("schedule_lag", "ttft_intended", "e2e_intended"):
        assert lat2[metric]["p90"] == pytest.approx(lat1[metric]["p90"], rel=0.3), metric


def test_closed_loop_requests_follow_the_streams_over_workers(
    tmp_path: Path, sim_server: StartSim
) -> None:
    """3 streams over 2 workers are 2 + 1: the requests go 2/3 and 1/3, so no worker's streams
    run on alone after the others ran out of requests."""
    sim = sim_server()
    result = run(
        tmp_path, small(max_tokens=4, concurrency=3, requests=30), Overrides(urls=(sim.base_url,)),
        workers=2,
    )  # fmt: skip
    records = read_requests(result.run_dir / "requests.jsonl")
    per_shard = {k: sorted(r.index for r in records if r.shard == k) for k in (0, 1)}
    assert per_shard[0] == [i for i in range(30) if i % 3 != 1]
    assert per_shard[1] == [i for i in range(30) if i % 3 == 1]


LONG = """
name = "drain"
seed = 5
[workload]
prompt = "Describe this image in one sentence."
max_tokens = 20000
ignore_eos = true
[workload.images]
width = 64
height = 64
[load]
mode = "{mode}"
concurrency = 2
rate = 4.0
duration = 1.0
drain_timeout = 0.5
"""


@pytest.mark.parametrize(("mode", "workers"), [("closed", 1), ("closed", 2), ("constant", 2)])
def test_drain_timeout_cancels_what_is_still_in_flight(
    tmp_path: Path, sim_server: StartSim, mode: str, workers: int
) -> None:
    """Outputs of 20,000 tokens take about 20 s on the fast profile; with a 1 s phase and a
    0.5 s drain bound, the phase ends long before them and every request is cut."""
    sim = sim_server()
    result = run(tmp_path, LONG.format(mode=mode), Overrides(urls=(sim.base_url,)), "r", workers)
    phase = to_builtins(result.summary)["phases"]["main"]
    records = read_requests(result.run_dir / "requests.jsonl")
    assert records and phase["requests"]["total"] == len(records)
    assert phase["outcomes"]["cancelled"] == len(records)
    assert all(r.outcome is Outcome.CANCELLED for r in records)
    assert all(r.error and "drain_timeout" in r.error for r in records)
    assert any(r.chunk_times for r in records)  # they were streaming when cut
    # ended within the bound, far from the ~20 s the outputs would have taken
    assert phase["ended"] - phase["started"] < 8.0
    assert max(r.end for r in records) - phase["started"] < 8.0


PROGRESS = """
name = "progress"
seed = 7
[workload]
prompt = "Describe this image in one sentence."
max_tokens = 3000
ignore_eos = true
[workload.images]
width = 64
height = 64
[load]
mode = "closed"
concurrency = 2
requests = 2
[output]
progress_interval = 0.5
"""

_PROGRESS_LINE = re.compile(
    r"^\[main\] +([\d.]+) s  (\d+)/2 done  (\d+) in flight  (\d+) errors  ([\d,]+) tok  "
)


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_without_a_terminal_is_plain_lines_counting_tokens_as_they_stream(
    tmp_path: Path, sim_server: StartSim, workers: int
) -> None:
    """stderr is a pipe: progress comes as plain lines, and the generated tokens of requests
    still streaming (3000 tokens, about 3 s each on the fast profile) are counted before any
    request has ended."""
    sim = sim_server()
    path = scenario_file(tmp_path, PROGRESS)
    run_dir = tmp_path / "r"
    proc = start_loadgen(
        "run", str(path), "--url", sim.base_url, "--run-dir", str(run_dir), "--no-report",
        "--workers", str(workers),
    )  # fmt: skip
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    text = err.decode()
    assert "\x1b" not in text and "\r" not in text
    lines = [m for m in map(_PROGRESS_LINE.match, text.splitlines()) if m]
    assert len(lines) >= 2, text
    before_any_end = [int(m[5].replace(",", "")) for m in lines if int(m[2]) == 0]
    assert len(before_any_end) >= 2, text
    assert before_any_end[-1] > before_any_end[0] > 0  # rising while nothing has ended
    assert all(int(m[3]) <= 2 for m in lines)
    assert max(before_any_end) < 2 * 3000


def test_a_saturated_closed_loop_keeps_its_streams_in_flight(
    tmp_path: Path, sim_server: StartSim
) -> None:
    """Each stream sends its next request as soon as its previous one ends, so a closed loop of
    C streams with fixed-length outputs has about C requests in flight, and says so."""
    sim = sim_server(
        "--step-base-ms", "4", "--step-per-seq-ms", "0", "--step-per-prefill-token-ms", "0",
        "--mm-process-us-per-token", "0",
    )  # fmt: skip
    streams = 32
    result = run(
        tmp_path,
        small(max_tokens=64, concurrency=streams, requests=6 * streams),
        Overrides(urls=(sim.base_url,)),
    )
    phase = to_builtins(result.summary)["phases"]["main"]
    assert phase["requests"]["succeeded"] == 6 * streams
    conc = phase["concurrency"]
    assert conc["target"] == streams and conc["peak"] == streams
    assert conc["mean_over_target"] == conc["mean"] / streams
    assert conc["mean_over_target"] >= 0.9, conc
    from loadgen.results.report_text import render_phase

    assert f"of {streams} asked" in render_phase(
        "main", result.summary.phases["main"], open_loop=False
    )


def test_extra_body_is_written_to_the_summary_as_given(
    tmp_path: Path, sim_server: StartSim
) -> None:
    sim = sim_server()
    pairs = [["a", 1], ["b", 2]]
    text = small(max_tokens=2, concurrency=1, requests=1)
    text += '[workload.extra_body]\nlist_of_pairs = [["a", 1], ["b", 2]]\n'
    result = run(tmp_path, text, Overrides(urls=(sim.base_url,)))
    summary = read_json(result.run_dir / "summary.json")
    assert summary["scenario"]["workload"]["extra_body"] == {"list_of_pairs": pairs}
    assert summary["phases"]["main"]["requests"]["total"] == 1
