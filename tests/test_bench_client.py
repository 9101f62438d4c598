"""scripts/bench_client.py: a smoke run with minimal sizes. It checks the table's structure and
that every client counted the same tokens; it never judges the timings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_client.py"
FIELDS = ("us_per_token", "us_per_request", "tokens_per_s", "client_cores", "rss_mb")


def test_quick_run_counts_the_same_tokens_in_every_client(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = orjson.loads(out.read_bytes())
    rows = doc["rows"]
    clients = ("reference", "loadgen", "native", "httpx")
    assert [(r["concurrency"], r["client"]) for r in rows] == [
        (c, name) for c in (2, 8) for name in clients
    ]
    per_request = doc["tokens_per_request"]
    for row in rows:
        assert row["reps"] == 2
        assert all(row[f] > 0 for f in FIELDS), row
        assert row["target_cores"] >= 0  # /proc ticks: a tiny run may not register one
        assert len(row["per_rep_us_per_token"]) == 2
        # every repetition of every client streamed every token of every request
        assert row["tokens"] == [40 * per_request]
        assert row["ok"] == 2 * 40
    for conc in (2, 8):
        ref = next(r for r in rows if r["concurrency"] == conc and r["client"] == "reference")
        assert ref["ratio_cpu_per_token"] == 1.0
        for row in rows:
            if row["concurrency"] == conc:
                ratio = row["us_per_token"] / ref["us_per_token"]
                assert abs(row["ratio_cpu_per_token"] - ratio) < 1e-9
    # the loadgen children ran the real path: every request accounted for by the accumulator
    for run in doc["runs"]:
        if run["client"] != "reference":
            assert run["outcomes"] == {"ok": 40}
            assert run["first_tokens"] == 40
    loop = doc["open_loop"]["open_loop"]
    assert loop["ok"] == 40
    assert loop["achieved_rate"] > 0
    assert 0 <= loop["lag_ms"]["p50"] <= loop["lag_ms"]["p99"] <= loop["lag_ms"]["max"]
    # the printed table has a header and one line per row
    table = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.lstrip().startswith("conc"))
    assert len([line for line in table[header + 2 :] if line.strip()[:1].isdigit()]) == len(rows)
    assert any(line.startswith("open loop") for line in table)


def test_every_stream_shape_counts_the_same_tokens(tmp_path: Path) -> None:
    out = tmp_path / "shapes.json"
    proc = subprocess.run(
        [
            sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--no-open-loop",
            "--clients", "reference,loadgen", "--shape", "vllm,spaced,usage-at-end",
        ],
        capture_output=True, text=True, timeout=240, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = orjson.loads(out.read_bytes())
    per_request = doc["tokens_per_request"]
    assert list(doc["shapes"]) == ["vllm", "spaced", "usage-at-end"]
    for shape, figures in doc["shapes"].items():
        for row in figures["rows"]:
            assert row["tokens"] == [40 * per_request], (shape, row["client"])
        for run in figures["runs"]:
            if run["client"] == "loadgen":
                assert run["outcomes"] == {"ok": 40}, shape
    ratios = doc["shape_ratios"]
    assert len(ratios) == 4 and all(r["ratios"]["vllm"] == 1.0 for r in ratios)
    assert "CPU per token against the vllm shape" in proc.stdout


def test_image_mode_sends_the_shipped_photos_and_reports_per_request(tmp_path: Path) -> None:
    out = tmp_path / "images.json"
    proc = subprocess.run(
        [
            sys.executable, str(SCRIPT), "--quick", "--images", "--json", str(out),
            "--no-open-loop", "--clients", "reference,loadgen",
        ],
        capture_output=True, text=True, timeout=240, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = orjson.loads(out.read_bytes())
    assert doc["images"] is True
    for row in doc["rows"]:
        assert row["tokens"] == [40 * doc["tokens_per_request"]], row["client"]
        assert row["us_per_request"] > 0
    assert "requests/s per core" in proc.stdout


def test_image_bodies_carry_each_photo_once() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_client

    bodies = bench_client.image_bodies(32)
    photos = sorted(bench_client.PHOTOS.glob("*.jpg"))
    assert len(bodies) == len(photos) >= 5
    for body, photo in zip(bodies, photos, strict=True):
        doc = orjson.loads(body)
        image, text = doc["messages"][0]["content"]
        assert text == {"type": "text", "text": "Describe this image in one sentence."}
        assert image["image_url"]["url"].startswith("data:image/jpeg;base64,")
        assert len(body) > photo.stat().st_size  # base64 of the whole file
        assert doc["max_tokens"] == 32 and doc["stream"] is True
