"""The `jsonl` dataset's file: one request per line, read and checked whole before any request.

    {"prompt": "Describe the picture.", "images": ["photos/cat.jpg", "https://host/dog.png"],
     "max_tokens": 64, "reference": "a cat on a sofa"}

`images` (optional) holds paths relative to the file, http(s) URLs (sent as they are: the server
fetches them) or base64 data URLs; `max_tokens` (optional) overrides the scenario's for that
request; `reference` (optional), an expected answer, is checked and never sent. A path must stay
inside the file's folder (no absolute paths, no `..` out of it). Every problem is found before the
run starts and named by its line.
"""

from __future__ import annotations

import binascii
import os
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import orjson

from loadgen.datasets.rows import DatasetFileError, ImageRef, Row
from loadgen.safetext import for_terminal, url_problem

KEYS: Final = ("prompt", "images", "max_tokens", "reference")
IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".webp"})
MAX_LINE_BYTES: Final = 64 * 1024 * 1024  # a line with several large data URLs still fits
MAX_IMAGES: Final = 64  # per request; vLLM's own limit is lower and configurable
_SHOWN_PROBLEMS: Final = 5


def read_jsonl(path: str | Path) -> tuple[Row, ...]:
    """Every request of the file, in order; a DatasetFileError naming each bad line otherwise."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise DatasetFileError(f"dataset {file}: cannot read it ({exc.strerror or exc})") from None
    base = file.resolve().parent
    requests: list[Row] = []
    problems: list[str] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            requests.append(_request(number, line, base))
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
    if problems:
        shown = problems[:_SHOWN_PROBLEMS]
        more = len(problems) - len(shown)
        tail = f"\n  ... and {more} more" if more else ""
        listed = "\n  ".join(for_terminal(p) for p in shown)
        raise DatasetFileError(f"dataset {file}: {len(problems)} bad line(s):\n  {listed}{tail}")
    if not requests:
        raise DatasetFileError(f"dataset {file}: no requests (every line is empty)")
    return tuple(requests)


def _request(number: int, line: bytes, base: Path) -> Row:
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"a JSON object is expected, found {type(obj).__name__}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(KEYS)}"
        )
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError('"prompt" must be a non-empty string')
    images = obj.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise ValueError('"images" must be a list of strings')
    if len(images) > MAX_IMAGES:
        raise ValueError(f'"images" holds {len(images)} images; at most {MAX_IMAGES}')
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise ValueError('"max_tokens" must be a whole number of at least 1')
    reference = obj.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise ValueError('"reference" must be a string')
    refs = tuple(image_ref(k, value, base) for k, value in enumerate(images))
    return Row(f"line {number}", prompt, refs, max_tokens, reference)


def image_ref(k: int, value: str, base: Path, *, absolute: bool = False) -> ImageRef:
    """images[k] of a row: a URL, a data URL or a path inside `base` (relative to it, or
    absolute with `absolute`); ValueError if none."""
    where = f"images[{k}]"
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme in ("http", "https"):
        problem = url_problem(value)
        if problem:
            raise ValueError(f"{where}: {problem}")
        if not urlsplit(value).hostname:
            raise ValueError(f"{where}: the URL names no host")
        return ImageRef("url", value)
    if scheme == "data":
        _check_data_url(where, value)
        return ImageRef("data", value)
    return ImageRef("file", str(_inside(where, value, base, absolute)))


def _check_data_url(where: str, value: str) -> None:
    import base64

    head, sep, payload = value.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise ValueError(f"{where}: a data URL must be data:image/<type>;base64,<data>")
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: the data URL's base64 does not decode") from None


def _inside(where: str, value: str, base: Path, absolute: bool) -> Path:
    """The file `value` names, relative to `base` and inside it."""
    if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{where}: a path must be non-empty, without control characters")
    relative = Path(value)
    if (relative.is_absolute() and not absolute) or value.startswith("~"):
        raise ValueError(f"{where}: {value!r}: paths are relative to the dataset file's folder")
    resolved = Path(os.path.realpath(base / relative))
    if not resolved.is_relative_to(base):
        raise ValueError(f"{where}: {value!r} leads out of the dataset file's folder")
    if resolved.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(
            f"{where}: {value!r}: an image file ends in {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    if not resolved.is_file():
        raise ValueError(f"{where}: {value!r}: no such file")
    return resolved
