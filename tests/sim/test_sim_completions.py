"""`/v1/completions` in the simulator: vLLM's text-completion stream shape, usage and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sim_helpers import TIMEOUT, chunks, metric, metrics, sse_events

from loadgen.sim.process import SimulatorProcess

# A stream captured from vLLM 0.32's OpenAI server (prompt "a photo of", max_tokens 3,
# include_usage and continuous_usage_stats): the reference for keys and their order.
CAPTURED = Path(__file__).parent / "data" / "vllm_completions_stream.txt"


def completion_body(
    prompt: object = "a photo of", max_tokens: int = 3, stream: bool = True, **options: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
    body["stream"] = stream
    if options:
        body["stream_options"] = options
    return body


def post(base_url: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as client:
        return client.post("/v1/completions", json=body)


def shape(chunk: dict[str, Any]) -> list[Any]:
    """A chunk's keys in order, with its choices' and usage's keys (values left out)."""
    out: list[Any] = [k for k in chunk if k != "system_fingerprint"]
    out += [list(c) for c in chunk["choices"]]
    if "usage" in chunk:
        out.append([k for k in chunk["usage"] if k != "prompt_tokens_details"])
    return out


def test_stream_has_the_captured_vllm_shape(sim: SimulatorProcess) -> None:
    real = chunks(sse_events(CAPTURED.read_bytes()))
    options = {"include_usage": True, "continuous_usage_stats": True}
    response = post(sim.base_url, completion_body(**options))
    events = sse_events(response.content)
    assert response.status_code == 200 and events[-1] == "[DONE]"
    ours = chunks(events)
    # A loaded writer may put several tokens in one chunk: compare the first, last content and
    # usage chunks, and every content chunk's shape with the captured one's.
    assert [shape(c) for c in (ours[0], ours[-2], ours[-1])] == [
        shape(c) for c in (real[0], real[-2], real[-1])
    ]
    assert all(shape(c) == shape(real[0]) for c in ours[:-2])
    assert {c["id"][:5] for c in ours} == {"cmpl-"}
    assert all(c["object"] == "text_completion" for c in ours)
    *content, usage_chunk = ours
    finishes = [c["choices"][0]["finish_reason"] for c in content]
    assert finishes[-1] == "length" and set(finishes[:-1]) <= {None}
    assert all(isinstance(c["choices"][0]["text"], str) for c in content)
    completion = [c["usage"]["completion_tokens"] for c in ours]
    assert completion[-2:] == [3, 3] and completion[:-1] == sorted(set(completion[:-1]))
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 3


def test_no_usage_unless_asked_and_no_role_chunk(sim: SimulatorProcess) -> None:
    ours = chunks(sse_events(post(sim.base_url, completion_body(max_tokens=4)).content))
    assert ours and ours[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c and "text" in c["choices"][0] for c in ours)


def test_whole_response(sim: SimulatorProcess) -> None:
    response = post(sim.base_url, completion_body(max_tokens=5, stream=False))
    body = response.json()
    assert response.status_code == 200 and body["object"] == "text_completion"
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length" and choice["text"]
    assert body["usage"]["completion_tokens"] == 5


def test_token_ids_prompt_counts_one_key_per_id(sim: SimulatorProcess) -> None:
    body = completion_body(prompt=[5, 6, 7, 8, 9], include_usage=True)
    usage = chunks(sse_events(post(sim.base_url, body).content))[-1]["usage"]
    assert usage["prompt_tokens"] == 5


def test_token_counts_equal_metric_increases(sim: SimulatorProcess) -> None:
    before = metrics(sim.base_url)
    prompt = completion = 0
    for i, text in enumerate(["a photo of", "describe the scene in detail", "x"]):
        body = completion_body(prompt=text, max_tokens=3 + i, include_usage=True)
        usage = chunks(sse_events(post(sim.base_url, body).content))[-1]["usage"]
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]
    after = metrics(sim.base_url)
    assert (
        metric(after, "vllm:prompt_tokens_total") - metric(before, "vllm:prompt_tokens_total")
        == prompt
    )
    assert (
        metric(after, "vllm:generation_tokens_total")
        - metric(before, "vllm:generation_tokens_total")
        == completion
        == 3 + 4 + 5
    )


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        ("", "Either prompt or prompt_embeds must be provided and non-empty."),
        (None, "Either prompt or prompt_embeds must be provided and non-empty."),
        ({"a": 1}, "prompt must be a string or a list of token ids"),
        (["a", "b"], "one prompt per request"),
        ([1, -2], "prompt must be a string or a list of token ids"),
    ],
)
def test_bad_prompts_are_vllms_400(sim: SimulatorProcess, prompt: object, fragment: str) -> None:
    response = post(sim.base_url, completion_body(prompt=prompt))
    assert response.status_code == 400
    error = response.json()["error"]
    assert fragment in error["message"] and error["param"] == "prompt"


def test_min_tokens_above_max_tokens_is_refused(sim: SimulatorProcess) -> None:
    response = post(sim.base_url, {"prompt": "x", "max_tokens": 3, "min_tokens": 5})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "min_tokens must be less than or equal to max_tokens=3, got 5."
    )
