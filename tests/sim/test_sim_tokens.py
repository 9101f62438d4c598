"""The prompt token rule: text pieces, Qwen2-VL image tokens, chat template overhead."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loadgen.sim.tokens import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    ImagePart,
    Message,
    image_tokens,
    prompt_token_keys,
    smart_resize,
    text_pieces,
)


def test_seed_case_prompt_is_220_tokens() -> None:
    # 11 default system + 3 "<|im_start|>user\n" + 1+192+1 image + 7 text + 2 "<|im_end|>\n"
    # + 3 "<|im_start|>assistant\n"
    assert image_tokens(448, 336) == 192
    assert text_pieces("Describe this image in one sentence.") == [
        "Describe", " this", " image", " in", " one", " sentence", ".",
    ]  # fmt: skip
    message = Message("user", (ImagePart(1, 192), "Describe this image in one sentence."))
    assert len(prompt_token_keys([message])) == 220


def test_system_message_replaces_the_default_one() -> None:
    user = Message("user", ("Hi",))
    default = len(prompt_token_keys([user]))
    custom = len(prompt_token_keys([Message("system", ("Be brief.",)), user]))
    # Default system text has 6 tokens ("You are a helpful assistant."), "Be brief." has 3.
    assert default - custom == 3


def test_smart_resize_examples() -> None:
    assert smart_resize(336, 448) == (336, 448)
    assert smart_resize(10, 10) == (56, 56)  # raised to min_pixels
    assert image_tokens(10, 10) == 4
    assert smart_resize(500, 500) == (504, 504)  # rounded to the nearest multiple of 28
    h, w = smart_resize(8000, 8000)
    assert h * w <= DEFAULT_MAX_PIXELS and h % 28 == 0 and w % 28 == 0


@given(st.integers(1, 6000), st.integers(1, 6000))
def test_smart_resize_properties(height: int, width: int) -> None:
    if max(height, width) / min(height, width) > 200:
        return
    h, w = smart_resize(height, width)
    assert h % 28 == 0 and w % 28 == 0
    assert h * w <= DEFAULT_MAX_PIXELS
    assert h * w >= DEFAULT_MIN_PIXELS
    assert image_tokens(width, height) == (h // 28) * (w // 28)


@given(st.text(max_size=200))
def test_text_pieces_are_lossless_and_non_empty(text: str) -> None:
    pieces = text_pieces(text)
    assert "".join(pieces) == text
    assert all(pieces)


@given(st.lists(st.from_regex(r"[a-z]{1,10}", fullmatch=True), min_size=1, max_size=30))
def test_each_short_word_is_one_token(words: list[str]) -> None:
    assert len(text_pieces(" ".join(words))) == len(words)


def test_long_words_cost_one_token_per_ten_letters() -> None:
    assert len(text_pieces("a" * 10)) == 1
    assert len(text_pieces(" " + "a" * 11)) == 2
    assert len(text_pieces("a" * 25)) == 3
