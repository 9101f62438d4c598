"""Scenario files: TOML in, a validated `Scenario` out.

Every problem is reported before any request is sent, as one message naming the file, the key
and what was expected. Command-line overrides go through the same validation.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import stat
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import orjson

from loadgen import schedule
from loadgen.config import (
    INVALID_IMAGE_KINDS,
    INVALID_KINDS,
    MAX_BURSTINESS,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_IMAGE_POOL,
    MAX_IMAGES_PER_REQUEST,
    MAX_MILLISECONDS,
    MAX_RATE,
    MAX_REQUESTS,
    MAX_SECONDS,
    MAX_SEED,
    MAX_STREAMS,
    MAX_TOKENS,
    MIN_WINDOW,
    PHASE_IMAGE_KEYS,
    PHASE_WORKLOAD_KEYS,
    RESERVED_BODY_KEYS,
    WARMUP,
    DatasetConfig,
    DistributedConfig,
    ImageContent,
    ImageFormat,
    ImagesConfig,
    LoadConfig,
    LoadMode,
    OutputConfig,
    PhaseConfig,
    Scenario,
    SloConfig,
    TargetConfig,
    WorkloadConfig,
)
from loadgen.datasets import DATASETS
from loadgen.datasets.mix import mix_entries, parse_count, parse_mix
from loadgen.datasets.table import HF_INSTALL, HF_ONLY_KEYS, ROW_SOURCES
from loadgen.endpoints import ENDPOINTS, api_for_path
from loadgen.errors import ScenarioError
from loadgen.safetext import (
    PATH_NAME,
    PATH_NAME_RULE,
    header_name_problem,
    header_value_problem,
    path_name,
    url_problem,
)

# Keys whose TOML spelling differs from the dataclass field, or that accept a friendlier shape.
_T = TypeVar("_T")

_TARGET_ALIASES = {"url": "urls"}
_WORKLOAD_ALIASES = {"prompt": "prompts"}
# The name of a scenario made of flags alone (`loadgen run` without a scenario file).
FLAGS_SCENARIO = "flags"
_TOP_LEVEL = (
    "name",
    "description",
    "seed",
    "target",
    "workload",
    "load",
    "phases",
    "slo",
    "output",
    "distributed",
)
MAX_SHARDS = 4096  # [distributed] workers, workers_per_node
MAX_ACTOR_CPUS = 1024.0


@dataclasses.dataclass(frozen=True, slots=True)
class Overrides:
    """Command-line values that replace the scenario's (None = keep the scenario's)."""

    urls: tuple[str, ...] | None = None
    model: str | None = None
    mode: str | None = None
    concurrency: int | None = None
    rate: float | None = None
    requests: int | None = None
    duration: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    output: str | None = None
    api_key_file: str | None = None
    insecure: bool = False
    window: float | None = None
    progress: bool | None = None
    name: str | None = None
    api: str | None = None
    endpoint: str | None = None
    prompts: tuple[str, ...] | None = None
    system_prompt: str | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    temperature: float | None = None
    images_per_request: int | None = None
    image_size: tuple[int, int] | None = None  # (width, height) of synthetic images
    image_format: str | None = None
    image_content: str | None = None
    image_pool: int | None = None  # [workload.images] pool_size
    warmup_requests: int | None = None
    serve_images: bool = False  # --serve-images: serve the folder's images by URL
    ray: str | None = None  # --ray [ADDRESS]: shards as Ray actors on that cluster


class _Where:
    """Names the place of a value for error messages: `file: [load] concurrency`."""

    def __init__(self, source: str, table: str = "") -> None:
        self.source = source
        self.table = table

    def sub(self, table: str) -> _Where:
        return _Where(self.source, f"{self.table}.{table}" if self.table else table)

    def error(self, key: str, message: str) -> ScenarioError:
        place = f"[{self.table}] {key}" if self.table else key
        return ScenarioError(f"{self.source}: {place}: {message}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: _Where, key: str) -> Any:
    """Check `value` against the field type `tp`; return it in the dataclass's representation."""
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
    elif origin in (types.UnionType, typing.Union):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and type(None) in get_args(tp):
            return None
        for arg in args:
            try:
                return _coerce(value, arg, where, key)
            except ScenarioError:
                continue
    elif origin is tuple:
        item_type = get_args(tp)[0]
        if isinstance(value, str) and item_type is str:
            value = [value]
        if isinstance(value, list):
            return tuple(_coerce(v, item_type, where, key) for v in value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -MAX_SEED - 1 <= value <= MAX_SEED:
                raise where.error(key, f"expected a 64-bit integer, got {value}")
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise where.error(key, f"expected a finite number, got {value}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            if "\x00" in value:
                raise where.error(key, "expected a string without NUL characters")
            return value
    else:
        raise TypeError(f"unsupported field type {tp!r}")
    raise where.error(key, f"expected {_type_name(tp)}, got {value!r}")


def _in_range(
    where: _Where, key: str, value: float, low: float, high: float, unit: str = ""
) -> None:
    """Refuse a value outside [low, high]; NaN fails every comparison, so it is refused too."""
    if not low <= value <= high:
        raise where.error(key, f"expected {_num(low)} to {_num(high)}{unit}, got {_num(value)}")


def _above_zero(where: _Where, key: str, value: float, high: float, unit: str = "") -> None:
    """Refuse a value outside (0, high]."""
    if not 0 < value <= high:
        raise where.error(
            key, f"expected more than 0 and at most {_num(high)}{unit}, got {_num(value)}"
        )


def _num(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and value < 1e16):
        return f"{int(value):,}"
    return f"{value:g}"


def _check_url(where: _Where, key: str, url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise where.error(key, f"expected an http:// or https:// URL, got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError as exc:
        raise where.error(key, f"not a valid URL ({exc}): {url!r}") from None
    if not parts.hostname:
        raise where.error(key, f"expected a host name in the URL, got {url!r}")
    if not url.isascii() or any(not c.isprintable() or c.isspace() for c in url):
        raise where.error(key, f"expected an ASCII URL without spaces, got {url!r}")


def _depth(value: Any) -> int:
    """How deeply tables and arrays nest (iteratively: a deep document must not recurse)."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        if isinstance(item, dict):
            todo.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            todo.extend((v, depth + 1) for v in item)
    return deepest


def _build(cls: type[Any], table: Mapping[str, Any], where: _Where, **fixed: Any) -> Any:
    """Build dataclass `cls` from a TOML table, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
    values: dict[str, Any] = dict(fixed)
    for key, value in table.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise where.error(key, f"unknown key{hint}; expected one of: {', '.join(names)}")
        values[key] = _coerce(value, hints[key], where, key)
    return cls(**values)


def _table(doc: Mapping[str, Any], key: str, where: _Where) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise where.error(key, f"expected a table ([{key}]), got {value!r}")
    return dict(value)


def _pairs(value: Any, where: _Where, key: str) -> tuple[tuple[str, Any], ...]:
    if not isinstance(value, dict):
        raise where.error(key, f"expected a table of names to values, got {value!r}")
    return tuple(sorted(value.items()))


def _parse_target(doc: Mapping[str, Any], where: _Where) -> TargetConfig:
    w = where.sub("target")
    table = _table(doc, "target", where)
    for alias, name in _TARGET_ALIASES.items():
        if alias in table:
            if name in table:
                raise w.error(alias, f"give either {alias!r} or {name!r}, not both")
            table[name] = table.pop(alias)
    headers = _pairs(table.pop("headers", {}), w, "headers")
    for name, value in headers:
        if not isinstance(value, str):
            raise w.error(f"headers.{name}", f"expected a string, got {value!r}")
        if not (name.isascii() and value.isascii()):
            # HTTP/1.1 header fields are bytes; transports differ on how to encode the rest.
            raise w.error(f"headers.{name}", f"expected ASCII text, got {name!r} = {value!r}")
        if name.lower() == "authorization":
            raise w.error(
                "headers.Authorization",
                "API keys never go in a scenario file: set api_key_env or api_key_file",
            )
    if "api_key" in table:
        raise w.error(
            "api_key", "API keys never go in a scenario file: set api_key_env or api_key_file"
        )
    target: TargetConfig = _build(TargetConfig, table, w, headers=headers)
    target = _check_api(target, w, api_given="api" in table, path_given="endpoint" in table)
    for url in target.urls:
        _check_url(w, "url", url)
    if not target.endpoint.startswith("/"):
        raise w.error("endpoint", f"expected a path starting with '/', got {target.endpoint!r}")
    _check_wire_text(target, w)
    for key in ("connect_timeout", "read_timeout", "scrape_interval"):
        _above_zero(w, key, getattr(target, key), MAX_SECONDS, " seconds")
    if target.request_timeout is not None:
        _above_zero(w, "request_timeout", target.request_timeout, MAX_SECONDS, " seconds")
    _in_range(w, "pool_size", target.pool_size, 0, MAX_STREAMS, " (0 = automatic)")
    return target


def _check_api(
    target: TargetConfig, where: _Where, *, api_given: bool, path_given: bool
) -> TargetConfig:
    """`api` names a registered endpoint; without it, the api served at `endpoint` (chat
    completions for any path loadgen has no other endpoint for); without `endpoint`, the api's
    path."""
    if not api_given:
        return dataclasses.replace(target, api=api_for_path(target.endpoint))
    if target.api not in ENDPOINTS:
        known = ", ".join(repr(name) for name in ENDPOINTS)
        raise where.error("api", f"unknown api {target.api!r}; expected one of: {known}")
    if not path_given:
        return dataclasses.replace(target, endpoint=ENDPOINTS[target.api].path)
    return target


def _check_wire_text(target: TargetConfig, where: _Where) -> None:
    """What goes onto the wire as is: a CR or LF in a header, the endpoint or a URL would end
    its line and start one of the value's choosing (header injection)."""
    for name, value in target.headers:
        problem = header_name_problem(name) or header_value_problem(value)
        if problem:
            raise where.error(f"headers.{name!r}", problem)
    for url in target.urls:
        problem = url_problem(url)
        if problem:
            raise where.error("url", f"{url!r}: {problem}")
    problem = url_problem(target.endpoint)
    if problem:
        raise where.error("endpoint", f"{target.endpoint!r}: {problem}")


def _check_path_name(where: _Where, key: str, name: str) -> None:
    """Names that become folder and file names (results folder, histogram logs)."""
    if not PATH_NAME.fullmatch(name):
        raise where.error(key, f"expected {PATH_NAME_RULE}, got {name!r}")


def _parse_workload(doc: Mapping[str, Any], where: _Where, base_dir: Path) -> WorkloadConfig:
    w = where.sub("workload")
    table = _table(doc, "workload", where)
    for alias, name in _WORKLOAD_ALIASES.items():
        if alias in table:
            if name in table:
                raise w.error(alias, f"give either {alias!r} or {name!r}, not both")
            table[name] = table.pop(alias)
    images_table = table.pop("images", {})
    if not isinstance(images_table, dict):
        raise w.error("images", f"expected a table ([workload.images]), got {images_table!r}")
    wi = w.sub("images")
    images = _parse_images(images_table, wi)
    if images.source not in DATASETS:
        known = ", ".join(repr(name) for name in DATASETS)
        raise wi.error("source", f"expected one of {known}, got {images.source!r}")
    dataset = _parse_dataset(table.pop("dataset", {}), images, w, base_dir)
    _check_serving(images, wi)
    if images.source == "folder":
        if not images.folder:
            raise wi.error("folder", "required when source = 'folder'")
        folder = Path(images.folder)
        if not folder.is_absolute():
            folder = base_dir / folder
        if not folder.is_dir():
            raise wi.error("folder", f"no such folder: {folder}")
        images = dataclasses.replace(images, folder=str(folder))
    for key in ("width", "height"):
        value = getattr(images, key)
        if not 1 <= value <= 16384:
            raise wi.error(key, f"expected 1 to 16384 pixels, got {value}")
    if not 1 <= images.quality <= 100:
        raise wi.error("quality", f"expected 1 to 100, got {images.quality}")
    _in_range(wi, "max_side", images.max_side, 0, 65_535, " pixels (0 = keep)")
    _in_range(wi, "pool_size", images.pool_size, 0, MAX_IMAGE_POOL, " (0 = fresh images)")
    if not 0.0 <= images.repeat_ratio < 1.0:
        raise wi.error("repeat_ratio", f"expected 0 <= ratio < 1, got {images.repeat_ratio}")
    if images.pool_size and images.repeat_ratio:
        raise wi.error("repeat_ratio", "give either pool_size or repeat_ratio, not both")

    extra = _pairs(table.pop("extra_body", {}), w, "extra_body")
    for key, value in extra:
        if key in RESERVED_BODY_KEYS:
            raise w.error(
                f"extra_body.{key}", "loadgen sets this itself: the body's structure and streaming"
            )
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError as exc:
            raise w.error(f"extra_body.{key}", f"cannot be sent as JSON: {exc}") from None
    table.update(_image_counts(table, w, images.source))
    workload: WorkloadConfig = _build(
        WorkloadConfig, table, w, images=images, dataset=dataset, extra_body=extra
    )
    _in_range(w, "images_per_request", workload.images_per_request, 0, MAX_IMAGES_PER_REQUEST)
    if not workload.prompts:
        raise w.error("prompts", "expected at least one prompt")
    _in_range(w, "max_tokens", workload.max_tokens, 1, MAX_TOKENS)
    if workload.min_tokens is not None and not 0 <= workload.min_tokens <= workload.max_tokens:
        raise w.error(
            "min_tokens",
            f"expected 0 to max_tokens ({workload.max_tokens}), got {workload.min_tokens}",
        )
    if workload.temperature < 0:
        raise w.error("temperature", f"expected 0 or more, got {workload.temperature}")
    _check_invalid(workload, w)
    return workload


def _parse_images(table: Mapping[str, Any], where: _Where) -> ImagesConfig:
    """`[workload.images]`, its `mix` resolved (each entry's format and content given)."""
    images: ImagesConfig = _build(
        ImagesConfig, {k: v for k, v in table.items() if k != "mix"}, where
    )
    given = table.get("mix", [])
    if given == []:  # a scenario written back says `mix = []` for none
        return images
    if images.source != "synthetic":
        raise where.error(
            "mix", f"mixes synthetic images: needs source = 'synthetic', not {images.source!r}"
        )
    default = ImagesConfig()
    for key in ("width", "height"):
        if key in table and getattr(images, key) != getattr(default, key):
            raise where.error(
                key, "each entry of the mix gives its size: leave width and height out"
            )
    try:
        mix = parse_mix(given, images.format, images.content)
    except ValueError as exc:
        raise where.error("mix", str(exc)) from None
    return dataclasses.replace(images, mix=mix_entries(mix))


def _image_counts(table: Mapping[str, Any], where: _Where, source: str) -> dict[str, Any]:
    """`images_per_request` as a range or weighted counts: the most a request carries, and the
    spec (`images_per_request_spec`, never written in a scenario file) to draw from."""
    if "images_per_request_spec" in table:
        raise where.error(
            "images_per_request_spec",
            "unknown key: write images_per_request = { min = A, max = B } or { count = weight, ... }",
        )
    value = table.get("images_per_request")
    if not isinstance(value, dict):
        return {}  # a whole number, checked as any other
    if source in ROW_SOURCES:
        raise where.error(
            "images_per_request", f"source = {source!r}: each row names its images (0: none)"
        )
    try:
        counts = parse_count(value, MAX_IMAGES_PER_REQUEST)
    except ValueError as exc:
        raise where.error("images_per_request", str(exc)) from None
    if len(set(counts.choices.values)) == 1:  # one count: a fixed number after all
        return {"images_per_request": counts.most}
    return {"images_per_request": counts.most, "images_per_request_spec": counts.spec}


def _check_invalid(workload: WorkloadConfig, where: _Where) -> None:
    """`invalid_share` is a share below 1, `invalid_kind` one or more known kinds."""
    if not 0.0 <= workload.invalid_share < 1.0:
        raise where.error(
            "invalid_share", f"expected 0 <= share < 1, got {_num(workload.invalid_share)}"
        )
    kinds = workload.invalid_kind
    known = ", ".join(repr(k) for k in INVALID_KINDS)
    if not kinds:
        raise where.error("invalid_kind", f"expected one or more of {known}")
    for kind in kinds:
        if kind not in INVALID_KINDS:
            raise where.error("invalid_kind", f"expected one or more of {known}, got {kind!r}")
    if len(set(kinds)) != len(kinds):
        raise where.error("invalid_kind", f"a kind is given twice: {list(kinds)}")


def _check_endpoint(
    workload: WorkloadConfig, target: TargetConfig, where: _Where, api_where: _Where
) -> None:
    """What the target's endpoint cannot send: images to a text endpoint, what its `template`
    cannot write (a system prompt in a text completion)."""
    if workload.images_per_request and not ENDPOINTS[target.api].accepts_images:
        raise where.error("images_per_request", f"api {target.api!r} takes no images: set it to 0")
    _check_invalid_api(workload, target.api, where)
    try:
        ENDPOINTS[target.api].template(workload, "", workload.max_tokens)
    except ValueError as exc:
        raise api_where.error("api", f"{target.api!r}: {exc}") from None


def _phase_workloads(
    doc: Mapping[str, Any],
    phases: tuple[PhaseConfig, ...],
    workload: WorkloadConfig,
    where: _Where,
    base_dir: Path | None,
) -> tuple[PhaseConfig, ...]:
    """Each phase's `[phases.workload]`: the scenario's `[workload]` table with the keys it
    gives (PHASE_WORKLOAD_KEYS, and PHASE_IMAGE_KEYS in its `images`), validated as a whole.
    A phase whose workload comes out as the scenario's keeps None."""
    raw_phases = doc.get("phases", [])
    if not raw_phases:
        return phases
    base = _canonical(_table(doc, "workload", where), where.sub("workload"))
    out = []
    for number, (phase, raw) in enumerate(zip(phases, raw_phases, strict=True), start=1):
        wp = _Where(where.source, f"phases #{number}")
        if "workload" not in raw:
            out.append(phase)
            continue
        ww = wp.sub("workload")
        table = _canonical(_table(raw, "workload", wp), ww)
        if phase.repeat_of:
            raise wp.error(
                "workload",
                f"a replay sends the requests of {phase.repeat_of!r} as they were: it takes no "
                "workload of its own",
            )
        images = table.pop("images", {})
        if not isinstance(images, dict):
            raise ww.error("images", f"expected a table, got {images!r}")
        for given, keys, at in (
            (table, PHASE_WORKLOAD_KEYS, ww),
            (images, PHASE_IMAGE_KEYS, ww.sub("images")),
        ):
            for name in given:
                if name not in keys:
                    allowed = ", ".join(keys)
                    raise at.error(name, f"a phase cannot change this; it may change: {allowed}")
        merged = {**base, **table}
        merged["images"] = {**dict(base.get("images", {})), **images}
        own = _parse_workload({"workload": merged}, wp, base_dir or Path.cwd())
        out.append(dataclasses.replace(phase, workload=None if own == workload else own))
    return tuple(out)


def _canonical(table: dict[str, Any], where: _Where) -> dict[str, Any]:
    """A workload table with its aliases (`prompt`) under their names."""
    for alias, name in _WORKLOAD_ALIASES.items():
        if alias in table:
            if name in table:
                raise where.error(alias, f"give either {alias!r} or {name!r}, not both")
            table[name] = table.pop(alias)
    return table


def _check_invalid_api(workload: WorkloadConfig, api: str, where: _Where) -> None:
    """Broken images need an endpoint that takes images."""
    if not workload.invalid_share or ENDPOINTS[api].accepts_images:
        return
    images = [k for k in workload.invalid_kind if k in INVALID_IMAGE_KINDS]
    if images:
        raise where.error(
            "invalid_kind",
            f"api {api!r} takes no images: {images[0]!r} cannot be sent; use "
            "'min_tokens_above_max'",
        )


def _parse_dataset(
    table: Any, images: ImagesConfig, where: _Where, base_dir: Path
) -> DatasetConfig:
    """`[workload.dataset]`: the file of a row dataset (`source = "jsonl"` or `"hf"`), its
    path made relative to the scenario file's folder; read and checked when the run makes the
    dataset."""
    wd = where.sub("dataset")
    wi = where.sub("images")
    if not isinstance(table, dict):
        raise where.error("dataset", f"expected a table ([workload.dataset]), got {table!r}")
    source = images.source
    dataset: DatasetConfig = _build(DatasetConfig, table, wd)
    # A key at its default says nothing (a scenario written back holds every key).
    default = DatasetConfig()
    given = [k for k in table if getattr(dataset, k) != getattr(default, k)]
    if source not in ROW_SOURCES:
        if given:
            rows = " or ".join(repr(s) for s in ROW_SOURCES)
            raise wd.error(given[0], f"applies to source = {rows}, not {source!r}")
        return default
    if source == "jsonl":
        hf_only = [k for k in given if k in HF_ONLY_KEYS]
        if hf_only:
            raise wd.error(hf_only[0], "applies to source = 'hf' only (a jsonl line names its own)")
    for key in ("pool_size", "repeat_ratio"):
        if getattr(images, key):
            raise wi.error(key, f"does not apply to source = {source!r}: the rows name the images")
    if not dataset.path:
        raise wd.error("path", f"required when source = {source!r}")
    path = Path(dataset.path)
    if not path.is_absolute():
        path = base_dir / path
    if source == "jsonl" and not path.is_file():
        raise wd.error("path", f"no such file: {path}")
    if source == "hf":
        if not path.exists():
            raise wd.error("path", f"no such file or folder: {path}")
        if importlib.util.find_spec("datasets") is None:
            raise wd.error("path", f"source = 'hf' needs {HF_INSTALL}")
    _in_range(wd, "limit", dataset.limit, 0, MAX_REQUESTS, " rows (0 = all)")
    return dataclasses.replace(dataset, path=str(path))


def _check_serving(images: ImagesConfig, where: _Where, flag: str = "") -> None:
    """Folder images named by URL (`url_base`) or served by loadgen (`serve`)."""
    serve_key = flag or "serve"
    if not (images.serve or images.url_base):
        if images.serve_host:
            raise where.error("serve_host", "names the image server's host: set serve = true")
        return
    key = serve_key if images.serve else "url_base"
    if images.source != "folder":
        raise where.error(
            key, f"serves a folder's files: needs source = 'folder', not {images.source!r}"
        )
    if images.max_side:
        raise where.error(key, "the files go by URL as they are: max_side cannot shrink them")
    if images.serve and images.url_base:
        raise where.error("url_base", "is set by the run when it serves the folder: give either")
    if images.url_base:
        _check_url(where, "url_base", images.url_base)
        problem = url_problem(images.url_base)
        if problem:
            raise where.error("url_base", f"{images.url_base!r}: {problem}")
    host = images.serve_host
    if host and (not host.isascii() or any(c in host for c in "/@?#[] \t\r\n")):
        raise where.error("serve_host", f"expected a host name or IP address, got {host!r}")


def _check_load(load: LoadConfig, where: _Where, *, bounded: bool = True) -> None:
    """Every value of a phase's load in range. Command-line overrides come here unchecked by the
    TOML types, so NaN and infinities are refused here too (they fail every range test)."""
    if load.mode == "closed":
        _in_range(where, "concurrency", load.concurrency, 1, MAX_STREAMS, " streams")
    else:
        if load.rate == math.inf:
            # vLLM's benchmark sends every request at once for an infinite rate: here that is a
            # closed loop of one request a stream.
            raise where.error(
                "rate",
                "an infinite rate sends every request at once: use mode = 'closed' "
                "with concurrency = requests (--mode closed --concurrency N --requests N)",
            )
        if not 0 < load.rate <= MAX_RATE:
            raise where.error(
                "rate",
                f"mode {load.mode!r} needs rate > 0 requests/s, at most {_num(MAX_RATE)}, "
                f"got {_num(load.rate)}",
            )
        _in_range(where, "max_concurrency", load.max_concurrency, 0, MAX_STREAMS, " (0 = no cap)")
    _in_range(where, "burstiness", load.burstiness, 1 / MAX_BURSTINESS, MAX_BURSTINESS)
    for key in ("ramp_up", "duration"):
        _in_range(where, key, getattr(load, key), 0, MAX_SECONDS, " seconds")
    if load.drain_timeout is not None:
        _in_range(where, "drain_timeout", load.drain_timeout, 0, MAX_SECONDS, " seconds")
    for key in ("requests", "warmup_requests"):
        _in_range(where, key, getattr(load, key), 0, MAX_REQUESTS, " a phase")
    if load.mode != "closed" and not load.requests and load.duration:
        # The payloads of an open loop bounded by time are built before it, for as many
        # requests as its arrivals can reach.
        planned = schedule.arrival_bound(load) or 0
        if planned > MAX_REQUESTS:
            raise where.error(
                "duration",
                f"rate {_num(load.rate)}/s for {_num(load.duration)} s plans up to "
                f"{_num(planned)} requests, over the limit of {_num(MAX_REQUESTS)} a phase: "
                "lower either, set requests, or split the load into phases",
            )
    if bounded and load.requests == 0 and load.duration == 0:
        raise where.error("requests", "set requests and/or duration: a run must be bounded")
    if bounded and load.drain_timeout is not None and load.duration == 0:
        raise where.error("drain_timeout", "bounds the wait after `duration`; set duration too")


def _parse_phases(doc: Mapping[str, Any], where: _Where) -> tuple[PhaseConfig, ...]:
    base_table = _table(doc, "load", where)
    wl = where.sub("load")
    base: LoadConfig = _build(LoadConfig, base_table, wl)
    raw_phases = doc.get("phases", [])
    if not isinstance(raw_phases, list) or not all(isinstance(p, dict) for p in raw_phases):
        raise where.error("phases", "expected an array of tables ([[phases]])")
    if not raw_phases:
        _check_load(base, wl, bounded=False)
        return (PhaseConfig(name="main", load=base),)
    phases: list[PhaseConfig] = []
    load_keys = {f.name for f in dataclasses.fields(LoadConfig)}
    for number, raw in enumerate(raw_phases, start=1):
        wp = _Where(where.source, f"phases #{number}")
        raw = dict(raw)
        name = raw.pop("name", None)
        if not isinstance(name, str) or not name or name == WARMUP:
            raise wp.error("name", f"expected a unique phase name (not {WARMUP!r}), got {name!r}")
        _check_path_name(wp, "name", name)
        repeat_of = raw.pop("repeat_of", "")
        raw.pop("workload", None)  # read by _phase_workloads
        if not isinstance(repeat_of, str):
            raise wp.error("repeat_of", f"expected a phase name, got {repeat_of!r}")
        unknown = set(raw) - load_keys
        if unknown:
            key = sorted(unknown)[0]
            allowed = ", ".join(["name", "repeat_of", "workload", *sorted(load_keys)])
            raise wp.error(key, f"unknown key; expected one of: {allowed}")
        merged = {**base_table, **raw}
        load: LoadConfig = _build(LoadConfig, merged, wp)
        _check_load(load, wp, bounded=False)
        if name in {p.name for p in phases}:
            raise wp.error("name", f"phase {name!r} is defined twice")
        if repeat_of and repeat_of not in {p.name for p in phases}:
            raise wp.error("repeat_of", f"expected the name of an earlier phase, got {repeat_of!r}")
        phases.append(PhaseConfig(name=name, load=load, repeat_of=repeat_of))
    return tuple(phases)


def parse_scenario(doc: Mapping[str, Any], source: str, base_dir: Path | None = None) -> Scenario:
    """Validate a parsed TOML document. `source` names it in error messages."""
    where = _Where(source)
    if _depth(doc) > MAX_DEPTH:
        raise ScenarioError(f"{source}: tables and arrays nest deeper than {MAX_DEPTH} levels")
    for key in doc:
        if key not in _TOP_LEVEL:
            close = difflib.get_close_matches(key, _TOP_LEVEL, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise where.error(key, f"unknown key{hint}; expected one of: {', '.join(_TOP_LEVEL)}")
    # The name names the results folder: a file name is made safe, a given name must be.
    name = doc.get("name", path_name(Path(source).stem or "scenario"))
    if not isinstance(name, str) or not name:
        raise where.error("name", f"expected a non-empty string, got {name!r}")
    _check_path_name(where, "name", name)
    seed = doc.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise where.error("seed", f"expected an integer from 0 to {MAX_SEED}, got {seed!r}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise where.error("description", f"expected a string, got {description!r}")
    slo: SloConfig = _build(SloConfig, _table(doc, "slo", where), where.sub("slo"))
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        _in_range(where.sub("slo"), key, getattr(slo, key), 0, MAX_MILLISECONDS, " ms (0 = none)")
    output: OutputConfig = _build(OutputConfig, _table(doc, "output", where), where.sub("output"))
    _in_range(where.sub("output"), "window", output.window, MIN_WINDOW, MAX_SECONDS, " seconds")
    _above_zero(where.sub("output"), "progress_interval", output.progress_interval, MAX_SECONDS)
    distributed = _parse_distributed(doc, where)
    target = _parse_target(doc, where)
    workload = _parse_workload(doc, where, base_dir or Path.cwd())
    _check_endpoint(workload, target, where.sub("workload"), where.sub("target"))
    phases = _phase_workloads(doc, _parse_phases(doc, where), workload, where, base_dir)
    for number, phase in enumerate(phases, start=1):
        if phase.workload is not None:
            wp = _Where(where.source, f"phases #{number}.workload")
            _check_endpoint(phase.workload, target, wp, wp)
    return Scenario(
        name=name,
        source=source,
        seed=seed,
        description=description,
        target=target,
        workload=workload,
        phases=phases,
        slo=slo,
        output=output,
        distributed=distributed,
    )


def _parse_distributed(doc: Mapping[str, Any], where: _Where) -> DistributedConfig:
    w = where.sub("distributed")
    cfg: DistributedConfig = _build(DistributedConfig, _table(doc, "distributed", where), w)
    _check_ray_address(w, "address", cfg.address)
    _in_range(w, "workers", cfg.workers, 0, MAX_SHARDS, " (0 = as many as the backend's rule)")
    _in_range(w, "workers_per_node", cfg.workers_per_node, 1, MAX_SHARDS)
    _above_zero(w, "num_cpus", cfg.num_cpus, MAX_ACTOR_CPUS)
    return cfg


def _check_ray_address(where: _Where, key: str, address: str) -> None:
    """A Ray address as `ray.init` takes it: "auto", "local", HOST:PORT or ray://HOST:PORT."""
    if (
        not address
        or len(address) > 255
        or not address.isascii()
        or any(not c.isprintable() or c.isspace() for c in address)
    ):
        raise where.error(
            key, f"expected 'auto', 'local' or HOST:PORT of a Ray head, got {address!r}"
        )


def load_scenario(path: str | os.PathLike[str], overrides: Overrides | None = None) -> Scenario:
    """Read a scenario file, apply command-line overrides, and validate the result."""
    p = Path(path)
    text = read_text_file(p, "scenario file")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{p}: tables and arrays nest too deeply") from None
    return apply_overrides(parse_scenario(doc, str(p), base_dir=p.parent), overrides or Overrides())


def read_text_file(path: Path, what: str, limit: int = MAX_FILE_BYTES) -> str:
    """A small UTF-8 text file, whole: only a regular file (never a device or a pipe that would be
    read forever), at most `limit` bytes; a byte-order mark, as some editors write, is dropped."""
    try:
        with path.open("rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ScenarioError(f"{path}: not a regular file")
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such {what}") from None
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    if len(data) > limit:
        raise ScenarioError(f"{path}: larger than the limit of {_num(limit)} bytes for a {what}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text: {exc}") from None


def scenario_from_flags(overrides: Overrides) -> Scenario:
    """The scenario of a run given by flags alone (`loadgen run` without a scenario file): the
    built-in defaults (those of a scenario file with no keys), then the flags, validated as any
    override; named `FLAGS_SCENARIO`. Like a file, it must bound the run."""
    if overrides.requests is None and overrides.duration is None:
        raise ScenarioError(
            "without a scenario file, bound the run with --requests N and/or --duration S "
            "(e.g. loadgen run --requests 100 --concurrency 8), or give a scenario file "
            "(e.g. scenarios/smoke.toml)"
        )
    base = parse_scenario({"name": FLAGS_SCENARIO}, "", Path.cwd())
    return apply_overrides(base, overrides)


def apply_overrides(scenario: Scenario, o: Overrides) -> Scenario:
    """Apply command-line overrides, validated like the file's own values. An error names the
    flag (`command line: --image-size: ...`), or, for a phase's load, which the flags and the file
    make together, the table and key."""
    where = _Where("command line")
    name = scenario.name
    if o.name is not None:
        _check_path_name(where, "--name", o.name)
        name = o.name
    target = _override_target(scenario.target, o, where)
    workload = _override_workload(scenario.workload, o, where)
    if workload.images_per_request and not ENDPOINTS[target.api].accepts_images:
        raise where.error(
            "--images-per-request",
            f"api {target.api!r} takes no images: set --images-per-request 0",
        )
    _check_invalid_api(workload, target.api, where.sub("workload"))
    output = scenario.output
    if o.output is not None:
        output = dataclasses.replace(output, directory=o.output)
    if o.window is not None:
        _in_range(where, "--window", o.window, MIN_WINDOW, MAX_SECONDS, " seconds")
        output = dataclasses.replace(output, window=o.window)
    if o.progress is not None:
        output = dataclasses.replace(output, progress=o.progress)
    seed = scenario.seed if o.seed is None else o.seed
    _in_range(where, "--seed", seed, 0, MAX_SEED)
    phases = _override_phases(scenario, o, where)
    phases = _rebase_phases(phases, scenario.workload, workload, target, where)
    distributed = scenario.distributed
    if o.ray is not None:
        _check_ray_address(where, "--ray", o.ray)
        distributed = dataclasses.replace(distributed, backend="ray", address=o.ray)
    return dataclasses.replace(
        scenario,
        distributed=distributed,
        name=name,
        target=target,
        workload=workload,
        phases=phases,
        output=output,
        seed=seed,
    )


def _override_target(target: TargetConfig, o: Overrides, where: _Where) -> TargetConfig:
    if o.urls is not None:
        for url in o.urls:
            _check_url(where, "--url", url)
            problem = url_problem(url)
            if problem:
                raise where.error("--url", f"{url!r}: {problem}")
        target = dataclasses.replace(target, urls=tuple(u.rstrip("/") for u in o.urls))
    if o.model is not None:
        if "\x00" in o.model:
            raise where.error("--model", "expected a name without NUL characters")
        target = dataclasses.replace(target, model=o.model)
    if o.api_key_file is not None:
        target = dataclasses.replace(target, api_key_file=o.api_key_file)
    if o.insecure:
        target = dataclasses.replace(target, verify_tls=False)
    if o.api is not None or o.endpoint is not None:
        target = _override_api(target, o.api, o.endpoint, where)
    return target


def _override_api(
    target: TargetConfig, api: str | None, endpoint: str | None, where: _Where
) -> TargetConfig:
    """`--api` and `--endpoint` as the scenario's `api` and `endpoint`: an api alone is sent to
    its own path; a path alone keeps the scenario's api, unless the path is another registered
    api's (`--endpoint /v1/completions` means completions)."""
    if api is not None and api not in ENDPOINTS:
        known = ", ".join(repr(name) for name in ENDPOINTS)
        raise where.error("--api", f"unknown api {api!r}; expected one of: {known}")
    if endpoint is not None:
        if not endpoint.startswith("/"):
            raise where.error("--endpoint", f"expected a path starting with '/', got {endpoint!r}")
        problem = url_problem(endpoint)
        if problem:
            raise where.error("--endpoint", f"{endpoint!r}: {problem}")
    if api is not None:
        path = endpoint if endpoint is not None else ENDPOINTS[api].path
        return dataclasses.replace(target, api=api, endpoint=path)
    assert endpoint is not None
    served = {e.path: name for name, e in ENDPOINTS.items()}
    return dataclasses.replace(target, endpoint=endpoint, api=served.get(endpoint, target.api))


def _override_workload(workload: WorkloadConfig, o: Overrides, where: _Where) -> WorkloadConfig:
    changes: dict[str, Any] = {"images": _override_images(workload.images, o, where)}
    if o.prompts is not None:
        changes["prompts"] = _coerce(list(o.prompts), tuple[str, ...], where, "--prompt")
        if not o.prompts:
            raise where.error("--prompt", "expected at least one prompt")
    if o.system_prompt is not None:
        changes["system_prompt"] = _coerce(o.system_prompt, str, where, "--system-prompt")
    if o.images_per_request is not None:
        _in_range(where, "--images-per-request", o.images_per_request, 0, MAX_IMAGES_PER_REQUEST)
        changes["images_per_request"] = o.images_per_request
        changes["images_per_request_spec"] = ""  # the flag's fixed count replaces a range
    if o.temperature is not None:
        temperature = _coerce(o.temperature, float, where, "--temperature")
        if temperature < 0:
            raise where.error("--temperature", f"expected 0 or more, got {temperature}")
        changes["temperature"] = temperature
    if o.ignore_eos is not None:
        changes["ignore_eos"] = o.ignore_eos
    max_tokens = workload.max_tokens
    if o.max_tokens is not None:
        _in_range(where, "--max-tokens", o.max_tokens, 1, MAX_TOKENS)
        max_tokens = changes["max_tokens"] = o.max_tokens
    if o.min_tokens is not None:
        if not 0 <= o.min_tokens <= max_tokens:
            raise where.error(
                "--min-tokens", f"expected 0 to max_tokens ({max_tokens}), got {o.min_tokens}"
            )
        changes["min_tokens"] = o.min_tokens
    elif workload.min_tokens is not None and workload.min_tokens > max_tokens:
        changes["min_tokens"] = max_tokens  # the file's floor, lowered to a smaller --max-tokens
    workload = dataclasses.replace(workload, **changes)
    if o.serve_images:
        images = dataclasses.replace(workload.images, serve=True, url_base="")
        _check_serving(images, where, "--serve-images")
        workload = dataclasses.replace(workload, images=images)
    return workload


def _override_images(images: ImagesConfig, o: Overrides, where: _Where) -> ImagesConfig:
    synthetic = {
        "--image-size": o.image_size,
        "--image-format": o.image_format,
        "--image-content": o.image_content,
    }
    given = [flag for flag, value in synthetic.items() if value is not None]
    if given and images.source != "synthetic":
        raise where.error(
            given[0],
            f"sets synthetic images, but the scenario's come from source {images.source!r}",
        )
    if given and images.mix:
        raise where.error(given[0], "the scenario's images are a mix: change its entries there")
    changes: dict[str, Any] = {}
    if o.image_size is not None:
        width, height = o.image_size
        if not (1 <= width <= 16384 and 1 <= height <= 16384):
            raise where.error(
                "--image-size", f"expected 1 to 16384 pixels a side, got {width}x{height}"
            )
        changes.update(width=width, height=height)
    if o.image_format is not None:
        changes["format"] = _coerce(o.image_format, ImageFormat, where, "--image-format")
    if o.image_content is not None:
        changes["content"] = _coerce(o.image_content, ImageContent, where, "--image-content")
    if o.image_pool is not None:
        _in_range(where, "--image-pool", o.image_pool, 0, MAX_IMAGE_POOL, " (0 = fresh images)")
        if o.image_pool and images.repeat_ratio:
            raise where.error(
                "--image-pool", "the scenario sets repeat_ratio: give either pool_size or it"
            )
        changes["pool_size"] = o.image_pool
    return dataclasses.replace(images, **changes)


def _override_phases(scenario: Scenario, o: Overrides, where: _Where) -> tuple[PhaseConfig, ...]:
    if o.mode is not None and o.mode not in get_args(LoadMode):
        raise where.error("--mode", "expected closed, constant, poisson or gamma")
    if o.rate is not None and o.mode == "closed":
        raise where.error("--rate", "a rate needs an open-loop --mode")
    # A bound may come from the file or from the command line: name both.
    if not scenario.source:
        source = "command line" if o != Overrides() else "scenario"
    else:
        source = scenario.source
        if o != Overrides():
            source += " (with command-line overrides)"
    phases = []
    for phase in scenario.phases:
        load = phase.load
        if o.mode is not None:
            load = dataclasses.replace(load, mode=typing.cast(Any, o.mode))
        if o.rate is not None:
            mode = load.mode if load.mode != "closed" else "poisson"
            load = dataclasses.replace(load, rate=o.rate, mode=mode)
        if o.concurrency is not None:
            # Closed loop: the number of streams. Open loop: the cap on requests in flight.
            if load.mode == "closed":
                load = dataclasses.replace(load, concurrency=o.concurrency)
            else:
                load = dataclasses.replace(load, max_concurrency=o.concurrency)
        bounds: dict[str, Any] = {
            "requests": o.requests,
            "duration": o.duration,
            "warmup_requests": o.warmup_requests,
        }
        load = dataclasses.replace(load, **{k: v for k, v in bounds.items() if v is not None})
        table = "load" if phase.name == "main" else f"phases {phase.name}"
        _check_load(load, _Where(source, table))
        phases.append(dataclasses.replace(phase, load=load))
    return tuple(phases)


def scenario_to_json(scenario: Scenario) -> dict[str, Any]:
    """The scenario as resolved, for summary.json and a worker's job. Holds no secret: keys are
    never in it. `scenario_from_json` reads it back into an equal `Scenario`."""
    return config_to_json(scenario)


def scenario_from_json(doc: Any) -> Scenario:
    """`scenario_to_json` read back; every key and type checked (raises ScenarioError)."""
    return config_from_json(Scenario, doc)


def config_to_json(obj: Any) -> dict[str, Any]:
    """A frozen config dataclass (`Scenario` or any of its parts, a shard's job) as plain JSON
    values. Name/value pair fields (headers, extra_body) become objects; tuples become lists."""
    hints = _hints(type(obj))
    return {
        f.name: _field_to_json(getattr(obj, f.name), hints[f.name]) for f in dataclasses.fields(obj)
    }


def config_from_json(cls: type[_T], doc: Any, where: _Where | None = None) -> _T:
    """`config_to_json` read back into `cls`: unknown keys and wrong types are refused (the
    document may come from another process or host), missing keys take the field's default."""
    where = where or _Where(f"{cls.__name__} JSON")
    if not isinstance(doc, dict):
        place = f"[{where.table}]" if where.table else "the document"
        raise ScenarioError(f"{where.source}: {place}: expected an object, got {doc!r:.80}")
    hints = _hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in hints:
            names = ", ".join(f.name for f in fields)
            raise where.error(key, f"unknown key; expected one of: {names}")
        values[key] = _field_from_json(value, hints[key], where, key)
    for f in fields:
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in values and no_default:
            raise where.error(f.name, "missing")
    return cls(**values)


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _optional_dataclass(tp: Any) -> Any:
    """For a field `SomeConfig | None`: SomeConfig; else None."""
    if get_origin(tp) in (types.UnionType, typing.Union):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def _pair_type(tp: Any) -> Any:
    """For a field of name/value pairs (`tuple[tuple[str, V], ...]`): V; else None."""
    if get_origin(tp) is tuple:
        item = get_args(tp)[0]
        if get_origin(item) is tuple and get_args(item)[:1] == (str,) and len(get_args(item)) == 2:
            return get_args(item)[1]
    return None


def _field_to_json(value: Any, tp: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_json(value)
    if _pair_type(tp) is not None:
        return {name: _jsonable(v) for name, v in value}
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        return [config_to_json(v) for v in value]
    return _jsonable(value)


def _field_from_json(value: Any, tp: Any, where: _Where, key: str) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return config_from_json(tp, value, where.sub(key))
    optional = _optional_dataclass(tp)
    if optional is not None:
        return None if value is None else config_from_json(optional, value, where.sub(key))
    pair_type = _pair_type(tp)
    if pair_type is not None:
        if not isinstance(value, dict):
            raise where.error(key, f"expected an object of names to values, got {value!r:.80}")
        if pair_type is object:  # any JSON value (extra_body), kept as it is
            return tuple(value.items())
        return tuple((k, _coerce(v, pair_type, where, f"{key}.{k}")) for k, v in value.items())
    if get_origin(tp) is tuple:
        item = get_args(tp)[0]
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            if not isinstance(value, list):
                raise where.error(key, f"expected a list, got {value!r:.80}")
            return tuple(
                config_from_json(item, v, where.sub(f"{key} #{n}"))
                for n, v in enumerate(value, start=1)
            )
    return _coerce(value, tp, where, key)


def _jsonable(value: Any) -> Any:
    """A value as JSON holds it: tuples become lists; nothing else changes shape (a list of
    [name, value] pairs stays a list)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _rebase_phases(
    phases: tuple[PhaseConfig, ...],
    old: WorkloadConfig,
    new: WorkloadConfig,
    target: TargetConfig,
    where: _Where,
) -> tuple[PhaseConfig, ...]:
    """The phases' own workloads over the scenario's workload as the flags changed it: what a
    phase changed it keeps, the rest follows the flags."""
    out = []
    for phase in phases:
        own = phase.workload
        if own is not None:
            own = _rebase(own, old, new)
            if own.min_tokens is not None and own.min_tokens > own.max_tokens:
                raise where.error(
                    f"phase {phase.name!r}",
                    f"min_tokens {own.min_tokens} is over its max_tokens {own.max_tokens}",
                )
            _check_endpoint(own, target, where, where)
            phase = dataclasses.replace(phase, workload=None if own == new else own)
        out.append(phase)
    return tuple(out)


def _rebase(own: Any, old: Any, new: Any) -> Any:
    """`new` with the fields where `own` differs from `old` (dataclasses, recursively)."""
    changes = {}
    for f in dataclasses.fields(own):
        mine, was, now = getattr(own, f.name), getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(mine):
            changes[f.name] = _rebase(mine, was, now)
        else:
            changes[f.name] = mine if mine != was else now
    return dataclasses.replace(new, **changes)
