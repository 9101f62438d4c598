"""Hugging Face `datasets` from local files only: parquet, arrow or an imagefolder on disk (a
COCO-captions or VisionArena export, say), read into rows with the image, prompt and reference
columns chosen by name. Nothing is fetched from a hub: the library runs offline here.

`datasets` is an optional dependency (`pip install 'loadgen[hf]'`). Image columns hold either
the library's Image feature (read undecoded: the encoded bytes are sent as they are), a list of
them, or strings (paths relative to the dataset, http(s) URLs, data URLs).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from loadgen.datasets.rows import DatasetFileError, ImageRef, Row

HfFormat = Literal["parquet", "arrow", "imagefolder"]
FORMATS: Final[tuple[HfFormat, ...]] = ("parquet", "arrow", "imagefolder")
_SUFFIXES: Final[dict[str, HfFormat]] = {".parquet": "parquet", ".arrow": "arrow"}
INSTALL: Final = "pip install 'loadgen[hf]' (the Hugging Face datasets package)"


@dataclass(frozen=True, slots=True)
class HfSpec:
    path: str  # a file, or a folder (imagefolder, or a folder of parquet/arrow files)
    image_column: str = "image"
    prompt_column: str = ""  # "": the scenario's prompts
    reference_column: str = ""  # "": none
    format: HfFormat | Literal[""] = ""  # "": from the file suffix; a folder is an imagefolder
    split: str = "train"
    limit: int = 0  # rows read, from the start (0: all)


def read_hf(spec: HfSpec) -> tuple[Row, ...]:
    """The dataset's rows, checked whole; a DatasetFileError naming the problem otherwise."""
    # Offline before the import: the library reads these when it is first imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise DatasetFileError(f"dataset {spec.path}: needs {INSTALL}") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    root = Path(spec.path)
    if not root.exists():
        raise DatasetFileError(f"dataset {spec.path}: no such file or folder")
    fmt = spec.format or _format_of(root)
    with tempfile.TemporaryDirectory(prefix="loadgen-hf-") as cache:
        table = _load(datasets, root, fmt, spec.split, cache)
        missing = [
            c
            for c in (spec.image_column, spec.prompt_column, spec.reference_column)
            if c and c not in table.column_names
        ]
        if missing:
            raise DatasetFileError(
                f"dataset {spec.path}: no column {', '.join(map(repr, missing))}; "
                f"it has {', '.join(table.column_names)}"
            )
        if isinstance(table.features.get(spec.image_column), datasets.Image):
            table = table.cast_column(spec.image_column, datasets.Image(decode=False))
        count = len(table) if spec.limit <= 0 else min(spec.limit, len(table))
        base = root if root.is_dir() else root.parent
        rows = [_row(i, table[i], spec, base) for i in range(count)]
    if not rows:
        raise DatasetFileError(f"dataset {spec.path}: no rows")
    return tuple(rows)


def _format_of(root: Path) -> HfFormat:
    if root.is_dir():
        suffixes = {p.suffix for p in root.iterdir() if p.is_file()}
        for suffix, fmt in _SUFFIXES.items():
            if suffix in suffixes:
                return fmt
        return "imagefolder"
    known = _SUFFIXES.get(root.suffix.lower())
    if known is None:
        raise DatasetFileError(
            f"dataset {root}: cannot tell its format from the name; set format to one of "
            f"{', '.join(FORMATS)}"
        )
    return known


def _load(datasets: Any, root: Path, fmt: HfFormat, split: str, cache: str) -> Any:
    try:
        if fmt == "imagefolder":
            return datasets.load_dataset(
                "imagefolder", data_dir=str(root), split=split, cache_dir=cache
            )
        files = sorted(str(p) for p in root.glob(f"*.{fmt}")) if root.is_dir() else [str(root)]
        return datasets.load_dataset(fmt, data_files=files, split=split, cache_dir=cache)
    except Exception as exc:  # the library's errors have no common base: say which and why
        raise DatasetFileError(
            f"dataset {root}: cannot read it as {fmt}: {type(exc).__name__}: {exc}"
        ) from None


def _row(index: int, item: Mapping[str, Any], spec: HfSpec, base: Path) -> Row:
    origin = f"row {index}"
    prompt = _text(item, spec.prompt_column, origin)
    reference = _text(item, spec.reference_column, origin)
    value = item[spec.image_column]
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    images = tuple(_image(origin, k, v, base) for k, v in enumerate(values) if v is not None)
    return Row(origin, prompt, images, None, reference)


def _text(item: Mapping[str, Any], column: str, origin: str) -> str | None:
    if not column:
        return None
    value = item[column]
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = value[0]  # several captions (COCO): the first
    if not isinstance(value, str) or not value.strip():
        raise DatasetFileError(
            f"{origin}: column {column!r} holds no text ({type(value).__name__})"
        )
    return value


def _image(origin: str, k: int, value: object, base: Path) -> ImageRef:
    from loadgen.datasets.jsonl import image_ref

    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if isinstance(data, bytes) and data:
            return ImageRef("bytes", f"{origin} image {k}", data)
        value = path
    if isinstance(value, str) and value:
        try:
            # the library names an imagefolder's files by absolute paths, inside the folder
            return image_ref(k, value, base, absolute=True)
        except ValueError as exc:
            raise DatasetFileError(f"{origin}: {exc}") from None
    raise DatasetFileError(f"{origin}: image {k} is neither image bytes nor a path or URL")
