"""The simulator as a real process: vLLM's stream shape, usage, metrics, caches, timing."""

from __future__ import annotations

import concurrent.futures
import itertools

import httpx
import orjson
import pytest
from sim_helpers import (
    TIMEOUT,
    chat_body,
    chunks,
    image_url,
    metric,
    metrics,
    stream_chat,
)
from vllm_log_format import line_regex

from loadgen.sim.process import SimulatorProcess
from loadgen.sim.tokens import image_tokens

SEED_PROMPT_TOKENS = 220  # one 448x336 image + the seed prompt, by the documented rule


def test_stream_has_vllms_exact_shape(sim: SimulatorProcess) -> None:
    status, events = stream_chat(sim.base_url, chat_body([image_url(seed=101)], max_tokens=6))
    assert status == 200
    assert events[-1] == "[DONE]"
    parsed = chunks(events)
    first, *content, usage_chunk = parsed
    ids = {c["id"] for c in parsed}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for c in parsed:
        assert list(c)[:5] == ["id", "object", "created", "model", "choices"]
        assert c["object"] == "chat.completion.chunk" and c["model"] == "sim-vlm"
        assert isinstance(c["created"], int)
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
         "finish_reason": None}
    ]  # fmt: skip
    assert "usage" not in first
    for c in content[:-1]:
        (choice,) = c["choices"]
        assert choice == {"index": 0, "delta": {"content": choice["delta"]["content"]},
                          "logprobs": None, "finish_reason": None}  # fmt: skip
    last = content[-1]["choices"][0]
    assert last["finish_reason"] == "length" and last["stop_reason"] is None
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": SEED_PROMPT_TOKENS, "total_tokens": SEED_PROMPT_TOKENS + 6,
        "completion_tokens": 6,
    }  # fmt: skip
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert text.strip()


def test_continuous_usage_counts_every_token(sim: SimulatorProcess) -> None:
    body = chat_body([image_url(seed=102)], max_tokens=12, continuous=True)
    _, events = stream_chat(sim.base_url, body)
    parsed = chunks(events)
    assert all("usage" in c for c in parsed)
    completion = [c["usage"]["completion_tokens"] for c in parsed]
    assert completion[0] == 0 and completion[-1] == 12
    assert completion == sorted(completion)
    # The usage chunk repeats the total; before it every chunk carries at least one token.
    deltas = [b - a for a, b in itertools.pairwise(completion[:-1])]
    assert sum(deltas) == 12 and all(d >= 1 for d in deltas)
    assert all(c["usage"]["prompt_tokens"] == SEED_PROMPT_TOKENS for c in parsed)


def test_no_usage_unless_asked(sim: SimulatorProcess) -> None:
    _, events = stream_chat(sim.base_url, chat_body(max_tokens=3, usage=False))
    assert all("usage" not in c and c["choices"] for c in chunks(events))


