#!/usr/bin/env python3
"""What do the result documents' types cost, and which library should hold them?

A realistic summary.json: the one in tests/data (two phases, two shards, server figures) with each
phase's throughput windows and the server's gauge series grown to a ten-minute run's (60 windows
of 10 s per phase, 600 one-second /metrics samples). It is encoded and decoded, in one process,
alternated within each repetition so the machine's noise falls on all alike, by:
- `msgspec`: the Structs of loadgen.results.schema, msgspec.json.encode / decode(type=...);
- `msgspec, as written`: what write_json does (to_builtins, then orjson, indented, keys sorted);
- `dataclasses+orjson`: the same types as slotted dataclasses, orjson.dumps (native dataclass
  support) and orjson.loads followed by a recursive constructor from the type hints;
- `pydantic`: pydantic v2's TypeAdapter over those dataclasses (validate_json / dump_json); only
  when pydantic imports (it is no loadgen dependency: run this script with a Python that has it).
Each figure is the median over repetitions of the best of a few loops, in microseconds, and its
ratio to msgspec's.

`--readers BASE` also times the readers on the same summary (load the results folder, the console
summary, the HTML report without plots, a comparison of the run with itself), in a subprocess per
tree: this tree, and BASE (a checkout from before the types, e.g. /work/main).

    .venv/bin/python scripts/bench_schema.py
    .venv/bin/python scripts/bench_schema.py --reps 9 --readers /work/main
    /tmp/venv-with-pydantic/bin/python scripts/bench_schema.py   # PYTHONPATH=. for loadgen
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.results import schema  # noqa: E402

FIXTURE = ROOT / "tests" / "data" / "summary_run.json"
_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS


def realistic_summary() -> bytes:
    """The fixture grown to a ten-minute run: 60 windows per phase, 600 server samples."""
    doc = orjson.loads(FIXTURE.read_bytes())
    for phase in doc["phases"].values():
        row = phase["windows"]["series"][0]
        phase["windows"]["series"] = [
            {**row, "index": i, "start": 10.0 * i, "end": 10.0 * (i + 1), "duration": 10.0}
            for i in range(60)
        ]
    sample = doc["server"]["timeseries"][0]
    doc["server"]["timeseries"] = [{**sample, "time": float(t)} for t in range(600)]
    return orjson.dumps(doc, option=_JSON_OPTIONS)


# ---- the same types as dataclasses --------------------------------------------------------------


def _structs() -> dict[type, type]:
    """Every Struct of the schema -> a slotted dataclass with the same fields and types."""
    out: dict[type, type] = {}

    def swap(tp: Any) -> Any:
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            return make(tp)
        args = typing.get_args(tp)
        origin = typing.get_origin(tp)
        if not args or origin is typing.Literal:
            return tp
        new = tuple(swap(a) for a in args)
        if origin in (typing.Union, types.UnionType):
            return typing.Union[new]  # noqa: UP007 (built at run time)
        return origin[new] if origin is not None else tp

    def make(cls: type) -> type:
        if cls in out:
            return out[cls]
        hints = typing.get_type_hints(cls)
        fields = []
        for f in msgspec.structs.fields(cls):
            if f.default is not msgspec.NODEFAULT:
                default = f.default
                spec = (
                    dataclasses.field(default_factory=lambda d=default: type(d)(d))
                    if isinstance(default, list | dict)
                    else dataclasses.field(default=default)
                )
            elif f.default_factory is not msgspec.NODEFAULT:
                factory = f.default_factory
                spec = dataclasses.field(
                    default_factory=(lambda c=factory: swap(c)()) if isinstance(factory, type)
                    else factory
                )  # fmt: skip
            else:
                spec = dataclasses.field()
            fields.append((f.name, swap(hints[f.name]), spec))
        made = dataclasses.make_dataclass(cls.__name__, fields, kw_only=True, slots=True)
        out[cls] = made
        return made

    for value in vars(schema).values():
        if (
            isinstance(value, type)
            and issubclass(value, msgspec.Struct)
            and value.__module__ == schema.__name__
        ):
            make(value)
    return out


def _builder(tp: Any) -> Callable[[Any], Any]:
    """A constructor of `tp` from decoded JSON, as one writes it for dataclasses (types trusted)."""
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        parts = [(f.name, _builder(hints[f.name])) for f in dataclasses.fields(tp)]

        def build_dc(v: Any) -> Any:
            return tp(**{name: b(v[name]) for name, b in parts if name in v})

        return build_dc
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        item = _builder(args[0])
        return lambda v: [item(x) for x in v]
    if origin is dict:
        value = _builder(args[1])
        return lambda v: {k: value(x) for k, x in v.items()}
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            one = _builder(inner[0])
            return lambda v: None if v is None else one(v)
    return lambda v: v


# ---- timing -----------------------------------------------------------------------------------


def best_us(fn: Callable[[], Any], loops: int) -> float:
    best = float("inf")
    for _ in range(loops):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e6


def codecs(data: bytes) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """name -> (encode, decode), each closing over its own decoded object."""
    struct = schema.decode(data)
    dcs = _structs()
    dc_type = dcs[schema.RunSummary]
    build = _builder(dc_type)
    dc_obj = build(orjson.loads(data))
    out: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "msgspec": (
            lambda: msgspec.json.encode(struct),
            lambda: msgspec.json.decode(data, type=schema.RunSummary),
        ),
        "msgspec, as written": (
            lambda: orjson.dumps(schema.to_builtins(struct), option=_JSON_OPTIONS),
            lambda: schema.decode(data),
        ),
        "dataclasses+orjson": (
            lambda: orjson.dumps(dc_obj),
            lambda: build(orjson.loads(data)),
        ),
    }
    try:
        import pydantic
    except ImportError:
        return out
    adapter = pydantic.TypeAdapter(dc_type)
    pyd_obj = adapter.validate_json(data)
    out[f"pydantic {pydantic.VERSION}"] = (
        lambda: adapter.dump_json(pyd_obj),
        lambda: adapter.validate_json(data),
    )
    return out


def measure(data: bytes, reps: int, loops: int) -> dict[str, dict[str, float]]:
    fns = codecs(data)
    samples: dict[str, dict[str, list[float]]] = {n: {"encode": [], "decode": []} for n in fns}
    for _ in range(reps):
        for name, (enc, dec) in fns.items():
            samples[name]["encode"].append(best_us(enc, loops))
            samples[name]["decode"].append(best_us(dec, loops))
    return {
        name: {k: statistics.median(v) for k, v in row.items()} for name, row in samples.items()
    }


READERS = """
import statistics, sys, time
from loadgen.results.rundir import load_run
from loadgen.results.report_text import render_summary
from loadgen.results.report_run import render_run_report
from loadgen.results.compare import compare_runs
folder, reps, loops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
steps = {
    "load": lambda: load_run(folder),
    "console": lambda: render_summary(load_run(folder).summary),
    "report": lambda: render_run_report(load_run(folder), []),
    "compare": lambda: compare_runs([load_run(folder), load_run(folder)]),
}
out = {}
for name, fn in steps.items():
    runs = []
    for _ in range(reps):
        best = min((lambda t: (fn(), time.perf_counter() - t)[1])(time.perf_counter())
                   for _ in range(loops))
        runs.append(best * 1e6)
    out[name] = statistics.median(runs)
