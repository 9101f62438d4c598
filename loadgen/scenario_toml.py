"""A resolved scenario written back as a scenario file (`--save-scenario`): TOML that
`loadgen.scenario` reads into an equal `Scenario`, so a run made from flags can be replayed and
diffed. Every key is written, defaults included: the file says everything the run did.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loadgen.config import PHASE_IMAGE_KEYS, PHASE_WORKLOAD_KEYS, Scenario
from loadgen.datasets.mix import spec_value
from loadgen.errors import LoadgenError
from loadgen.scenario import scenario_to_json

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_FREE_TABLES = frozenset({"headers", "extra_body"})
_INLINE_TABLES = frozenset({"images_per_request"})  # a value that may be a table, kept in line
_HEADER = "# Written by loadgen: the scenario of a run, every key given (defaults too).\n"


class TomlWriteError(LoadgenError):
    """A value a scenario file cannot hold (TOML has no null)."""


def scenario_to_toml(scenario: Scenario) -> str:
    doc = scenario_to_json(scenario)
    doc.pop("source")
    _image_counts(doc["workload"])
    phases = doc.pop("phases")
    lines = [_HEADER.rstrip("\n")]
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in doc.items():
        if isinstance(value, dict) and key != "extra_body":
            tables.append((key, value))
        else:
            lines += _pair(key, value, key)
    for name, table in tables:
        lines += _table(name, table)
    for phase in phases:
        load = phase.pop("load")
        own = phase.pop("workload", None)
        lines += ["", "[[phases]]"]
        for key, value in {**phase, **load}.items():
            if key == "repeat_of" and not value:
                continue
            lines += _pair(key, value, f"phases.{key}")
        if own is not None:
            lines += _phase_workload(own, doc["workload"])
    return "\n".join(lines) + "\n"


def _phase_workload(own: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    """A phase's own workload as the keys it changes of the scenario's (`[phases.workload]`)."""
    own = dict(own)
    _image_counts(own)  # images per request compared as written: a number or its spec
    table = {k: own[k] for k in PHASE_WORKLOAD_KEYS if own[k] != base[k]}
    images = {
        k: own["images"][k] for k in PHASE_IMAGE_KEYS if own["images"][k] != base["images"][k]
    }
    if images:
        table["images"] = images
    return _table("phases.workload", table)


def save_scenario(scenario: Scenario, path: str | os.PathLike[str]) -> Path:
    """Write `scenario` as a new scenario file at `path`. An existing file is never replaced:
    a saved scenario is the record of a run, and a slip of the keyboard must not lose one."""
    text = scenario_to_toml(scenario)
    p = Path(path)
    try:
        with p.open("x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise LoadgenError(f"{p} exists: remove it or name another file") from None
    except OSError as exc:
        raise LoadgenError(f"cannot write {p}: {exc.strerror or exc}") from None
    return p


def _image_counts(workload: dict[str, Any]) -> None:
    """A range or weighted counts of images per request go back in `images_per_request`, as a
    scenario file writes them (`images_per_request_spec` is no key of one)."""
    spec = workload.pop("images_per_request_spec", "")
    if spec:
        workload["images_per_request"] = spec_value(spec)


def _table(name: str, table: Mapping[str, Any]) -> list[str]:
    lines = ["", f"[{name}]"]
    subtables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in table.items():
        if key in _FREE_TABLES:
            # Names and values as given (headers, extra_body): a null is not "unset" here.
            if value:
                lines.append(f"{_key(key)} = {_value(value, f'{name}.{key}')}")
        elif isinstance(value, dict) and key not in _INLINE_TABLES:
            subtables.append((key, value))
        else:
            lines += _pair(key, value, f"{name}.{key}")
    for key, value in subtables:
        lines += _table(f"{name}.{_key(key)}", value)
    return lines


def _pair(key: str, value: Any, where: str) -> list[str]:
    if value is None:
        return []  # an unset optional (request_timeout, min_tokens, drain_timeout): its default
    return [f"{_key(key)} = {_value(value, where)}"]


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TomlWriteError(f"{where}: {value} cannot be written in a scenario file")
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_value(v, where) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_key(k)} = {_value(v, f'{where}.{k}')}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if value is None:
        raise TomlWriteError(f"{where}: null cannot be written in a scenario file (TOML has none)")
    raise TomlWriteError(f"{where}: {type(value).__name__} cannot be written in a scenario file")
