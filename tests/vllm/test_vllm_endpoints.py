"""`loadgen run` of each endpoint besides streamed chat against the real CPU vLLM server: text
completions, and chat or text completions unstreamed. The run's records must agree with what the
server counted, token for token."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from vllm_helpers import ServerInfo, scrape

pytestmark = pytest.mark.vllm

MAX_TOKENS = 16
REQUESTS = 12


def scenario_toml(api: str, images: int) -> str:
    return f"""
name = "{api}"
seed = 707
[target]
api = "{api}"
[workload]
prompt = "Describe this image in one sentence."
max_tokens = {MAX_TOKENS}
ignore_eos = true
temperature = 0.0
images_per_request = {images}
[workload.images]
source = "synthetic"
width = 224
height = 224
format = "png"
pool_size = 3
[load]
mode = "closed"
concurrency = 4
requests = {REQUESTS}
"""


def run_loadgen(tmp_path: Path, server: ServerInfo, toml: str) -> tuple[str, Path]:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(toml)
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "loadgen", "run", str(scenario), "--url", server.base_url]
    argv += ["--model", server.model, "--run-dir", str(run_dir), "--no-progress"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    explain = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, explain
    return proc.stdout, run_dir


@pytest.mark.parametrize(
    ("api", "images"),
    [("completions", 0), ("chat-unstreamed", 1), ("completions-unstreamed", 0)],
)
def test_client_token_totals_equal_server_counters(
    tmp_path: Path, vllm_server: ServerInfo, api: str, images: int
) -> None:
    with httpx.Client(base_url=vllm_server.base_url, timeout=30.0) as c:
        before = scrape(c)
        stdout, run_dir = run_loadgen(tmp_path, vllm_server, scenario_toml(api, images))
        after = scrape(c)
    lines = (run_dir / "requests.jsonl").read_text().splitlines()
    records: list[dict[str, Any]] = [json.loads(line) for line in lines if line.strip()]
    assert len(records) == REQUESTS
    assert all(r["outcome"] == "ok" for r in records), stdout
    prompt = sum(r["prompt_tokens"] for r in records)
    completion = sum(r["completion_tokens"] for r in records)
    server_prompt = after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"]
    server_generation = (
        after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    )
    print(
        f"{api}: client prompt {prompt}, generation {completion}; "
        f"vLLM prompt {server_prompt:g}, generation {server_generation:g}"
    )
    assert completion == REQUESTS * MAX_TOKENS
    assert (prompt, completion) == (server_prompt, server_generation)
    assert "client token totals match the server's counters exactly" in stdout
    if api.endswith("unstreamed"):
        assert all(r["streamed"] is False and r["chunk_times"] == [] for r in records)
        assert all(r["first_token"] == r["end"] for r in records)
        assert f"not streamed (api {api})" in stdout
    else:
        assert all(sum(r["chunk_tokens"]) == r["completion_tokens"] for r in records)
        assert "streamed" not in records[0]
