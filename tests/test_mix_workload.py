"""Synthetic mixes wired in: `[workload.images] mix` and `images_per_request` as a range or
weighted counts, loaded with one-line errors, written back as TOML, carried in a worker's job,
and drawn per request the same way in every shard."""

from __future__ import annotations

import dataclasses
import io
import pickle
import tomllib
from collections import Counter
from pathlib import Path

import orjson
import pytest
from PIL import Image

from loadgen.config import ImageMixEntry, ImagesConfig, WorkloadConfig
from loadgen.datasets.images import decode_data_url
from loadgen.errors import ScenarioError
from loadgen.scenario import (
    Overrides,
    apply_overrides,
    load_scenario,
    parse_scenario,
    scenario_from_json,
    scenario_to_json,
)
from loadgen.scenario_toml import scenario_to_toml
from loadgen.workload.workload import Workload

LOAD = "[load]\nrequests = 2\n"
MIX = """
[workload.images]
format = "webp"
mix = [
  { size = "48x36", format = "jpeg", weight = 60 },
  { size = "32x18", format = "png", content = "noise", weight = 30 },
  { size = "20x20", weight = 10 },
]
"""
ENTRIES = (
    ImageMixEntry("48x36", "jpeg", "photo", 60.0),
    ImageMixEntry("32x18", "png", "noise", 30.0),
    ImageMixEntry("20x20", "webp", "photo", 10.0),
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    return path


def mixed(counts: str = '{ "1" = 70, "3" = 30 }', pool: int = 0) -> WorkloadConfig:
    text = f"{LOAD}[workload]\nimages_per_request = {counts}\n{MIX}pool_size = {pool}\n"
    return parse_scenario(tomllib.loads(text), "s.toml").workload


# ---- loading ------------------------------------------------------------------------------


def test_a_mix_and_weighted_counts_load_resolved() -> None:
    workload = mixed()
    assert workload.images.mix == ENTRIES
    assert workload.images_per_request == 3  # the most a request carries
    assert workload.images_per_request_spec == "{ 1 = 70, 3 = 30 }"
    ranged = mixed("{ min = 0, max = 4 }")
    assert (ranged.images_per_request, ranged.images_per_request_spec) == (
        4,
        "{ min = 0, max = 4 }",
    )
    one = mixed('{ "2" = 5 }')  # one count: a fixed number after all
    assert (one.images_per_request, one.images_per_request_spec) == (2, "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[workload]\nimages_per_request = { min = 3, max = 1 }\n",
            "[workload] images_per_request: min (3) is above max (1)",
        ),
        (
            "[workload]\nimages_per_request = { min = 1, max = 300 }\n",
            "[workload] images_per_request: max: expected 0 to 256 images, got 300",
        ),
        (
            '[workload]\nimages_per_request = { "1" = 0 }\n',
            "[workload] images_per_request: 1: a weight is a number above 0",
        ),
        (
            "[workload]\nimages_per_request = { one = 1 }\n",
            "[workload] images_per_request: 'one': expected min/max, or image counts",
        ),
        (
            '[workload]\nimages_per_request_spec = "{ 1 = 2 }"\n',
            "[workload] images_per_request_spec: unknown key: write images_per_request = {",
        ),
        (
            '[workload.images]\nmix = [{ size = "448*336" }]\n',
            '[workload.images] mix: [0].size: expected "WIDTHxHEIGHT"',
        ),
        (
            '[workload.images]\nmix = [{ size = "8x8", format = "gif" }]\n',
            "[workload.images] mix: [0].format: one of jpeg, png, webp, got 'gif'",
        ),
        (
            '[workload.images]\nmix = [{ size = "8x8", weight = 1 }, { size = "9x9", w = 1 }]\n',
            "[workload.images] mix: [1]: unknown key(s) w",
        ),
        ('[workload.images]\nmix = "448x336"\n', "[workload.images] mix: expected a list"),
        (
            '[workload.images]\nsource = "folder"\nfolder = "."\nmix = [{ size = "8x8" }]\n',
            "[workload.images] mix: mixes synthetic images: needs source = 'synthetic'",
        ),
        (
            "[workload]\nimages_per_request = { min = 0, max = 2 }\n[workload.images]\n"
            'source = "jsonl"\n[workload.dataset]\npath = "s.toml"\n',
            "[workload] images_per_request: source = 'jsonl': each row names its images",
        ),
        (
            '[workload.images]\nwidth = 100\nmix = [{ size = "8x8" }]\n',
            "[workload.images] width: each entry of the mix gives its size",
        ),
        (
            '[target]\napi = "completions"\n[workload]\nimages_per_request = { min = 0, max = 2 }\n',
            "[workload] images_per_request: api 'completions' takes no images",
        ),
    ],
)
def test_bad_mixes_and_counts_are_refused_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, LOAD + text))
    assert str(info.value).startswith(f"{tmp_path / 's.toml'}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_flags_and_a_mix() -> None:
    scenario = parse_scenario(tomllib.loads(LOAD + MIX), "s.toml")
    for flag, overrides in (
        ("--image-size", Overrides(image_size=(8, 8))),
        ("--image-format", Overrides(image_format="png")),
    ):
        with pytest.raises(ScenarioError, match=f"{flag}: the scenario's images are a mix"):
            apply_overrides(scenario, overrides)
    counted = parse_scenario(
        tomllib.loads(f"{LOAD}[workload]\nimages_per_request = {{ min = 1, max = 3 }}\n"), "s.toml"
    )
    fixed = apply_overrides(counted, Overrides(images_per_request=2)).workload
    assert (fixed.images_per_request, fixed.images_per_request_spec) == (2, "")


@pytest.mark.parametrize("counts", ['{ "1" = 70, "3" = 30.5 }', "{ min = 0, max = 4 }", "2"])
def test_a_mix_reads_back_from_toml_and_json(tmp_path: Path, counts: str) -> None:
    text = f"seed = 4\n{LOAD}[workload]\nimages_per_request = {counts}\n{MIX}"
    scenario = load_scenario(write(tmp_path, text))
    saved = scenario_to_toml(scenario)
    assert f"images_per_request = {counts.replace(chr(34), '')}\n" in saved
    assert "images_per_request_spec" not in saved
    assert parse_scenario(tomllib.loads(saved), scenario.source, tmp_path) == scenario
    assert scenario_from_json(orjson.loads(orjson.dumps(scenario_to_json(scenario)))) == scenario


# ---- drawing ------------------------------------------------------------------------------


def test_counts_and_variants_follow_their_shares() -> None:
    reqs = Workload(mixed(), 11, "m").prepare("main", 400)
    ids = [reqs.image_ids(i) for i in range(400)]
    counts = Counter(len(x) for x in ids)
    assert set(counts) == {1, 3}
    assert 0.63 < counts[1] / 400 < 0.77
    kinds = Counter(i.split("-", 4)[-1] for x in ids for i in x)
    shown = sum(kinds.values())
    assert 0.54 < kinds["48x36-jpeg-photo"] / shown < 0.66
    assert 0.24 < kinds["32x18-png-noise"] / shown < 0.36
    assert 0.05 < kinds["20x20-webp-photo"] / shown < 0.15
    # fresh images: numbered 0, 1, 2, ... in the order requests show them
    keys = [int(i.split("-")[3]) for x in ids for i in x]
    assert keys == list(range(len(keys)))


def test_each_image_is_built_as_its_variant() -> None:
    workload = Workload(mixed(), 11, "m")
    reqs = workload.prepare("main", 40)
    for item in reqs.images():
        size, fmt, _content = item.id.split("-", 4)[-1].split("-")
        mime, data = decode_data_url(item.data_url)
        with Image.open(io.BytesIO(data)) as image:
            assert f"{image.width}x{image.height}" == size == f"{item.width}x{item.height}"
            assert image.format == fmt.upper() and mime == f"image/{fmt}"
    builder = reqs._stream.builder
    assert pickle.loads(pickle.dumps(builder)) == builder  # a worker process builds with it
    assert "mix of 3: 60% 48x36 jpeg photo, 30% 32x18 png noise, 10% 20x20 webp photo" in (
        workload.describe()
    )
    assert "{ 1 = 70, 3 = 30 } images a request, 1.6 on average" in workload.describe()


def test_a_pool_takes_the_shares_as_exactly_as_it_can() -> None:
    reqs = Workload(mixed(pool=10), 3, "m").prepare("main", 50)
    kinds = Counter(item.id.split("-", 4)[-1] for item in reqs.images())
    assert kinds == {"48x36-jpeg-photo": 6, "32x18-png-noise": 3, "20x20-webp-photo": 1}


@pytest.mark.parametrize("shards", [2, 3])
def test_every_shard_draws_the_same_requests(shards: int) -> None:
    cfg = mixed("{ min = 0, max = 3 }", pool=7)
    whole = Workload(cfg, 5, "m").prepare("main", 60)
    for shard in range(shards):
        part = Workload(cfg, 5, "m").prepare("main", 60, shard=shard, shards=shards)
        for i in range(shard, 60, shards):
            assert part.image_ids(i) == whole.image_ids(i)
            assert part.body(i) == whole.body(i)
            assert part.body_id(i) == whole.body_id(i)


@pytest.mark.parametrize(
    ("counts", "pool"), [("{ min = 0, max = 2 }", 3), ("{ min = 0, max = 2 }", 0)]
)
def test_equal_body_numbers_mean_equal_bodies(counts: str, pool: int) -> None:
    cfg = dataclasses.replace(mixed(counts, pool), prompts=("a", "b", "a"))
    reqs = Workload(cfg, 2, "m").prepare("main", 120)
    first: dict[bytes, int] = {}
    for i in range(120):
        assert reqs.body_id(i) == first.setdefault(reqs.body(i), i)
    # the later requests' draws never change the earlier ones' (prefix-stable)
    again = Workload(cfg, 2, "m").prepare("main", 30)
    assert [again.image_ids(i) for i in range(30)] == [reqs.image_ids(i) for i in range(30)]


def test_a_time_bounded_phase_builds_its_mix_ahead() -> None:
    cfg = mixed()
    reqs = Workload(cfg, 9, "m").prepare("main", None, ahead=4)
    assert reqs.lazy
    assert all(reqs.ready(i) for i in range(4))
    assert len({key for i in range(4) for key in reqs.image_ids(i)}) == reqs.held


def test_no_mix_no_change() -> None:
    plain = WorkloadConfig(images=ImagesConfig(width=8, height=6, format="png"))
    reqs = Workload(plain, 1, "m").prepare("main", 3)
    assert reqs.image_ids(2) == ["syn-1-main-2"]


def test_a_folder_takes_drawn_counts_too(tmp_path: Path) -> None:
    photos = Path(__file__).resolve().parents[1] / "scenarios" / "images"
    text = (
        f"{LOAD}[workload]\nimages_per_request = {{ min = 1, max = 3 }}\n"
        f'[workload.images]\nsource = "folder"\nfolder = "{photos}"\n'
    )
    workload = load_scenario(write(tmp_path, text)).workload
    reqs = Workload(workload, 4, "m").prepare("main", 30)
    ids = [reqs.image_ids(i) for i in range(30)]
    assert {len(x) for x in ids} == {1, 2, 3}
    files = sorted(p.name for p in photos.iterdir() if p.suffix == ".jpg")
    # the slots follow one another: the folder's files in turn, wrapping around
    flat = [name for x in ids for name in x]
    assert flat == [files[n % len(files)] for n in range(len(flat))]
