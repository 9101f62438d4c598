"""Workload: request bodies, synthetic and folder images, repetition rules, replays and shards."""

from __future__ import annotations

import hashlib
import io
import math
import shutil
from pathlib import Path
from typing import Any

import anyio
import anyio.to_process
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from loadgen.config import ImageContent, ImageFormat, ImagesConfig, WorkloadConfig
from loadgen.errors import LoadgenError
from loadgen.workload import (
    ImageItem,
    PhaseRequests,
    Workload,
    WorkloadTooLarge,
    decode_data_url,
)

PHOTOS = Path(__file__).resolve().parent.parent / "scenarios" / "images"
TINY = ImagesConfig(width=8, height=6, format="png", content="solid")


def make(images: ImagesConfig = TINY, *, seed: int = 1, model: str = "m", **kw: Any) -> Workload:
    return Workload(WorkloadConfig(images=images, **kw), seed, model)


def parsed(reqs: PhaseRequests, i: int) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(reqs.body(i))
    return body


def user_content(reqs: PhaseRequests, i: int) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = parsed(reqs, i)["messages"][-1]["content"]
    return content


def ids(reqs: PhaseRequests, n: int) -> list[str]:
    return [x for i in range(n) for x in reqs.image_ids(i)]


def decoded(item: ImageItem) -> Image.Image:
    mime, data = decode_data_url(item.data_url)
    assert mime == item.mime
    assert hashlib.sha256(data).hexdigest() == item.sha256
    assert len(data) == item.nbytes
    return Image.open(io.BytesIO(data))


# ---- bodies ------------------------------------------------------------------------------


def test_body_has_exactly_the_configured_fields() -> None:
    wl = make(
        system_prompt="You caption images.",
        prompts=("Caption this.",),
        max_tokens=64,
        min_tokens=64,
        ignore_eos=True,
        temperature=0.5,
        extra_body=(("top_k", 5), ("chat_template_kwargs", {"enable_thinking": False})),
    )
    reqs = wl.prepare("main", 3)
    item = reqs.images()[0]
    assert reqs.image_ids(0) == [item.id]
    assert parsed(reqs, 0) == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You caption images."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Caption this."},
                    {"type": "image_url", "image_url": {"url": item.data_url}},
                ],
            },
        ],
        "max_tokens": 64,
        "temperature": 0.5,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "min_tokens": 64,
        "ignore_eos": True,
        "top_k": 5,
        "chat_template_kwargs": {"enable_thinking": False},
    }


def test_optional_fields_are_left_out() -> None:
    body = parsed(make().prepare("main", 1), 0)
    assert set(body) == {
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "stream",
        "stream_options",
    }
    assert [m["role"] for m in body["messages"]] == ["user"]


def test_extra_body_overrides_sampling_but_not_structure() -> None:
    body = parsed(make(extra_body=(("temperature", 1.0),)).prepare("main", 1), 0)
    assert body["temperature"] == 1.0
    for key in ("model", "messages", "stream"):
        with pytest.raises(ValueError, match=key):
            make(extra_body=((key, 1),))
    with pytest.raises(ValueError, match="JSON"):
        make(extra_body=(("x", object()),))


@settings(max_examples=60, deadline=None)
@given(
    prompts=st.lists(st.text(), min_size=1, max_size=3),
    system=st.text(),
    model=st.text(min_size=1),
    k=st.integers(0, 3),
)
def test_bodies_are_valid_json_for_any_text(
    prompts: list[str], system: str, model: str, k: int
) -> None:
    wl = make(model=model, prompts=tuple(prompts), system_prompt=system, images_per_request=k)
    reqs = wl.prepare("main", 4)
    for i in range(4):
        body = parsed(reqs, i)
        assert body["model"] == model
        messages = body["messages"]
        assert messages[:-1] == ([{"role": "system", "content": system}] if system else [])
        text = {"type": "text", "text": prompts[i % len(prompts)]}
        images = [
            {"type": "image_url", "image_url": {"url": item.data_url}} for item in _items(reqs, i)
        ]
        expected = [text, *images] if wl.template.text_first else [*images, text]
        assert messages[-1] == {"role": "user", "content": expected}


def _items(reqs: PhaseRequests, i: int) -> list[ImageItem]:
    by_id = {item.id: item for item in reqs.images()}
    return [by_id[x] for x in reqs.image_ids(i)]


