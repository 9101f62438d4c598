"""Mixes of synthetic images and of images per request: parsed with clear errors, drawn per
request from the seed (the same in every process), in the shares asked for."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadgen.datasets.mix import ImageVariant, Weighted, parse_count, parse_mix, uniform


def test_uniform_is_stable_and_in_range() -> None:
    values = [uniform(7, "images", i) for i in range(1000)]
    assert values == [uniform(7, "images", i) for i in range(1000)]
    assert all(0.0 <= u < 1.0 for u in values)
    assert values != [uniform(8, "images", i) for i in range(1000)]
    assert 0.45 < sum(values) / len(values) < 0.55


def test_a_fixed_count() -> None:
    count = parse_count(2, 16)
    assert {count.draw(uniform(1, "n", i)) for i in range(100)} == {2}
    assert (count.most, count.mean, count.spec) == (2, 2.0, "2")


def test_a_range_draws_every_count_about_equally() -> None:
    count = parse_count({"min": 1, "max": 4}, 16)
    drawn = Counter(count.draw(uniform(3, "n", i)) for i in range(8000))
    assert set(drawn) == {1, 2, 3, 4}
    assert all(1800 < n < 2200 for n in drawn.values())
    assert count.most == 4 and count.mean == pytest.approx(2.5)
    assert count.spec == "{ min = 1, max = 4 }"


def test_weighted_counts_follow_their_shares() -> None:
    count = parse_count({"1": 70, "3": 30}, 16)
    drawn = Counter(count.draw(uniform(5, "n", i)) for i in range(10000))
    assert set(drawn) == {1, 3}
    assert 0.68 < drawn[1] / 10000 < 0.72
    assert count.mean == pytest.approx(1.6)
    assert count.spec == "{ 1 = 70, 3 = 30 }"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("2", "expected a whole number"),
        (2.5, "expected a whole number"),
        (-1, "expected 0 to 16 images"),
        (17, "expected 0 to 16 images"),
        ({}, "expected a whole number"),
        ({"min": 3, "max": 1}, "min (3) is above max (1)"),
        ({"min": 1, "max": 40}, "max: expected 0 to 16"),
        ({"min": 1.0, "max": 2}, "min: expected a whole number"),
        ({"one": 1}, "image counts (0, 1, 2, ...) as keys"),
        ({"1": 0}, "a weight is a number above 0"),
        ({"1": float("nan")}, "a weight is a number above 0"),
        ({"1": True}, "a weight is a number above 0"),
    ],
)
def test_bad_counts_say_what_is_wrong(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_count(value, 16)
    assert fragment in str(info.value)


def test_a_mix_of_sizes_and_formats() -> None:
    mix = parse_mix(
        [
            {"size": "448x336", "format": "jpeg", "weight": 60},
            {"size": "1280x720", "format": "png", "weight": 30},
            {"size": "20x20", "weight": 10},
        ],
        "webp",
        "photo",
    )
    assert mix.values[2] == ImageVariant(20, 20, "webp", "photo", 10.0)
    drawn = Counter(mix.pick(uniform(9, "mix", i)).name for i in range(10000))
    assert 0.58 < drawn["448x336-jpeg-photo"] / 10000 < 0.62
    assert 0.28 < drawn["1280x720-png-photo"] / 10000 < 0.32
    assert 0.08 < drawn["20x20-webp-photo"] / 10000 < 0.12
    assert mix.share(mix.values[0]) == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        ([], "expected a list"),
        ("448x336", "expected a list"),
        ([3], "[0]: expected a table"),
        ([{"size": "448x336", "colour": "red"}], "unknown key(s) colour"),
        ([{"size": "448*336"}], '[0].size: expected "WIDTHxHEIGHT"'),
        ([{"size": "0x10"}], '[0].size: expected "WIDTHxHEIGHT"'),
        ([{"size": "20000x10"}], "sides up to 16384"),
        ([{"size": "8x8", "format": "gif"}], "[0].format: one of jpeg, png, webp"),
        ([{"size": "8x8", "content": "cats"}], "[0].content: one of"),
        ([{"size": "8x8", "weight": -1}], "[0].weight: a weight is a number above 0"),
    ],
)
def test_bad_mixes_say_what_is_wrong(items: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_mix(items, "jpeg", "photo")
    assert fragment in str(info.value)


@given(
    st.lists(st.floats(min_value=1e-6, max_value=1e6), min_size=1, max_size=12),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_pick_returns_one_of_the_values(weights: list[float], u: float) -> None:
    table = Weighted.of(list(enumerate(weights)))
    assert table.pick(u) in range(len(weights))
    assert table.cumulative[-1] == 1.0
    assert sum(table.share(i) for i in range(len(weights))) == pytest.approx(1.0)
