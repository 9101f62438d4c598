"""Request bodies are byte-identical to those loadgen sent before endpoints and datasets became
pluggable: for each scenario below, every body (and its image ids and body number) of each
phase, warm-up and shard, against tests/data/golden_bodies.json.

The golden file was written by this module's `main()` (python -m tests.test_body_golden) from the
code as it was before; regenerate it only on purpose, when the bodies are meant to change.
Synthetic images are drawn by Pillow: the file records the Pillow version it was written with.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import orjson
import PIL
import pytest

from loadgen.config import WARMUP
from loadgen.scenario import parse_scenario
from loadgen.schedule import phase_lanes
from loadgen.workload import Workload

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "golden_bodies.json"
MODEL = "golden/model-7B"

SCENARIOS: dict[str, str] = {
    "text_only": """
seed = 11
[load]
requests = 5
warmup_requests = 2
[workload]
images_per_request = 0
prompts = ["first", "second \\u00e9\\u4e2d \\"quoted\\"", "third"]
system_prompt = "You are terse."
max_tokens = 7
min_tokens = 3
ignore_eos = true
temperature = 0.5
[workload.extra_body]
top_p = 0.9
nested = {a = [1, 2.5, "x"], b = {c = true}}
""",
    "pool_png": """
seed = 5
[load]
requests = 6
[workload]
images_per_request = 2
prompts = ["p one", "p two"]
[workload.images]
content = "solid"
format = "png"
width = 8
height = 6
pool_size = 3
""",
    "repeat_noise": """
seed = 3
[[phases]]
name = "a"
mode = "constant"
rate = 10.0
requests = 7
max_concurrency = 3
warmup_requests = 1
[[phases]]
name = "b"
repeat_of = "a"
mode = "closed"
concurrency = 2
requests = 5
[workload]
images_per_request = 3
[workload.images]
content = "noise"
format = "jpeg"
quality = 70
width = 8
height = 8
repeat_ratio = 0.5
""",
    "gradient_webp": """
seed = 99
[load]
concurrency = 3
requests = 4
[workload]
max_tokens = 16
[workload.images]
content = "gradient"
format = "webp"
width = 12
height = 10
""",
    "folder": """
seed = 1
[load]
requests = 5
[workload]
images_per_request = 2
prompts = ["look", "see"]
[workload.images]
source = "folder"
folder = "golden_folder"
""",
}
SHARDS = (1, 2)


def bodies_of(text: str) -> dict[str, Any]:
    """Every request of every phase (warm-up included) of the scenario, for 1 and 2 shards."""
    scenario = parse_scenario(tomllib.loads(text), "golden", DATA)
    first = scenario.phases[0]
    phases = [(p.name, p.load.requests, p.load, p.repeat_of) for p in scenario.phases]
    if first.load.warmup_requests:  # the warm-up a run sends first
        phases.insert(0, (WARMUP, first.load.warmup_requests, first.load, ""))
    out: dict[str, Any] = {}
    for shards in SHARDS:
        for shard in range(shards):
            workload = Workload(scenario.workload, scenario.seed, MODEL)
            for name, count, load, repeat_of in phases:
                reqs = workload.prepare(
                    name,
                    count,
                    repeat_of=repeat_of,
                    warmup=name == WARMUP,
                    shard=shard,
                    shards=shards,
                    lanes=phase_lanes(load, shards),
                )
                rows = []
                for i in range(count):
                    try:
                        body = reqs.body(i)
                    except LookupError:
                        continue  # another shard's request
                    rows.append([i, body.decode(), reqs.image_ids(i), reqs.body_id(i)])
                out[f"{shards}/{shard}/{name}"] = rows
    return out


def golden() -> dict[str, Any]:
    return {"pillow": PIL.__version__, "scenarios": {k: bodies_of(v) for k, v in SCENARIOS.items()}}


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(GOLDEN.read_bytes())
    return doc


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_bodies_are_byte_identical(name: str, expected: dict[str, Any]) -> None:
    if name != "text_only" and name != "folder" and expected["pillow"] != PIL.__version__:
        pytest.skip(f"golden images drawn by Pillow {expected['pillow']}, not {PIL.__version__}")
    want = expected["scenarios"][name]
    got = bodies_of(SCENARIOS[name])
    assert sorted(got) == sorted(want)
    for key, rows in want.items():
        assert len(got[key]) == len(rows), key
        for mine, theirs in zip(got[key], rows, strict=True):
            assert mine[0] == theirs[0], key
            assert mine[1].encode() == theirs[1].encode(), (key, mine[0])
            assert mine[2:] == theirs[2:], (key, mine[0])


def main() -> int:
    GOLDEN.write_bytes(orjson.dumps(golden(), option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.write(f"wrote {GOLDEN}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
