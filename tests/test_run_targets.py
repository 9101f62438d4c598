"""Several servers in one run: each is probed, scraped and reconciled with the client on its own."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadgen.orchestrator import RunOptions, run_scenario
from loadgen.records import Outcome
from loadgen.results.files import read_requests
from loadgen.results.report_text import render_summary
from loadgen.results.schema import to_builtins
from loadgen.scenario import Overrides, load_scenario
from tests.conftest import StartSim

SCENARIO = """
name = "two-servers"
seed = 5
[workload]
prompt = "Describe this image in one sentence."
max_tokens = 12
ignore_eos = true
[workload.images]
width = 96
height = 96
pool_size = 5
[load]
mode = "closed"
concurrency = 4
requests = 14
"""

COUNTERS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total")


def server_counters(base_url: str) -> dict[str, float]:
    """The simulator's counters read independently of loadgen's scraper."""
    text = httpx.get(base_url + "/metrics", timeout=5.0).text
    out = dict.fromkeys(COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in out:
                out[s.name] += s.value
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_each_server_is_reconciled_and_the_total_is_their_sum(
    tmp_path: Path, sim_server: StartSim, workers: int
) -> None:
    sims = [sim_server(), sim_server()]
    urls = tuple(s.base_url for s in sims)
    before = {u: server_counters(u) for u in urls}
    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO)
    scenario = load_scenario(path, Overrides(urls=urls))
    options = RunOptions(run_dir=str(tmp_path / "run"), handle_signals=False, workers=workers)
    messages: list[str] = []
    result = anyio.run(run_scenario, scenario, options, messages.append)
    after = {u: server_counters(u) for u in urls}
    server_delta = {u: {k: round(after[u][k] - before[u][k]) for k in COUNTERS} for u in urls}

    assert (
        len(to_builtins(result.summary)["client"]["shards"]) == workers
    )  # the self-check, untouched
    records = read_requests(result.run_dir / "requests.jsonl")
    assert len(records) == 14 and all(r.outcome is Outcome.OK for r in records)
    phase = to_builtins(result.summary)["phases"]["main"]
    # The client's own per-target totals, from the records (requests go round-robin by index).
    client = {
        u: {
            "prompt": sum(r.prompt_tokens or 0 for r in records if r.target.startswith(u + "/")),
            "generation": sum(
                r.completion_tokens or 0 for r in records if r.target.startswith(u + "/")
            ),
        }
        for u in urls
    }
    assert all(client[u]["generation"] == 7 * 12 for u in urls)
    for u in urls:
        assert client[u]["prompt"] == server_delta[u]["vllm:prompt_tokens_total"]
        assert client[u]["generation"] == server_delta[u]["vllm:generation_tokens_total"]

    server = to_builtins(result.summary)["server"]["phases"]["main"]
    targets = server["targets"]
    assert set(targets) == set(urls)
    for u in urls:
        delta, cmp_ = targets[u]["delta"], targets[u]["comparison"]
        assert delta["prompt_tokens"] == server_delta[u]["vllm:prompt_tokens_total"]
        assert delta["generation_tokens"] == server_delta[u]["vllm:generation_tokens_total"]
        assert cmp_["prompt_tokens"] == {
            "client": client[u]["prompt"],
            "server": client[u]["prompt"],
            "match": True,
        }
        assert cmp_["generation_tokens"]["client"] == client[u]["generation"]
        assert cmp_["requests"] == {"client": 7, "server": 7, "match": True}
        assert not cmp_["mismatch"]
        assert targets[u]["delta"]["mean_ms"]["e2e"] is not None  # per-target server means
    # The total is the sum of the targets, and equals the client's phase totals.
    total_prompt = sum(server_delta[u]["vllm:prompt_tokens_total"] for u in urls)
    total_generation = sum(server_delta[u]["vllm:generation_tokens_total"] for u in urls)
    assert server["delta"]["prompt_tokens"] == total_prompt == phase["tokens"]["prompt"]
    assert server["delta"]["generation_tokens"] == total_generation
    assert phase["tokens"]["generation"] == total_generation
    assert server["delta"]["requests_completed"] == 14
    assert not server["comparison"]["mismatch"]
    assert server["comparison"]["prompt_tokens"]["match"] is True
    # Each server was scraped during the run too.
    run_targets = to_builtins(result.summary)["server"]["run"]["targets"]
    assert set(run_targets) == set(urls)
    assert all(t["available"] and t["samples"] >= 1 for t in run_targets.values())
    text = render_summary(result.summary)
    assert "WARNING: client and server token totals differ" not in text
    assert "total of 2 servers" in text
    rows = [line for line in text.splitlines() if line.startswith(urls)]
    assert len(rows) == 2 and all(" yes " in row for row in rows)  # one row per server, equal


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_target_is_probed_and_warned_about(sim_server: StartSim) -> None:
    from loadgen.client import ClientSettings
    from loadgen.config import TargetConfig
    from loadgen.errors import TargetError
    from loadgen.target import resolve_model

    good = sim_server().base_url
    other = sim_server("--served-model-name", "another-model").base_url
    down = f"http://127.0.0.1:{_free_port()}"
    settings = ClientSettings(pool_size=0, connect_timeout=2.0, read_timeout=5.0)

    def resolve(urls: tuple[str, ...], model: str = "") -> tuple[str, list[str]]:
        target = TargetConfig(urls=urls, model=model)
        return anyio.run(resolve_model, target, urls, settings)

    model, warnings = resolve((good, good + "/v1"))
    assert model == "sim-vlm" and warnings == []
    # A later target that is down or serves other models is named, not silently ignored.
    model, warnings = resolve((good, down, other))
    assert model == "sim-vlm" and len(warnings) == 2
    assert down in warnings[0] and "cannot connect" in warnings[0]
    assert other in warnings[1] and "sim-vlm" in warnings[1] and "another-model" in warnings[1]
    # The first target down: the model comes from the next one that answers, with a warning.
    model, warnings = resolve((down, good))
    assert model == "sim-vlm" and len(warnings) == 1 and down in warnings[0]
    # A model given: each target that does not list it is named.
    model, warnings = resolve((good, other), model="sim-vlm")
    assert model == "sim-vlm" and len(warnings) == 1 and other in warnings[0]
    with pytest.raises(TargetError):
        resolve((down,))