def test_non_streaming_response(sim: SimulatorProcess) -> None:
    body = chat_body([image_url(seed=103)], max_tokens=5, stream=False)
    response = httpx.post(sim.base_url + "/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert response.status_code == 200
    doc = response.json()
    assert doc["object"] == "chat.completion" and doc["id"].startswith("chatcmpl-")
    (choice,) = doc["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 5
    assert doc["usage"]["prompt_tokens"] == SEED_PROMPT_TOKENS


def test_stop_at_eos_respects_min_tokens(sim_server) -> None:  # type: ignore[no-untyped-def]
    server = sim_server("--eos-mean-tokens", "2")
    for min_tokens in (0, 5, 20):
        body = chat_body(max_tokens=200, continuous=True, ignore_eos=False, min_tokens=min_tokens)
        _, events = stream_chat(server.base_url, body)
        parsed = chunks(events)
        finish = [c["choices"][0]["finish_reason"] for c in parsed if c["choices"]][-1]
        n = parsed[-1]["usage"]["completion_tokens"]
        assert finish == "stop" and min_tokens < n < 200


def test_small_routes(sim: SimulatorProcess) -> None:
    with httpx.Client(base_url=sim.base_url, timeout=TIMEOUT) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/version").json()["version"]
        models = client.get("/v1/models").json()
        assert models["object"] == "list"
        assert [m["id"] for m in models["data"]] == ["sim-vlm"]
        assert models["data"][0]["owned_by"] == "vllm"
        text = client.get("/metrics").text
        assert 'vllm:prompt_tokens_total{engine="0",model_name="sim-vlm"}' in text


def test_unknown_model_is_vllms_404(sim: SimulatorProcess) -> None:
    body = chat_body(max_tokens=2, model="no-such-model")
    response = httpx.post(sim.base_url + "/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert response.status_code == 404
    assert response.json() == {
        "error": {"message": "The model `no-such-model` does not exist.", "type": "NotFoundError",
                  "param": "model", "code": 404}
    }  # fmt: skip


def test_token_counts_equal_metric_increases(sim: SimulatorProcess) -> None:
    before = metrics(sim.base_url)
    prompt = completion = 0
    for i, size in enumerate([(448, 336), (64, 64), (1000, 700), (300, 1200)]):
        body = chat_body([image_url(*size, seed=200 + i)], max_tokens=4 + i)
        _, events = stream_chat(sim.base_url, body)
        usage = chunks(events)[-1]["usage"]
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]
    after = metrics(sim.base_url)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("vllm:prompt_tokens_total") == prompt
    assert delta("vllm:generation_tokens_total") == completion
    assert delta("vllm:request_success_total", finished_reason="length") == 4
    assert delta("vllm:request_prompt_tokens_sum") == prompt
    assert delta("vllm:request_generation_tokens_sum") == completion
    assert delta("vllm:time_to_first_token_seconds_count") == 4
    assert delta("vllm:inter_token_latency_seconds_count") == completion - 4


@pytest.mark.parametrize("size", [(448, 336), (56, 56), (1280, 720), (333, 777), (20, 3000)])
def test_image_tokens_follow_the_documented_rule(
    sim: SimulatorProcess, size: tuple[int, int]
) -> None:
    text_only = chunks(stream_chat(sim.base_url, chat_body(max_tokens=1))[1])[-1]["usage"]
    with_image = chunks(
        stream_chat(sim.base_url, chat_body([image_url(*size, seed=300, fmt="PNG")], max_tokens=1))[
            1
        ]
    )[-1]["usage"]
    # The image adds its placeholder tokens plus <|vision_start|> and <|vision_end|>.
    assert with_image["prompt_tokens"] - text_only["prompt_tokens"] == image_tokens(*size) + 2


def test_repeated_image_hits_the_mm_cache(sim: SimulatorProcess) -> None:
    url = image_url(seed=400)
    before = metrics(sim.base_url)
    for _ in range(3):
        stream_chat(sim.base_url, chat_body([url], max_tokens=2, text=f"Caption {_}."))
    after = metrics(sim.base_url)
    assert (
        metric(after, "vllm:mm_cache_queries_total") - metric(before, "vllm:mm_cache_queries_total")
        == 3
    )
    assert (
        metric(after, "vllm:mm_cache_hits_total") - metric(before, "vllm:mm_cache_hits_total") == 2
    )


def _ttft_sum(base_url: str) -> float:
    return metric(metrics(base_url), "vllm:time_to_first_token_seconds_sum")


def test_repeated_prefix_hits_the_prefix_cache_and_lowers_ttft(sim_server) -> None:  # type: ignore[no-untyped-def]
    # A costly prefill (1 ms per computed prompt token) makes the cache's saving ~200 ms.
    server = sim_server("--step-per-prefill-token-ms", "1", "--enable-prompt-tokens-details")
    url = image_url(seed=500)
    ttfts, cached = [], []
    for _ in range(2):
        before_ttft = _ttft_sum(server.base_url)
        before = metrics(server.base_url)
        _, events = stream_chat(server.base_url, chat_body([url], max_tokens=2))
        after = metrics(server.base_url)
        ttfts.append(_ttft_sum(server.base_url) - before_ttft)
        usage = chunks(events)[-1]["usage"]
        cached.append(usage.get("prompt_tokens_details", {}).get("cached_tokens", 0))
        hits = metric(after, "vllm:prefix_cache_hits_total") - metric(
            before, "vllm:prefix_cache_hits_total"
        )
        assert hits == cached[-1]
    assert cached == [0, 208]
    assert ttfts[1] < ttfts[0] / 3


def test_ttft_grows_with_concurrency(sim_server) -> None:  # type: ignore[no-untyped-def]
    server = sim_server(
        "--max-num-batched-tokens", "256", "--step-per-prefill-token-ms", "0.5",
        "--step-base-ms", "2", "--no-enable-prefix-caching", "--mm-processor-cache-gb", "0",
    )  # fmt: skip

    def mean_ttft(n: int, seed: int) -> float:
        before = metrics(server.base_url)
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            bodies = [chat_body([image_url(seed=seed + i)], max_tokens=2) for i in range(n)]
            list(pool.map(lambda b: stream_chat(server.base_url, b), bodies))
        after = metrics(server.base_url)
        total = metric(after, "vllm:time_to_first_token_seconds_sum") - metric(
            before, "vllm:time_to_first_token_seconds_sum"
        )
        return total / n

    single = mean_ttft(1, 600)
    many = mean_ttft(8, 700)
    # 8 x 220 prompt tokens need 7 steps of 256 at about 130 ms each; one needs a single step.
    assert many > 2 * single


def test_stats_log_line_matches_vllms_format(sim: SimulatorProcess) -> None:
    start = len(sim.log_lines())
    stream_chat(sim.base_url, chat_body([image_url(seed=800)], max_tokens=20))
    line = sim.wait_for_log("Engine 000:", timeout=5.0, start=start)
    message = line[line.index("Engine 000:") :]
    match = line_regex().match(message)
    assert match, message
    assert "MM cache hit rate" in message


def test_concurrent_streams_all_complete(sim: SimulatorProcess) -> None:
    body = chat_body([image_url(seed=900)], max_tokens=30, continuous=True)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: stream_chat(sim.base_url, body), range(16)))
    for status, events in results:
        assert status == 200 and events[-1] == "[DONE]"
        assert chunks(events)[-1]["usage"]["completion_tokens"] == 30
        assert orjson.loads(events[-2])["choices"] == []
