"""`source = "jsonl"` and `source = "hf"`: a file of rows, one request a row (`loadgen.datasets.rows`,
read by `jsonl.read_jsonl` or `hf.read_hf`), read and checked whole when the dataset is made.

Request r of a phase's stream shows row order[r mod N] of the N rows, where the order is the
file's, or one permutation of it drawn from the scenario's seed with `shuffle = true`; a warm-up
walks the same order from its end backwards, so that it shows the phase's first rows only when
the two together ask more rows than the file has. A row without a prompt asks the scenario's
prompts round-robin (prompts[r mod len(prompts)]); a row's `max_tokens` wins over the
scenario's. Every distinct image of the file is one key (0, 1, ... in order of first use in the
file), shared by every stream: files, data URLs and embedded bytes are checked (decoded whole
with Pillow) when the dataset is made and sent as data URLs; http(s) URLs go as they are (the
target fetches them). Everything depends on the file and the seed only, so every shard computes
the same request r.
"""

from __future__ import annotations

import math
import os
import random
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from loadgen.config import MAX_IMAGES_PER_REQUEST, MAX_TOKENS, WARMUP, WorkloadConfig
from loadgen.datasets.base import RequestInputs
from loadgen.datasets.hf import INSTALL as HF_INSTALL
from loadgen.datasets.images import (
    ImageFileError,
    ImageItem,
    check_bytes,
    check_file,
    decode_data_url,
    load_bytes,
    load_file,
    url_item,
)
from loadgen.datasets.rows import DatasetFileError, ImageRef, Row
from loadgen.safetext import for_terminal
from loadgen.schedule import derive_seed

# The sources read as rows, and what `[workload.dataset]` holds for `hf` alone.
ROW_SOURCES: Final = ("jsonl", "hf")
__all__ = ["HF_INSTALL", "HF_ONLY_KEYS", "ROW_SOURCES", "RowsDataset"]
HF_ONLY_KEYS: Final = frozenset(
    {"image_column", "prompt_column", "reference_column", "format", "split"}
)
_SHOWN_PROBLEMS: Final = 5
_new = tuple.__new__


@dataclass(frozen=True, slots=True)
class RowImages:
    """The distinct images of the rows, by key. Picklable (a worker process may build them)."""

    refs: tuple[ImageRef, ...]
    ids: tuple[str, ...]
    max_side: int
    quality: int

    def name(self, key: int) -> str:
        return self.ids[key]

    def build(self, key: int) -> ImageItem:
        ref, image_id = self.refs[key], self.ids[key]
        if ref.source == "url":
            return url_item(image_id, ref.value)
        if ref.source == "file":
            return load_file(Path(ref.value), max_side=self.max_side, quality=self.quality)
        data = _bytes_of(ref)
        try:
            return load_bytes(image_id, data, max_side=self.max_side, quality=self.quality)
        except Exception as exc:  # a decoder meeting a corrupt image may raise anything
            reason = check_bytes(data) or f"cannot be read ({exc})"
            raise ImageFileError(f"{image_id}: {reason}") from None


def _bytes_of(ref: ImageRef) -> bytes:
    return decode_data_url(ref.value)[1] if ref.source == "data" else ref.data


def read_rows(cfg: WorkloadConfig, source: str) -> tuple[Row, ...]:
    """The rows of the workload's dataset file, at most `limit` of them."""
    spec = cfg.dataset
    if source == "jsonl":
        from loadgen.datasets.jsonl import read_jsonl

        rows = read_jsonl(spec.path)
        return rows[: spec.limit] if spec.limit else rows
    from loadgen.datasets.hf import HfSpec, read_hf

    return read_hf(
        HfSpec(
            spec.path,
            image_column=spec.image_column,
            prompt_column=spec.prompt_column,
            reference_column=spec.reference_column,
            format=spec.format,
            split=spec.split,
            limit=spec.limit,
        )
    )


class RowsStream:
    """One stream of a rows dataset: request r shows row order[r mod N] (a warm-up's, read
    backwards)."""

    def __init__(self, dataset: RowsDataset, backwards: bool) -> None:
        self.builder = dataset.images
        self.built = dataset.shared
        self.universe = len(dataset.images.refs)
        self._rows = dataset.order[::-1] if backwards else dataset.order
        self._prompts = dataset.config.prompts
        self._default_tokens = dataset.config.max_tokens
        # Bodies repeat with the rows, and with the prompts when a row asks the scenario's.
        needs_prompts = any(dataset.prompts[i] is None for i in self._rows)
        n = len(self._rows)
        self._period = math.lcm(n, len(self._prompts)) if needs_prompts else n
        self._numbers = array("q")
        self._first: dict[tuple[str, tuple[int, ...], int], int] = {}
        self._dataset = dataset

    def inputs(self, r: int) -> RequestInputs:
        row = self._rows[r % len(self._rows)]
        d = self._dataset
        prompt = d.prompts[row]
        if prompt is None:
            prompt = self._prompts[r % len(self._prompts)]
        return _new(RequestInputs, (prompt, d.keys[row], d.max_tokens[row]))

    def body_number(self, r: int) -> int:
        r %= self._period
        while len(self._numbers) <= r:
            n = len(self._numbers)
            prompt, keys, max_tokens = self.inputs(n)
            body = (prompt, keys, max_tokens or self._default_tokens)
            self._numbers.append(self._first.setdefault(body, n))
        return self._numbers[r]


