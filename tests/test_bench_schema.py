"""scripts/bench_schema.py: a smoke run. It checks that every candidate encodes and decodes the
summary and that the readers run in both trees; it never judges the timings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_schema.py"


def test_quick_run_measures_every_codec_and_the_readers() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--reps", "1", "--loops", "1", "--readers", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("msgspec ", "msgspec, as written", "dataclasses+orjson", "load", "compare"):
        assert row in proc.stdout, proc.stdout