def test_several_images_follow_the_text_in_slot_order() -> None:
    wl = make(images_per_request=3)
    assert wl.template.text_first
    reqs = wl.prepare("main", 2)
    for i in range(2):
        content = user_content(reqs, i)
        assert content[0]["type"] == "text"
        urls = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
        assert urls == [item.data_url for item in _items(reqs, i)]
    # slots i*k .. i*k+k-1: with fresh images, request 1 shows images 3, 4, 5
    assert [x.rsplit("-", 1)[1] for x in reqs.image_ids(1)] == ["3", "4", "5"]


def test_text_only_requests() -> None:
    reqs = make(images_per_request=0).prepare("main", 3)
    assert user_content(reqs, 2) == [{"type": "text", "text": WorkloadConfig().prompts[0]}]
    assert reqs.images() == []


def test_prompts_are_asked_round_robin() -> None:
    prompts = ("a", "b", "c")
    reqs = make(prompts=prompts).prepare("main", 7)
    assert [user_content(reqs, i)[0]["text"] for i in range(7)] == list("abcabca")
    assert [reqs.prompt(i) for i in range(7)] == list("abcabca")


def test_the_model_is_named_up_front() -> None:
    assert parsed(make(model="served-model").prepare("main", 2), 1)["model"] == "served-model"
    with pytest.raises(ValueError, match="empty model name"):
        make(model="")


def test_image_part_is_the_serialized_data_url() -> None:
    item = make().prepare("main", 1).images()[0]
    assert orjson.loads(item.part) == {"type": "image_url", "image_url": {"url": item.data_url}}
    assert item.data_url.startswith("data:image/png;base64,")


# ---- synthetic images --------------------------------------------------------------------


@pytest.mark.parametrize("content", ["noise", "gradient", "solid", "photo"])
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_synthetic_images_have_the_configured_size_and_format(
    content: ImageContent, fmt: ImageFormat
) -> None:
    cfg = ImagesConfig(width=96, height=64, format=fmt, content=content, quality=70)
    reqs = make(cfg).prepare("main", 3)
    items = reqs.images()
    assert len(items) == 3
    for item in items:
        image = decoded(item)
        assert image.format == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
        assert image.size == (96, 64) == (item.width, item.height)
        assert item.mime == f"image/{fmt}"
    assert len({item.sha256 for item in items}) == 3  # every content kind varies per image


def test_same_seed_gives_byte_identical_bodies() -> None:
    cfg = ImagesConfig(width=64, height=48, content="photo")
    a = make(cfg, seed=5).prepare("main", 4)
    b = make(cfg, seed=5).prepare("main", 4)
    assert [a.body(i) for i in range(4)] == [b.body(i) for i in range(4)]
    c = make(cfg, seed=6).prepare("main", 4)
    assert {x.sha256 for x in a.images()}.isdisjoint(x.sha256 for x in c.images())


def test_solid_images_are_one_distinct_colour_each() -> None:
    items = (
        make(ImagesConfig(width=16, height=16, format="png", content="solid"))
        .prepare("main", 300)
        .images()
    )
    colours = set()
    for item in items:
        found = decoded(item).convert("RGB").getcolors()
        assert found is not None and len(found) == 1
        colours.add(found[0][1])
    assert len(colours) == 300


def test_content_kinds_span_the_bandwidth_range() -> None:
    def mean_size(content: ImageContent) -> float:
        cfg = ImagesConfig(width=320, height=240, content=content, format="jpeg", quality=85)
        items = make(cfg).prepare("main", 5).images()
        return sum(x.nbytes for x in items) / len(items)

    solid, gradient, photo, noise = (mean_size(c) for c in ("solid", "gradient", "photo", "noise"))
    assert solid < gradient < photo < noise


def test_photo_content_encodes_like_the_shipped_photos() -> None:
    real = [p.stat().st_size / math.prod(Image.open(p).size) for p in sorted(PHOTOS.glob("*.jpg"))]
    cfg = ImagesConfig(width=512, height=384, content="photo", format="jpeg", quality=85)
    items = make(cfg).prepare("main", 5).images()
    synthetic = sum(x.nbytes for x in items) / (5 * 512 * 384)
    # bytes per pixel within the range the real photos span, give or take a factor 1.5
    assert min(real) / 1.5 < synthetic < max(real) * 1.5


# ---- repetition --------------------------------------------------------------------------


def test_pool_cycles_in_a_shuffled_order() -> None:
    reqs = make(
        ImagesConfig(width=8, height=8, format="png", content="gradient", pool_size=5),
        images_per_request=2,
    ).prepare("main", 12)
    seq = ids(reqs, 12)
    assert len(set(seq[:5])) == 5  # each image once before any repeats
    assert seq == [seq[j % 5] for j in range(24)]
    assert len(reqs.images()) == 5
    assert seq[:5] != sorted(seq[:5], key=lambda x: int(x.rsplit("-", 1)[1]))  # shuffled


