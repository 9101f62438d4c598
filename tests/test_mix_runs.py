"""Synthetic mixes as a run sends them, against the simulator: the counts of images per request
and the image variants in their shares (read back from requests.jsonl), token totals equal to
the simulator's counters, and the same requests from one or two worker processes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio

from loadgen.orchestrator import RunOptions, RunResult, run_scenario
from loadgen.results.files import read_requests
from loadgen.scenario import Overrides, load_scenario
from tests.conftest import StartSim
from tests.test_dataset_runs import check_totals

SCENARIO = """
seed = 21
[load]
concurrency = 8
requests = {requests}
[workload]
ignore_eos = true
max_tokens = 3
images_per_request = {{ "1" = 70, "3" = 30 }}
[workload.images]
pool_size = {pool}
mix = [
  {{ size = "160x120", format = "jpeg", weight = 60 }},
  {{ size = "320x180", format = "png", content = "gradient", weight = 30 }},
  {{ size = "20x20", format = "webp", weight = 10 }},
]
"""


def scenario(folder: Path, requests: int, pool: int = 0) -> Path:
    path = folder / "mix.toml"
    path.write_text(SCENARIO.format(requests=requests, pool=pool))
    return path


def run(path: Path, url: str, workers: int = 1, said: list[str] | None = None) -> RunResult:
    scenario = load_scenario(path, Overrides(urls=(url,)))
    options = RunOptions(
        run_dir=str(path.parent / f"run-{workers}"), handle_signals=False, workers=workers
    )
    return anyio.run(run_scenario, scenario, options, (said if said is not None else []).append)


def test_a_mixed_run_sends_its_shares(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server("--enable-prompt-tokens-details")
    said: list[str] = []
    result = run(scenario(tmp_path, 200), sim.base_url, said=said)
    records = read_requests(result.run_dir / "requests.jsonl")
    assert len(records) == 200
    check_totals(result, records)
    counts = Counter(len(r.images) for r in records)
    assert set(counts) == {1, 3}
    assert 0.6 < counts[1] / 200 < 0.8
    kinds = Counter(image.split("-", 4)[-1] for r in records for image in r.images)
    shown = sum(kinds.values())
    assert shown == counts[1] + 3 * counts[3]
    assert 0.5 < kinds["160x120-jpeg-photo"] / shown < 0.7
    assert 0.2 < kinds["320x180-png-gradient"] / shown < 0.4
    assert 0.04 < kinds["20x20-webp-photo"] / shown < 0.16
    # a bigger image costs more prompt tokens: the server saw the sizes sent
    one = {r.images[0].split("-", 4)[-1]: r.prompt_tokens for r in records if len(r.images) == 1}
    assert one["320x180-png-gradient"] > one["160x120-jpeg-photo"] > one["20x20-webp-photo"]
    assert any("mix of 3: 60% 160x120 jpeg photo" in line for line in said), said


def test_one_or_two_workers_send_the_same_mixed_requests(
    tmp_path: Path, sim_server: StartSim
) -> None:
    sim = sim_server()
    path = scenario(tmp_path, 60, pool=9)

    def sent(workers: int) -> dict[int, tuple[object, ...]]:
        records = read_requests(run(path, sim.base_url, workers).run_dir / "requests.jsonl")
        assert len(records) == 60
        return {r.index: (tuple(r.images), r.body, r.prompt_tokens) for r in records}

    assert sent(1) == sent(2)
