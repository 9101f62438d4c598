"""The results folder of one run.

    <run>/requests.jsonl   one JSON object per request, appended and flushed as each one ends
    <run>/summary.json     the run's summary (types: results/schema.py), rewritten atomically
    <run>/histograms/      HdrHistogram interval logs, one file per phase and metric
    <run>/simulator.log    the built-in simulator's log, when the run started one
    <run>/imageserver.log  the image server's log, when the run served its images by URL

Nothing secret is ever written: the API key is not part of any record or of the scenario, and
the transports take it out of every error text (a server may echo it back).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import msgspec
import orjson

from loadgen import __version__
from loadgen.errors import LoadgenError
from loadgen.metrics.selfcheck import available_cores
from loadgen.records import RequestRecord
from loadgen.safetext import path_name

_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
_LINE_OPTIONS = orjson.OPT_APPEND_NEWLINE


def new_run_dir(parent: str | os.PathLike[str], name: str, now: datetime | None = None) -> Path:
    """`parent/<name>-YYYYmmdd-HHMMSS`, with a numeric suffix if that exists already. Always a
    child of `parent`: a name is made one safe path component (scenarios refuse others)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    base = Path(parent) / f"{path_name(name)}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


# What a run writes into its folder (files, and folders holding only files of one kind): all
# that `--overwrite` may delete.
_RUN_FILES = frozenset(
    {
        "requests.jsonl",
        "summary.json",
        "summary.json.tmp",
        "simulator.log",
        "imageserver.log",
        "report.html",
    }
)
_RUN_FOLDERS = {"histograms": ".hlog", "plots": ".png"}


def prepare_run_dir(path: Path, *, overwrite: bool = False) -> None:
    """Make `path` the empty results folder of a new run.

    A folder holding files already is refused: a new run would append to the old requests.jsonl
    while summary.json covered only the new one. With `overwrite`, the files of an earlier run
    are deleted first; a folder holding anything else is refused even then, untouched."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        entries = sorted(path.iterdir())
    except OSError as exc:
        raise LoadgenError(
            f"cannot use {path} as the results folder: {exc.strerror or exc}"
        ) from None
    if not entries:
        return
    if not overwrite:
        raise LoadgenError(
            f"{path} is not empty ({entries[0].name}, ...): choose a new folder, "
            "or pass --overwrite to replace an earlier run's files"
        )
    foreign = [e for e in entries if not _is_run_file(e)]
    if foreign:
        raise LoadgenError(
            f"--overwrite: {path} holds {foreign[0].name}, which loadgen did not write; "
            "nothing was deleted"
        )
    try:
        for entry in entries:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    except OSError as exc:
        raise LoadgenError(f"--overwrite: cannot clear {path}: {exc.strerror or exc}") from None


def _is_run_file(entry: Path) -> bool:
    if entry.is_symlink():
        return False
    if entry.is_dir():
        suffix = _RUN_FOLDERS.get(entry.name)
        return suffix is not None and all(
            f.is_file() and not f.is_symlink() and f.name.endswith(suffix) for f in entry.iterdir()
        )
    return entry.is_file() and entry.name in _RUN_FILES


class RequestLog:
    """requests.jsonl, written as requests finish: a crash loses nothing already measured.

    A failed write (a full disk, a file size limit) is not an exception in the middle of the
    run: the log keeps the first error in `error`, counts the records it could not keep in
    `lost`, and calls `on_error` once, so the run can stop and say what was lost."""

    def __init__(self, path: Path, on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._fh: IO[bytes] | None = path.open("ab")
        self.count = 0
        self.lost = 0
        self.error: str | None = None
        self.on_error = on_error

    def write(self, rec: RequestRecord) -> None:
        if self._fh is None:
            if self.error is not None:  # after a failed write: counted, not kept
                self.lost += 1
            return
        # Times go out at full float precision: rounding 300 floats in Python costs ten times
        # more than serialising them, and this runs once per request during the run.
        self._append(orjson.dumps(rec.to_json(), option=_LINE_OPTIONS))

    def write_raw(self, line: bytes) -> None:
        """Append a record already serialised (by a worker process), without parsing it."""
        if self._fh is None:
            if self.error is not None:  # after a failed write: counted, not kept
                self.lost += 1
            return
        self._append(line if line.endswith(b"\n") else line + b"\n")

    def _append(self, line: bytes) -> None:
        assert self._fh is not None
        try:
            self._fh.write(line)
            self._fh.flush()
        except OSError as exc:
            self.error = f"cannot write {self.path}: {exc.strerror or exc}"
            self.lost += 1
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
            if self.on_error is not None:
                self.on_error(self.error)
            return
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
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


def write_json(path: Path, doc: msgspec.Struct | Any) -> None:
    """Write atomically: a reader never sees half a summary (a failed write leaves the previous
    version, and no temporary file). A result structure (loadgen.results.schema) is written by
    its keys on disk; keys sorted, indented, as every loadgen JSON document."""
    if isinstance(doc, msgspec.Struct):
        doc = msgspec.to_builtins(doc, enc_hook=str)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(orjson.dumps(doc, option=_JSON_OPTIONS, default=str) + b"\n")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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
    return {
        "versions": versions,
        "host": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "cores_available": available_cores(),
        },
        "argv": sys.argv,
    }
