"""scripts/bench_scrape.py: a smoke run. It checks that every mode ran and scraped as asked and
that the page is the size the figures claim; it never judges the timings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_scrape.py"


def test_quick_run_measures_every_mode(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--base", str(ROOT), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = orjson.loads(out.read_bytes())
    assert doc["page_bytes"] > 100_000
    assert set(doc["parse_ms"]) == {"base", "new"}
    rows = doc["rows"]
    assert set(rows) == {"off", "base", "new"}
    assert rows["off"]["scrapes"] == 0
    assert rows["base"]["scrapes"] >= 1 and rows["new"]["scrapes"] >= 1
    for row in rows.values():
        assert row["itl_p99_9"] >= row["itl_p50"] > 0
    assert "ITL p99.9" in proc.stdout
