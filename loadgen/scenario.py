"""Scenario files: TOML in, a validated `Scenario` out.

Every problem is reported before any request is sent, as one message naming the file, the key
and what was expected. Command-line overrides go through the same validation.
"""

from __future__ import annotations

import dataclasses
import difflib
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
    RESERVED_BODY_KEYS,
    WARMUP,
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
)


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
    images: ImagesConfig = _build(ImagesConfig, images_table, wi)
    if images.source not in DATASETS:
        known = ", ".join(repr(name) for name in DATASETS)
        raise wi.error("source", f"expected one of {known}, got {images.source!r}")
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
    workload: WorkloadConfig = _build(WorkloadConfig, table, w, images=images, extra_body=extra)
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
    return workload


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
        if not isinstance(repeat_of, str):
            raise wp.error("repeat_of", f"expected a phase name, got {repeat_of!r}")
        unknown = set(raw) - load_keys
        if unknown:
            key = sorted(unknown)[0]
            allowed = ", ".join(["name", "repeat_of", *sorted(load_keys)])
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
    target = _parse_target(doc, where)
    workload = _parse_workload(doc, where, base_dir or Path.cwd())
    if workload.images_per_request and not ENDPOINTS[target.api].accepts_images:
        raise where.sub("workload").error(
            "images_per_request", f"api {target.api!r} takes no images: set it to 0"
        )
    try:  # what the endpoint cannot write (a system prompt in a text completion)
        ENDPOINTS[target.api].template(workload, "", workload.max_tokens)
    except ValueError as exc:
        raise where.sub("target").error("api", f"{target.api!r}: {exc}") from None
    return Scenario(
        name=name,
        source=source,
        seed=seed,
        description=description,
        target=target,
        workload=workload,
        phases=_parse_phases(doc, where),
        slo=slo,
        output=output,
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


def apply_overrides(scenario: Scenario, o: Overrides) -> Scenario:
    """Apply command-line overrides, validated like the file's own values."""
    where = _Where("command line")
    target = scenario.target
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

    workload = scenario.workload
    if o.max_tokens is not None:
        _in_range(where, "--max-tokens", o.max_tokens, 1, MAX_TOKENS)
        min_tokens = workload.min_tokens
        if min_tokens is not None and min_tokens > o.max_tokens:
            min_tokens = o.max_tokens
        workload = dataclasses.replace(workload, max_tokens=o.max_tokens, min_tokens=min_tokens)

    phases = []
    for phase in scenario.phases:
        load = phase.load
        if o.mode is not None:
            if o.mode not in get_args(LoadMode):
                raise where.error("--mode", "expected closed, constant, poisson or gamma")
            load = dataclasses.replace(load, mode=typing.cast(Any, o.mode))
        if o.rate is not None:
            mode = load.mode if load.mode != "closed" else "poisson"
            if o.mode == "closed":
                raise where.error("--rate", "a rate needs an open-loop --mode")
            load = dataclasses.replace(load, rate=o.rate, mode=mode)
        if o.concurrency is not None:
            # Closed loop: the number of streams. Open loop: the cap on requests in flight.
            if load.mode == "closed":
                load = dataclasses.replace(load, concurrency=o.concurrency)
            else:
                load = dataclasses.replace(load, max_concurrency=o.concurrency)
        if o.requests is not None:
            load = dataclasses.replace(load, requests=o.requests)
        if o.duration is not None:
            load = dataclasses.replace(load, duration=o.duration)
        # A bound may come from the file or from the command line: name both.
        source = scenario.source or "scenario"
        if o != Overrides():
            source += " (with command-line overrides)"
        table = "load" if phase.name == "main" else f"phases {phase.name}"
        _check_load(load, _Where(source, table))
        phases.append(dataclasses.replace(phase, load=load))

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
    return dataclasses.replace(
        scenario,
        target=target,
        workload=workload,
        phases=tuple(phases),
        output=output,
        seed=seed,
    )


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
