"""The results folder of one run.

    <run>/requests.jsonl   one JSON object per request, appended and flushed as each one ends
    <run>/summary.json     the run's summary (schema in README.md), rewritten atomically
    <run>/histograms/      HdrHistogram interval logs, one file per phase and metric
    <run>/simulator.log    the built-in simulator's log, when the run started one

Nothing secret is ever written: the API key is not part of any record or of the scenario.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import orjson

from loadgen import __version__
from loadgen.records import RequestRecord

_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
_LINE_OPTIONS = orjson.OPT_APPEND_NEWLINE


def new_run_dir(parent: str | os.PathLike[str], name: str, now: datetime | None = None) -> Path:
    """`parent/<name>-YYYYmmdd-HHMMSS`, with a numeric suffix if that exists already."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    base = Path(parent) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class RequestLog:
    """requests.jsonl, written as requests finish: a crash loses nothing already measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] | None = path.open("ab")
        self.count = 0

    def write(self, rec: RequestRecord) -> None:
        if self._fh is None:
            return
        # Times go out at full float precision: rounding 300 floats in Python costs ten times
        # more than serialising them, and this runs once per request during the run.
        self._fh.write(orjson.dumps(rec.to_json(), option=_LINE_OPTIONS))
        self._fh.flush()
        self.count += 1

    def write_raw(self, line: bytes) -> None:
        """Append a record already serialised (by a worker process), without parsing it."""
        if self._fh is None:
            return
        self._fh.write(line if line.endswith(b"\n") else line + b"\n")
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_requests(path: str | os.PathLike[str]) -> list[RequestRecord]:
    """Read a requests.jsonl back (a truncated last line, from a crash, is skipped)."""
    records = []
    with open(path, "rb") as fh:
        for line in fh:
            try:
                records.append(RequestRecord.from_json(orjson.loads(line)))
            except (orjson.JSONDecodeError, KeyError):
                continue
    return records


def write_json(path: Path, doc: Any) -> None:
    """Write atomically: a reader never sees half a summary."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(doc, option=_JSON_OPTIONS, default=str) + b"\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike[str]) -> Any:
    return orjson.loads(Path(path).read_bytes())


def environment() -> dict[str, Any]:
    """Versions and host facts for the summary, so a run can be reproduced and compared."""
    versions = {"loadgen": __version__, "python": sys.version.split()[0]}
    for package in ("aiohttp", "httpx", "anyio", "orjson", "hdrhistogram", "pillow", "uvloop"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return {
        "versions": versions,
        "host": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "cores_available": cores,
        },
        "argv": sys.argv,
    }
