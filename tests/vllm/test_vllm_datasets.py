"""Datasets and images by URL against the real CPU vLLM: a jsonl file's per-request max_tokens,
and `--serve-images` (vLLM fetches each image from loadgen's image server on 127.0.0.1), with
token totals equal to the server's counters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from vllm_helpers import ServerInfo, scrape

pytestmark = pytest.mark.vllm

IMAGES = Path(__file__).resolve().parents[2] / "scenarios" / "images"


def loadgen_run(
    tmp_path: Path, server: ServerInfo, toml: str, *extra: str
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]], dict[str, float]]:
    """Run the scenario; its records by index, and the server's counters' growth meanwhile."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(toml)
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "loadgen", "run", str(scenario), "--url", server.base_url,
            "--model", server.model, "--run-dir", str(run_dir), "--no-progress", "--no-report",
            *extra]  # fmt: skip
    with httpx.Client(base_url=server.base_url, timeout=30.0) as c:
        before = scrape(c)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
        after = scrape(c)
    assert proc.returncode == 0, proc.stderr
    lines = (run_dir / "requests.jsonl").read_text().splitlines()
    records = sorted((json.loads(ln) for ln in lines if ln.strip()), key=lambda r: r["index"])
    grown = {k: after[k] - before.get(k, 0.0) for k in after}
    return proc, records, grown


def check_totals(records: list[dict[str, Any]], grown: dict[str, float]) -> None:
    assert {r["outcome"] for r in records} == {"ok"}
    assert sum(r["prompt_tokens"] for r in records) == grown["vllm:prompt_tokens_total"]
    assert sum(r["completion_tokens"] for r in records) == grown["vllm:generation_tokens_total"]


def small_images(folder: Path) -> None:
    """The shipped photos, shrunk: the tiny CPU model's prefill stays short."""
    folder.mkdir()
    for path in sorted(IMAGES.glob("*.jpg")):
        with Image.open(path) as image:
            image.convert("RGB").resize((112, 84)).save(folder / path.name, "JPEG")


def test_served_images_are_fetched_by_vllm(tmp_path: Path, vllm_server: ServerInfo) -> None:
    small_images(tmp_path / "images")
    toml = """
name = "served"
[workload]
max_tokens = 4
ignore_eos = true
[workload.images]
source = "folder"
folder = "images"
[load]
concurrency = 2
requests = 6
"""
    proc, records, grown = loadgen_run(tmp_path, vllm_server, toml, "--serve-images")
    assert len(records) == 6
    check_totals(records, grown)
    assert "image server: answered 6 image fetches (0 refused)" in proc.stderr
    assert "requests carry their URLs" in proc.stderr


def test_a_jsonl_dataset_with_per_request_max_tokens(
    tmp_path: Path, vllm_server: ServerInfo
) -> None:
    small_images(tmp_path / "images")
    shutil.copy(IMAGES / "README.md", tmp_path / "images" / "README.md")
    rows = [
        {"prompt": "Describe this image.", "images": ["images/coffee.jpg"], "max_tokens": 3},
        {"prompt": "And this one?", "images": ["images/rocket.jpg"], "max_tokens": 7},
        {"prompt": "Write one word.", "max_tokens": 2},
        {"prompt": "Describe both.", "images": ["images/chelsea.jpg", "images/coffee.jpg"]},
    ]
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    toml = """
name = "rows"
[workload]
max_tokens = 5
ignore_eos = true
[workload.images]
source = "jsonl"
[workload.dataset]
path = "set.jsonl"
[load]
concurrency = 2
requests = 8
"""
    _proc, records, grown = loadgen_run(tmp_path, vllm_server, toml)
    assert len(records) == 8
    check_totals(records, grown)
    assert [r["completion_tokens"] for r in records] == [3, 7, 2, 5] * 2


def test_mixed_images_and_drawn_counts(tmp_path: Path, vllm_server: ServerInfo) -> None:
    toml = """
name = "mixed"
seed = 3
[workload]
max_tokens = 3
ignore_eos = true
images_per_request = { "1" = 60, "2" = 40 }
[workload.images]
mix = [
  { size = "112x84", format = "jpeg", weight = 50 },
  { size = "84x56", format = "png", content = "gradient", weight = 30 },
  { size = "28x28", format = "webp", weight = 20 },
]
[load]
concurrency = 2
requests = 10
"""
    proc, records, grown = loadgen_run(tmp_path, vllm_server, toml)
    assert len(records) == 10
    check_totals(records, grown)
    assert {len(r["images"]) for r in records} == {1, 2}
    kinds = {image.split("-", 4)[-1] for r in records for image in r["images"]}
    assert len(kinds) >= 2 and kinds <= {
        "112x84-jpeg-photo",
        "84x56-png-gradient",
        "28x28-webp-photo",
    }
    assert "mix of 3: 50% 112x84 jpeg photo" in proc.stderr
