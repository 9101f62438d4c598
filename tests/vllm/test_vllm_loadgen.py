"""`loadgen run` against the real CPU vLLM server: the run's own records must agree with what the
server counted, token for token."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from vllm_helpers import ServerInfo, chat_body, image_tokens, post_stream, scrape

pytestmark = pytest.mark.vllm

PROMPT = "Describe this image in one sentence."


def scenario_toml(
    *,
    name: str,
    seed: int,
    max_tokens: int,
    width: int = 224,
    height: int = 224,
    pool_size: int = 0,
    content: str = "photo",
    concurrency: int = 1,
    requests: int = 1,
    extra_body: dict[str, int] | None = None,
) -> str:
    """The one place that writes scenario files for this suite (format: scenarios/*.toml).
    URL and model come from the command line; so do concurrency and requests again, to exercise
    the overrides."""
    lines = [
        f'name = "{name}"',
        f"seed = {seed}",
        "",
        "[workload]",
        f'prompt = "{PROMPT}"',
        f"max_tokens = {max_tokens}",
        "ignore_eos = true",
        "temperature = 0.0",
        "",
        "[workload.images]",
        'source = "synthetic"',
        f"width = {width}",
        f"height = {height}",
        'format = "png"',
        f'content = "{content}"',
        f"pool_size = {pool_size}",
        "",
        "[load]",
        'mode = "closed"',
        f"concurrency = {concurrency}",
        f"requests = {requests}",
        "warmup_requests = 0",
    ]
    if extra_body:
        lines += ["", "[workload.extra_body]"]
        lines += [f"{key} = {value}" for key, value in extra_body.items()]
    return "\n".join(lines) + "\n"


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str], run_dir: Path) -> None:
        self.proc = proc
        self.run_dir = run_dir

    @property
    def records(self) -> list[dict[str, Any]]:
        path = self.run_dir / "requests.jsonl"
        lines = path.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        return sorted(records, key=lambda r: r["index"])

    @property
    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = json.loads((self.run_dir / "summary.json").read_text())
        return summary

    def explain(self) -> str:
        return (
            f"exit {self.proc.returncode}\nstdout:\n{self.proc.stdout}\nstderr:\n{self.proc.stderr}"
        )


def run_loadgen(
    tmp_path: Path, server: ServerInfo, toml: str, *, concurrency: int, requests: int
) -> Run:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(toml)
    run_dir = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "loadgen",
        "run",
        str(scenario),
        "--url",
        server.base_url,
        "--model",
        server.model,
        "--concurrency",
        str(concurrency),
        "--requests",
        str(requests),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    return Run(proc, run_dir)


@pytest.fixture(scope="module")
def text_only_prompt_tokens(vllm_server: ServerInfo) -> int:
    with httpx.Client(base_url=vllm_server.base_url, timeout=60.0) as c:
        stream = post_stream(c, chat_body(vllm_server.model, text=PROMPT, max_tokens=1))
    return int(stream.usage["prompt_tokens"])


def test_client_token_totals_equal_server_counters(tmp_path: Path, vllm_server: ServerInfo) -> None:
    toml = scenario_toml(name="totals", seed=101, max_tokens=24)
    with httpx.Client(base_url=vllm_server.base_url, timeout=30.0) as c:
        before = scrape(c)
        run = run_loadgen(tmp_path, vllm_server, toml, concurrency=4, requests=12)
        after = scrape(c)
    assert run.proc.returncode == 0, run.explain()
    records = run.records
    assert len(records) == 12
    assert all(r["outcome"] == "ok" for r in records), run.explain()
    prompt = sum(r["prompt_tokens"] for r in records)
    completion = sum(r["completion_tokens"] for r in records)
    assert completion == 12 * 24
    assert prompt == after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"]
    assert (
        completion == after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    )
    for r in records:
        assert sum(r["chunk_tokens"]) == r["completion_tokens"]
        assert len(r["chunk_times"]) == len(r["chunk_tokens"])


def test_prompt_tokens_include_the_image_tokens(
    tmp_path: Path, vllm_server: ServerInfo, text_only_prompt_tokens: int
) -> None:
    toml = scenario_toml(name="image-tokens", seed=202, max_tokens=4, width=448, height=336)
    run = run_loadgen(tmp_path, vllm_server, toml, concurrency=2, requests=4)
    assert run.proc.returncode == 0, run.explain()
    n_image = image_tokens(448, 336, vllm_server.min_pixels, vllm_server.max_pixels)
    expected = text_only_prompt_tokens + n_image + 2  # + <|vision_start|>, <|vision_end|>
    assert [r["prompt_tokens"] for r in run.records] == [expected] * 4


def test_repeated_image_shows_cached_tokens(tmp_path: Path, vllm_server: ServerInfo) -> None:
    # One image for every request, one stream: each request after the first finds the whole
    # prompt but its last block in the prefix cache.
    toml = scenario_toml(name="repeat", seed=303, max_tokens=4, pool_size=1)
    run = run_loadgen(tmp_path, vllm_server, toml, concurrency=1, requests=4)
    assert run.proc.returncode == 0, run.explain()
    records = run.records
    block = vllm_server.block_size
    full = (records[0]["prompt_tokens"] - 1) // block * block
    assert records[0]["cached_tokens"] < full
    assert [r["cached_tokens"] for r in records[1:]] == [full] * 3


def test_thirty_stream_closed_loop_completes(tmp_path: Path, vllm_server: ServerInfo) -> None:
    toml = scenario_toml(name="thirty", seed=404, max_tokens=32, pool_size=10)
    log = Path(vllm_server.log)
    log_start = log.stat().st_size
    run = run_loadgen(tmp_path, vllm_server, toml, concurrency=30, requests=60)
    assert run.proc.returncode == 0, run.explain()
    records = run.records
    assert [r["index"] for r in records] == list(range(60))
    assert {r["outcome"] for r in records} == {"ok"}
    assert {r["status"] for r in records} == {200}
    assert {r["completion_tokens"] for r in records} == {32}
    assert all(r["first_token"] is not None for r in records)
    assert isinstance(run.summary, dict)
    # The engine's own view of the run, for the record (its timing is not asserted).
    with log.open("rb") as f:
        f.seek(log_start)
        stats = [ln for ln in f.read().decode(errors="replace").splitlines() if "throughput" in ln]
    print("\n".join(stats))


def test_min_tokens_above_max_tokens_is_counted_as_http_4xx(
    tmp_path: Path, vllm_server: ServerInfo
) -> None:
    # The scenario validator refuses min_tokens > max_tokens; extra_body goes around it, as a
    # misconfigured client would.
    toml = scenario_toml(name="bad-min", seed=505, max_tokens=8, extra_body={"min_tokens": 16})
    run = run_loadgen(tmp_path, vllm_server, toml, concurrency=2, requests=3)
    assert "Traceback" not in run.proc.stderr, run.explain()
    records = run.records
    assert len(records) == 3
    assert {(r["outcome"], r["status"]) for r in records} == {("http_4xx", 400)}
    assert (run.run_dir / "summary.json").exists()
