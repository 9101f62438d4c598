"""Runs of each endpoint against the simulator (which serves text completions and unstreamed
answers in vLLM's shapes): the client's token totals equal the server's /metrics, and an
unstreamed run says what it could not measure."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from loadgen.client import TransportName
from loadgen.orchestrator import RunOptions, RunResult, run_scenario
from loadgen.records import Outcome, RequestRecord
from loadgen.results.files import read_requests
from loadgen.results.report_text import render_summary
from loadgen.scenario import Overrides, load_scenario
from tests.conftest import StartSim

SCENARIO = """
name = "{api}"
seed = 6
[target]
api = "{api}"
[workload]
prompt = "Describe this image in one sentence."
max_tokens = 12
ignore_eos = true
images_per_request = {images}
[workload.images]
width = 224
height = 224
pool_size = 2
[load]
concurrency = 3
requests = 15
"""


def run(tmp_path: Path, api: str, url: str, transport: TransportName = "native") -> RunResult:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.format(api=api, images=0 if "completions" in api else 1))
    scenario = load_scenario(path, Overrides(urls=(url,)))
    options = RunOptions(
        run_dir=str(tmp_path / "run"), handle_signals=False, workers=1, transport=transport
    )
    return anyio.run(run_scenario, scenario, options, lambda _: None)


def check_totals(result: RunResult) -> list[RequestRecord]:
    """Every request OK, 12 tokens each, and the client's totals equal the server's counters."""
    records = read_requests(result.run_dir / "requests.jsonl")
    assert len(records) == 15
    assert all(r.outcome is Outcome.OK for r in records), [r.error for r in records]
    assert all(r.completion_tokens == 12 and r.finish_reason == "length" for r in records)
    phase = result.summary.phases["main"]
    assert phase.tokens.generation == 15 * 12
    assert phase.tokens.prompt == sum(r.prompt_tokens or 0 for r in records)
    delta = result.summary.server.phases["main"].delta
    assert (delta.prompt_tokens, delta.generation_tokens) == (
        phase.tokens.prompt,
        phase.tokens.generation,
    )
    return records


def test_a_text_completions_run(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server("--enable-prompt-tokens-details")
    result = run(tmp_path, "completions", sim.base_url)
    records = check_totals(result)
    for r in records:
        assert r.streamed and sum(r.chunk_tokens) == 12 and r.first_token == r.chunk_times[0]
    assert result.summary.run.api == "completions" and result.summary.run.streamed
    phase = result.summary.phases["main"]
    assert phase.latency_ms["itl"].count == 15 * 11 and phase.latency_ms["tpot"].count == 15
    assert "not streamed" not in render_summary(result.summary)


@pytest.mark.parametrize(
    ("api", "transport"),
    [
        ("chat-unstreamed", "native"),
        ("chat-unstreamed", "aiohttp"),
        ("chat-unstreamed", "httpx"),
        ("completions-unstreamed", "native"),
    ],
)
def test_an_unstreamed_run(
    tmp_path: Path, sim_server: StartSim, api: str, transport: TransportName
) -> None:
    sim = sim_server("--enable-prompt-tokens-details")
    result = run(tmp_path, api, sim.base_url, transport)
    records = check_totals(result)
    for r in records:
        assert not r.streamed and r.chunk_times == [] and r.first_token == r.end
        assert r.ttft == r.e2e and r.tpot is None
    if api == "chat-unstreamed":  # the image pool repeats: the prefix cache shows
        assert sum(r.cached_tokens or 0 for r in records) > 0
    assert (result.summary.run.api, result.summary.run.streamed) == (api, False)
    phase = result.summary.phases["main"]
    latency = phase.latency_ms
    assert latency["ttft"].count == latency["e2e"].count == 15
    assert latency["ttft"].p50 == latency["e2e"].p50
    assert latency["itl"].count == latency["tpot"].count == 0
    assert f"not streamed (api {api}): answers read whole, so TTFT = E2E" in render_summary(
        result.summary
    )