def test_pool_order_depends_on_the_seed_only() -> None:
    cfg = ImagesConfig(width=8, height=8, format="png", content="gradient", pool_size=20)
    a = ids(make(cfg, seed=3).prepare("main", 20), 20)
    assert a == ids(make(cfg, seed=3).prepare("main", 40), 20)  # prefix-stable
    b = ids(make(cfg, seed=4).prepare("main", 20), 20)
    assert [x.rsplit("-", 1)[1] for x in a] != [x.rsplit("-", 1)[1] for x in b]


def test_fresh_images_by_default() -> None:
    reqs = make().prepare("main", 50)
    assert len(set(ids(reqs, 50))) == 50


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_repeat_ratio_reuses_that_share_of_slots(ratio: float) -> None:
    n = 4000
    reqs = make(
        ImagesConfig(width=4, height=4, format="png", content="solid", repeat_ratio=ratio),
        images_per_request=2,
    ).prepare("main", n // 2)
    seq = ids(reqs, n // 2)
    seen: set[str] = set()
    reused = 0
    for x in seq:
        reused += x in seen
        seen.add(x)
    # The first slot is always fresh; every later one reuses with probability `ratio`.
    share = reused / (n - 1)
    assert abs(share - ratio) < 5 * math.sqrt(ratio * (1 - ratio) / (n - 1))
    assert len(reqs.images()) == n - reused


def test_repeat_ratio_reuses_across_requests_uniformly() -> None:
    # Reuse picks among all images shown so far: with r = 0.5 over 2000 slots, reused images
    # include ones first shown in both halves of the run.
    reqs = make(
        ImagesConfig(width=4, height=4, format="png", content="solid", repeat_ratio=0.5)
    ).prepare("main", 2000)
    seq = ids(reqs, 2000)
    first = {x: seq.index(x) for x in set(seq)}
    late_reuses = [first[x] for j, x in enumerate(seq) if j > 1500 and first[x] != j]
    assert min(late_reuses) < 500 < 1000 < max(late_reuses)


# ---- phases, warm-up, replays ------------------------------------------------------------


def test_phases_and_warmups_have_their_own_images() -> None:
    wl = make()
    cold = wl.prepare("cold", 10)
    other = wl.prepare("other", 10)
    warm_up = wl.prepare("cold", 10, warmup=True)
    shas = [{x.sha256 for x in r.images()} for r in (cold, other, warm_up)]
    assert shas[0].isdisjoint(shas[1]) and shas[0].isdisjoint(shas[2])
    assert shas[1].isdisjoint(shas[2])
    assert len({x.id for r in (cold, other, warm_up) for x in r.images()}) == 30


def test_replay_sends_identical_bodies() -> None:
    wl = make(
        ImagesConfig(width=16, height=16, content="photo", repeat_ratio=0.3),
        prompts=("p", "q", "r"),
        images_per_request=2,
    )
    cold = wl.prepare("cold", 20)
    built = wl.images_built
    warm = wl.prepare("warm", 20, repeat_of="cold")
    assert [warm.body(i) for i in range(20)] == [cold.body(i) for i in range(20)]
    assert warm.built == 0 and wl.images_built == built
    # a replay of the first 6 requests only, cycling
    short = wl.prepare("again", 15, repeat_of="cold", replay_count=6)
    assert [short.body(i) for i in range(15)] == [cold.body(i % 6) for i in range(15)]


def test_replay_needs_its_source_first() -> None:
    with pytest.raises(ValueError, match="before"):
        make().prepare("warm", 3, repeat_of="cold")
    wl = make()
    wl.prepare("cold", 3)
    with pytest.raises(ValueError):
        wl.prepare("warm", 3, repeat_of="cold", replay_count=4)


def test_requests_past_the_prepared_count_are_refused_not_replayed() -> None:
    reqs = make().prepare("main", 5)
    assert len(reqs) == 5
    with pytest.raises(LookupError, match="past the 5 requests"):
        reqs.body(5)
    with pytest.raises(IndexError):
        reqs.body(-1)


def _send_all(reqs: PhaseRequests, indices: list[int], held: list[int]) -> list[bytes]:
    """The bodies of `indices`, taken as the runner takes them, with `produce` running."""

    async def main() -> list[bytes]:
        bodies = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(reqs.produce)
            for i in indices:
                if not reqs.ready(i):
                    await reqs.wait(i)
                bodies.append(reqs.body(i))
                held.append(reqs.held)
            tg.cancel_scope.cancel()
        return bodies

    return anyio.run(main)


@pytest.mark.parametrize(
    "images",
    [TINY, ImagesConfig(width=8, height=6, format="png", content="gradient", repeat_ratio=0.4)],
)
@pytest.mark.parametrize(("shard", "shards"), [(0, 1), (1, 2)])
def test_a_phase_of_unknown_count_builds_fresh_bodies_ahead_of_need(
    images: ImagesConfig, shard: int, shards: int
) -> None:
    """Past the requests built before the phase, the next ones are built while it runs: the same
    bodies as a phase prepared for all of them, never a replay, in bounded memory."""
    cfg = {"images": images, "images_per_request": 2, "prompts": ("p", "q", "r")}
    n = 120
    whole = Workload(WorkloadConfig(**cfg), 1, "m").prepare("main", n)
    wl = Workload(WorkloadConfig(**cfg), 1, "m")
    lazy = wl.prepare("main", None, ahead=10, shard=shard, shards=shards)
    assert lazy.lazy and wl.images_built <= 2 * 10
    indices = list(range(shard, n, shards))
    held: list[int] = []
    bodies = _send_all(lazy, indices, held)
    assert bodies == [whole.body(i) for i in indices]
    assert [lazy.image_ids(i) for i in indices] == [whole.image_ids(i) for i in indices]
    assert max(held) <= 2 * (10 + 8)  # a window of requests (and a batch), 2 images each
    if not images.repeat_ratio:
        assert len(set(bodies)) == len(bodies)


def test_a_dead_builder_process_is_replaced_by_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise anyio.BrokenWorkerProcess

    monkeypatch.setattr(anyio.to_process, "run_sync", broken)
    whole = make().prepare("main", 40)
    lazy = make().prepare("main", None, ahead=4)
    assert _send_all(lazy, list(range(40)), []) == [whole.body(i) for i in range(40)]
    # Requests 0-3 were built before; the loop above never yields until request 4 must wait.
    assert lazy.waits >= 1 and lazy.waited_us >= 0


def test_a_phase_of_unknown_count_over_a_pool_or_folder_builds_all_its_images() -> None:
    wl = make(ImagesConfig(width=8, height=6, format="png", content="solid", pool_size=4))
    reqs = wl.prepare("main", None)
    assert not reqs.lazy and wl.images_built == 4
    seen = [reqs.image_ids(i)[0] for i in range(1000)]
    assert len(set(seen)) == 4 and seen[:4] == seen[4:8]  # the pool's rule, request 999 too
    reqs.body(999)
    files = make(ImagesConfig(source="folder", folder=str(PHOTOS))).prepare("main", None)
    n = len(shipped())
    assert len(files.images()) == n and files.image_ids(n) == files.image_ids(0)


@settings(max_examples=40, deadline=None)
@given(
    pool=st.integers(0, 5),
    ratio=st.sampled_from([0.0, 0.5]),
    per_request=st.integers(0, 3),
    prompts=st.lists(st.sampled_from("abc"), min_size=1, max_size=4),
)
def test_body_numbers_are_equal_exactly_for_identical_bodies(
    pool: int, ratio: float, per_request: int, prompts: list[str]
) -> None:
    if pool and ratio:
        ratio = 0.0
    images = ImagesConfig(
        width=2, height=2, format="png", content="solid", pool_size=pool, repeat_ratio=ratio
    )
    reqs = make(images, images_per_request=per_request, prompts=tuple(prompts)).prepare("m", 40)
    bodies = [reqs.body(i) for i in range(40)]
    numbers = [reqs.body_id(i) for i in range(40)]
    # The number is the first request with the same bytes.
    assert numbers == [bodies.index(b) for b in bodies]


def test_a_replay_cycles_over_what_its_shard_sent_of_the_source() -> None:
    wl = make(prompts=("p", "q"))
    cold = wl.prepare("cold", None, ahead=8, shard=1, shards=2)
    warm = wl.prepare("warm", 20, repeat_of="cold", shard=1, shards=2)
    warm.replayed(3)  # cold sent requests 1, 3 and 5 in this shard
    sent = [cold.body(i) for i in (1, 3, 5)]
    assert [warm.body(i) for i in range(1, 20, 2)] == [sent[j % 3] for j in range(10)]
    assert [warm.body_id(i) for i in range(1, 20, 2)] == [(1, 3, 5)[j % 3] for j in range(10)]
    bounded = wl.prepare("again", 12, repeat_of="cold", shard=1, shards=2)
    bounded.replayed(2)
    assert [bounded.body(i) for i in range(1, 12, 2)] == [sent[j % 2] for j in range(6)]


def test_a_shard_builds_only_its_requests_images() -> None:
    whole = make().prepare("main", 30)
    wl = make()
    part = wl.prepare("main", 30, shard=1, shards=3)
    assert wl.images_built == 10
    assert [x.id for x in part.images()] == [whole.image_ids(i)[0] for i in range(1, 30, 3)]
    assert [part.body(i) for i in range(1, 30, 3)] == [whole.body(i) for i in range(1, 30, 3)]
    with pytest.raises(LookupError, match="shard 1 of 3"):
        part.body(0)


def test_build_budget_refuses_too_many_fresh_images() -> None:
    wl = Workload(WorkloadConfig(images=TINY), 1, "m", max_images=10)
    with pytest.raises(WorkloadTooLarge, match="pool_size"):
        wl.prepare("main", 11)
    pooled = Workload(
        WorkloadConfig(images=ImagesConfig(width=8, height=6, pool_size=10)), 1, "m", max_images=10
    )
    assert len(pooled.prepare("main", 1000).images()) == 10
    small = Workload(WorkloadConfig(images=TINY), 1, "m", max_bytes=1000)
    with pytest.raises(WorkloadTooLarge, match="bytes"):
        small.prepare("main", 100)


# ---- folder source -----------------------------------------------------------------------


def shipped() -> list[Path]:
    files = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in {".jpg", ".png", ".webp"})
    assert len(files) >= 4
    return files


def test_folder_images_are_the_shipped_files_as_they_are() -> None:
    files = shipped()
    cfg = ImagesConfig(source="folder", folder=str(PHOTOS))
    reqs = make(cfg).prepare("main", len(files) + 2)
    n = len(files)
    assert ids(reqs, n + 2) == [files[j % n].name for j in range(n + 2)]  # name order, wrapping
    for item, path in zip(reqs.images(), files, strict=True):
        image = decoded(item)
        assert item.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert item.mime == "image/jpeg"
        assert image.size == (item.width, item.height) == Image.open(path).size


def test_folder_images_shrink_to_max_side() -> None:
    files = shipped()
    cfg = ImagesConfig(source="folder", folder=str(PHOTOS), max_side=200, quality=80)
    items = make(cfg).prepare("main", len(files)).images()
    for item, path in zip(items, files, strict=True):
        original = Image.open(path).size
        image = decoded(item)
        assert image.format == "JPEG"
        assert max(image.size) == 200 and image.size == (item.width, item.height)
        assert image.size[0] / image.size[1] == pytest.approx(original[0] / original[1], rel=0.02)
        assert item.sha256 != hashlib.sha256(path.read_bytes()).hexdigest()
    large = ImagesConfig(source="folder", folder=str(PHOTOS), max_side=4096)
    kept = make(large).prepare("main", 1).images()[0]
    assert kept.sha256 == hashlib.sha256(files[0].read_bytes()).hexdigest()


def test_folder_keeps_each_files_format(tmp_path: Path) -> None:
    photo = Image.open(shipped()[0]).convert("RGB")
    photo.save(tmp_path / "a.png")
    photo.save(tmp_path / "b.webp", quality=80)
    shutil.copy(shipped()[0], tmp_path / "c.jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    cfg = ImagesConfig(source="folder", folder=str(tmp_path), max_side=100)
    items = make(cfg).prepare("main", 3).images()
    assert [x.id for x in items] == ["a.png", "b.webp", "c.jpeg"]
    assert [x.mime for x in items] == ["image/png", "image/webp", "image/jpeg"]
    assert [decoded(x).format for x in items] == ["PNG", "WEBP", "JPEG"]
    assert all(max(x.width, x.height) == 100 for x in items)


def test_folder_pool_and_errors(tmp_path: Path) -> None:
    n = len(shipped())
    cfg = ImagesConfig(source="folder", folder=str(PHOTOS), pool_size=3)
    reqs = make(cfg).prepare("main", 9)
    assert sorted({x.id for x in reqs.images()}) == [p.name for p in shipped()[:3]]
    with pytest.raises(ValueError, match="exceeds"):
        make(ImagesConfig(source="folder", folder=str(PHOTOS), pool_size=n + 1)).prepare("m", 1)
    with pytest.raises(LoadgenError, match="no usable image files"):
        make(ImagesConfig(source="folder", folder=str(tmp_path)))


def test_describe_says_what_was_built() -> None:
    wl = make(ImagesConfig(width=32, height=24, content="photo", pool_size=4))
    wl.prepare("main", 10)
    line = wl.describe()
    assert line.startswith("4 distinct images (photo 32x24 jpeg q85, pool of 4)")
    assert wl.bytes_built == sum(len(x.part) for x in wl.prepare("main", 10).images())
