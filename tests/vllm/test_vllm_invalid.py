"""Deliberately bad requests against the real CPU vLLM: an undecodable image and min_tokens above
max_tokens are refused with a 400 and counted apart; the good requests' token totals equal the
server's counters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_vllm_datasets import loadgen_run
from vllm_helpers import ServerInfo

pytestmark = pytest.mark.vllm


def test_bad_requests_are_refused_and_counted_apart(
    tmp_path: Path, vllm_server: ServerInfo
) -> None:
    toml = """
name = "invalid"
seed = 2
[workload]
max_tokens = 4
ignore_eos = true
invalid_share = 0.4
invalid_kind = ["undecodable_image", "min_tokens_above_max"]
[workload.images]
width = 112
height = 84
[load]
concurrency = 2
requests = 12
"""
    _, records, grown = loadgen_run(tmp_path, vllm_server, toml)
    assert len(records) == 12
    bad = [r for r in records if r.get("invalid")]
    good = [r for r in records if not r.get("invalid")]
    assert {r["invalid"] for r in bad} == {"undecodable_image", "min_tokens_above_max"}
    assert all((r["outcome"], r["status"]) == ("invalid_rejected", 400) for r in bad), bad
    assert {r["outcome"] for r in good} == {"ok"}
    assert sum(r["prompt_tokens"] for r in good) == grown["vllm:prompt_tokens_total"]
    assert sum(r["completion_tokens"] for r in good) == grown["vllm:generation_tokens_total"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    phase = summary["phases"]["main"]
    assert phase["requests"]["invalid"] == len(bad)
    assert phase["requests"]["total"] == len(good)
    assert phase["tokens"]["generation"] == 4 * len(good)