import orjson
print(orjson.dumps(out).decode())
"""


def readers(
    data: bytes, trees: dict[str, Path], reps: int, loops: int
) -> dict[str, dict[str, float]]:
    """Each tree's readers on the summary, in a subprocess of its own (its own loadgen imported),
    the trees alternated in every repetition; the median over repetitions of each step."""
    got: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "summary.json").write_bytes(data)
        for _ in range(reps):
            for name, tree in trees.items():
                env = {**os.environ, "PYTHONPATH": str(tree)}
                proc = subprocess.run(
                    [sys.executable, "-c", READERS, tmp, "1", str(loops)],
                    capture_output=True, text=True, env=env, cwd=tmp, check=True,
                )  # fmt: skip
                for step, us in orjson.loads(proc.stdout).items():
                    got[name].setdefault(step, []).append(us)
    return {
        name: {step: statistics.median(v) for step, v in steps.items()}
        for name, steps in got.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--loops", type=int, default=20)
    parser.add_argument(
        "--readers", metavar="BASE", help="also time the readers: BASE vs this tree"
    )
    args = parser.parse_args()
    data = realistic_summary()
    print(f"summary.json: {len(data):,} bytes (60 windows per phase, 600 server samples)")
    rows = measure(data, args.reps, args.loops)
    base = rows["msgspec"]
    print(f"{'':24}{'encode us':>11}{'x msgspec':>11}{'decode us':>11}{'x msgspec':>11}")
    for name, row in rows.items():
        print(
            f"{name:24}{row['encode']:11.0f}{row['encode'] / base['encode']:11.1f}"
            f"{row['decode']:11.0f}{row['decode'] / base['decode']:11.1f}"
        )
    if not any(n.startswith("pydantic") for n in rows):
        print("pydantic: not importable here (no loadgen dependency); see the module doc")
    if args.readers:
        got = readers(
            data, {"base": Path(args.readers), "this": ROOT}, args.reps, max(3, args.loops // 4)
        )
        print(f"\nreaders, us (median of best-of-{max(3, args.loops // 4)}):")
        print(f"{'':10}{'base':>10}{'this':>10}{'this/base':>11}")
        for step in got["base"]:
            b, t = got["base"][step], got["this"][step]
            print(f"{step:10}{b:10.0f}{t:10.0f}{t / b:11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