class RowsDataset:
    """A dataset file's rows as requests; made as `RowsDataset(config, seed)` for the source the
    configuration names (`jsonl` or `hf`)."""

    def __init__(self, cfg: WorkloadConfig, seed: int) -> None:
        if not cfg.prompts:
            raise ValueError("a workload needs at least one prompt")
        self.config = cfg
        self.skipped: list[str] = []
        rows = read_rows(cfg, cfg.images.source)
        _check_rows(cfg, rows)
        text_only = cfg.images_per_request == 0  # the rows' images left out
        self.images, self.keys = _distinct_images(cfg, rows, text_only)
        self.prompts = tuple(row.prompt for row in rows)
        self.max_tokens = tuple(row.max_tokens for row in rows)
        self.references = tuple(row.reference for row in rows)
        order = list(range(len(rows)))
        if cfg.dataset.shuffle:
            random.Random(derive_seed(seed, "rows")).shuffle(order)
        self.order = tuple(order)
        self.shared: dict[int, ImageItem] = {}

    def stream(self, kind: str, phase: str) -> RowsStream:
        return RowsStream(self, backwards=kind == WARMUP)


def _check_rows(cfg: WorkloadConfig, rows: tuple[Row, ...]) -> None:
    problems: list[str] = []
    for row in rows:
        if len(row.images) > MAX_IMAGES_PER_REQUEST:
            problems.append(
                f"{row.origin}: {len(row.images)} images, at most {MAX_IMAGES_PER_REQUEST}"
            )
        if row.max_tokens is None:
            continue
        if row.max_tokens > MAX_TOKENS:
            problems.append(f"{row.origin}: max_tokens {row.max_tokens} over {MAX_TOKENS:,}")
        if cfg.min_tokens is not None and row.max_tokens < cfg.min_tokens:
            problems.append(
                f"{row.origin}: max_tokens {row.max_tokens} is below the workload's "
                f"min_tokens ({cfg.min_tokens})"
            )
    _refuse(cfg, problems)


def _distinct_images(
    cfg: WorkloadConfig, rows: tuple[Row, ...], text_only: bool
) -> tuple[RowImages, tuple[tuple[int, ...], ...]]:
    """The distinct images of the rows, each checked, and each row's image keys."""
    first: dict[tuple[str, str | bytes], int] = {}
    refs: list[ImageRef] = []
    ids: list[str] = []
    keys: list[tuple[int, ...]] = []
    problems: list[str] = []
    base = Path(cfg.dataset.path).resolve()
    base = base if base.is_dir() else base.parent
    for row in rows:
        row_keys: list[int] = []
        for k, ref in enumerate(() if text_only else row.images):
            identity = (ref.source, ref.data if ref.source == "bytes" else ref.value)
            key = first.get(identity)
            if key is None:
                problem = _problem(ref)
                if problem:
                    problems.append(f"{row.origin}: images[{k}] {ref.shown}: {problem}")
                key = first[identity] = len(refs)
                refs.append(ref)
                ids.append(_image_id(ref, row, k, base))
            row_keys.append(key)
        keys.append(tuple(row_keys))
    _refuse(cfg, problems)
    images = RowImages(tuple(refs), tuple(ids), cfg.images.max_side, cfg.images.quality)
    return images, tuple(keys)


def _problem(ref: ImageRef) -> str | None:
    if ref.source == "url":
        return None
    if ref.source == "file":
        return check_file(Path(ref.value))
    return check_bytes(_bytes_of(ref))


def _image_id(ref: ImageRef, row: Row, k: int, base: Path) -> str:
    if ref.source == "url":
        return ref.value
    if ref.source == "file":
        path = Path(ref.value)
        return os.path.relpath(path, base) if path.is_relative_to(base) else path.name
    return f"{row.origin} image {k}"


def _refuse(cfg: WorkloadConfig, problems: list[str]) -> None:
    if not problems:
        return
    shown = problems[:_SHOWN_PROBLEMS]
    more = len(problems) - len(shown)
    tail = f"\n  ... and {more} more" if more else ""
    listed = "\n  ".join(for_terminal(p) for p in shown)
    raise DatasetFileError(
        f"dataset {cfg.dataset.path}: {len(problems)} unusable row(s):\n  {listed}{tail}"
    )
