"""The endpoints loadgen ships besides chat: text completions (streamed) and chat or text
completions unstreamed. Their bodies, their parsers (any split of the bytes, and what a hostile
server may send) and what an unstreamed record means to the figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.client import ClientSettings, request_headers
from loadgen.config import WorkloadConfig
from loadgen.endpoints import ENDPOINTS, api_for_path, endpoint_named
from loadgen.endpoints.completions import CompletionsParser
from loadgen.endpoints.unstreamed import (
    MAX_BODY_BYTES,
    UnstreamedCompletionsParser,
    UnstreamedParser,
)
from loadgen.errors import ScenarioError
from loadgen.metrics.summary import PhaseAccumulator
from loadgen.records import Outcome, RequestRecord
from loadgen.scenario import load_scenario
from loadgen.stream import StreamParser
from loadgen.workload import Workload

CAPTURED = Path(__file__).parent / "sim" / "data" / "vllm_completions_stream.txt"
SAMPLING = {"max_tokens": 3, "temperature": 0.0}


def record(end: float = 9.0) -> RequestRecord:
    return RequestRecord(index=0, phase="p", shard=0, target="t", intended=0.5, sent=1.0, end=end)


def read(parser: StreamParser, parts: list[bytes], end: float = 9.0) -> RequestRecord:
    for i, part in enumerate(parts):
        parser.feed(part, 2.0 + i)
    parser.close(end)
    rec = record(end)
    parser.fill(rec)
    return rec


def split(data: bytes, step: int) -> list[bytes]:
    return [data[i : i + step] for i in range(0, len(data), step)]


# ---- bodies -------------------------------------------------------------------------------------


def body(api: str, **cfg: Any) -> dict[str, Any]:
    workload = WorkloadConfig(images_per_request=0, prompts=("a photo of",), max_tokens=3, **cfg)
    reqs = Workload(workload, 1, "m", api=api).prepare("main", 1)
    doc: dict[str, Any] = orjson.loads(reqs.body(0))
    return doc


def test_the_registry_names_every_endpoint_and_its_path() -> None:
    paths = {name: (e.path, e.accepts_images, e.streamed) for name, e in ENDPOINTS.items()}
    assert paths == {
        "chat": ("/v1/chat/completions", True, True),
        "completions": ("/v1/completions", False, True),
        "chat-unstreamed": ("/v1/chat/completions", True, False),
        "completions-unstreamed": ("/v1/completions", False, False),
    }
    # a path alone means its streamed endpoint
    assert api_for_path("/v1/completions") == "completions"
    assert api_for_path("/v1/chat/completions") == "chat"


def test_each_endpoint_writes_its_body() -> None:
    streamed = {
        **SAMPLING,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    whole = {**SAMPLING, "stream": False}
    messages = [{"role": "user", "content": [{"type": "text", "text": "a photo of"}]}]
    assert body("completions") == {"model": "m", "prompt": "a photo of", **streamed}
    assert body("completions-unstreamed") == {"model": "m", "prompt": "a photo of", **whole}
    assert body("chat-unstreamed") == {"model": "m", "messages": messages, **whole}
    assert body("chat") == {"model": "m", "messages": messages, **streamed}
    extra = body("completions-unstreamed", ignore_eos=True, extra_body=(("seed", 4),))
    assert list(extra)[-2:] == ["ignore_eos", "seed"]


def test_an_unstreamed_endpoint_asks_for_json() -> None:
    def accept(api: str) -> str:
        settings = ClientSettings(pool_size=0, connect_timeout=1, read_timeout=1, api=api)
        return request_headers(settings)["Accept"]

    assert accept("chat") == accept("completions") == "text/event-stream"
    assert accept("chat-unstreamed") == accept("completions-unstreamed") == "application/json"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_a_scenario_names_them_and_is_refused_what_they_cannot_send(tmp_path: Path) -> None:
    base = "[load]\nrequests = 1\n[workload]\nimages_per_request = 0\n"
    for api, path in [
        ("completions", "/v1/completions"),
        ("chat-unstreamed", "/v1/chat/completions"),
        ("completions-unstreamed", "/v1/completions"),
    ]:
        scenario = load_scenario(write(tmp_path, f'[target]\napi = "{api}"\n' + base))
        assert (scenario.target.api, scenario.target.endpoint) == (api, path)
    with pytest.raises(ScenarioError, match=r"\[target\] api: 'completions': .* no system prompt"):
        load_scenario(
            write(tmp_path, '[target]\napi = "completions"\n' + base + 'system_prompt = "x"\n')
        )
    with pytest.raises(ScenarioError, match=r"extra_body\.prompt: loadgen sets this itself"):
        load_scenario(
            write(tmp_path, base + '[workload.extra_body]\nprompt = "x"\n'),
        )
    with pytest.raises(ScenarioError, match="api 'completions-unstreamed' takes no images"):
        load_scenario(write(tmp_path, '[target]\napi = "completions-unstreamed"\n[load]\n'))


# ---- the text completions stream ---------------------------------------------------------------


def test_the_captured_vllm_completions_stream_in_any_reads() -> None:
    data = CAPTURED.read_bytes()
    for step in (1, 7, 50, 333, len(data)):
        rec = read(CompletionsParser(), split(data, step))
        assert rec.outcome is Outcome.OK, step
        assert (rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens) == (3, 3, 0)
        assert rec.chunk_tokens == [1, 1, 1] and len(rec.chunk_times) == 3
        assert rec.finish_reason == "length" and rec.streamed


# ---- unstreamed answers ------------------------------------------------------------------------


def chat_answer(completion: int = 5, **changes: Any) -> dict[str, Any]:
    """A whole chat completion in vLLM's shape."""
    message = {"role": "assistant", "content": "a cat", "reasoning_content": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "length"}
    usage = {"prompt_tokens": 40, "total_tokens": 40 + completion, "completion_tokens": completion}
    usage["prompt_tokens_details"] = {"cached_tokens": 16}  # type: ignore[assignment]
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice], "usage": usage}
    return answer | changes


def test_a_whole_chat_answer_in_any_reads_is_one_arrival_at_the_end() -> None:
    data = orjson.dumps(chat_answer())
    for step in (1, 13, len(data)):
        rec = read(UnstreamedParser(), split(data, step), end=9.0)
        assert rec.outcome is Outcome.OK and rec.error is None
        assert (rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens) == (40, 5, 16)
        assert rec.finish_reason == "length"
        assert rec.first_token == rec.end == 9.0 and rec.ttft == rec.e2e
        assert rec.chunk_times == [] and rec.chunk_tokens == []
        assert rec.streamed is False and rec.tpot is None
    line = rec.to_json()
    assert line["streamed"] is False and "streamed" not in record().to_json()
    assert RequestRecord.from_json(orjson.loads(orjson.dumps(line))) == rec


def test_a_whole_text_completion() -> None:
    choice = {"index": 0, "text": " a cat", "finish_reason": "stop", "stop_reason": None}
    answer = {"object": "text_completion", "choices": [choice], "usage": {"completion_tokens": 2}}
    rec = read(UnstreamedCompletionsParser(), [orjson.dumps(answer)])
    assert (rec.outcome, rec.completion_tokens, rec.finish_reason) == (Outcome.OK, 2, "stop")
    bad = {**answer, "choices": [{**choice, "text": 7}]}
    rec = read(UnstreamedCompletionsParser(), [orjson.dumps(bad)])
    assert rec.outcome is Outcome.MALFORMED and "a choice's text is not a string" in str(rec.error)


def test_an_answer_without_usage_and_an_error_answer() -> None:
    rec = read(UnstreamedParser(), [orjson.dumps({"choices": chat_answer()["choices"]})])
    assert (rec.outcome, rec.error) == (Outcome.MISSING_USAGE, "no usage in the answer")
    assert rec.first_token == rec.end  # the answer did arrive
    error = {"error": {"message": "boom", "code": 500}}
    rec = read(UnstreamedParser(), [orjson.dumps(error)])
    assert (rec.outcome, rec.error, rec.first_token) == (
        Outcome.STREAM_ERROR,
        "boom (code 500)",
        None,
    )


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        (b"", "an empty response body"),
        (b"data: {}\n\n", "an undecodable response body"),
        (b"[1, 2]", "the response body is not a JSON object"),
        (b"{}", "an answer without choices"),
        (b'{"choices": []}', "an answer without choices"),
        (b'{"choices": {"0": 1}}', "an answer without choices"),
        (b'{"choices": [5]}', "a choice is not an object"),
        (b'{"choices": [{"message": 5}]}', "a choice's message is not an object"),
        (b'{"choices": [{"message": {"content": 5}}]}', "a message's content is not a string"),
        (b'{"choices": [{"finish_reason": 5}]}', "a choice's finish_reason is not a string"),
        (b'{"choices": [{}], "usage": 5}', "usage is not an object"),
        (b'{"choices": [{}], "usage": {"completion_tokens": -1}}', "not a token count"),
        (b'{"choices": [{}], "usage": {"prompt_tokens": 1e400}}', "undecodable"),
        (b"[" * 5000 + b"]" * 5000, "undecodable"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_malformed(answer: bytes, what: str) -> None:
    rec = read(UnstreamedParser(), [answer])
    assert rec.outcome is Outcome.MALFORMED
    assert rec.error is not None and what in rec.error and len(rec.error) <= 400
    assert rec.first_token is None and rec.completion_tokens is None


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=6),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner),
        max_leaves=20,
    ),
    st.sampled_from(["choices", "usage", "error", "message"]),
)
def test_json_of_any_shape_never_raises(value: object, key: str) -> None:
    answer = chat_answer()
    if key == "message":
        answer["choices"][0]["message"] = value
    else:
        answer[key] = value
    rec = read(UnstreamedParser(), [orjson.dumps(answer, option=orjson.OPT_NON_STR_KEYS)])
    assert rec.outcome in set(Outcome) and rec.streamed is False
    orjson.dumps(rec.to_json())


def test_an_enormous_body_is_malformed_and_never_held_whole() -> None:
    parser = UnstreamedParser()
    read_size = 256 * 1024
    filler = b'{"choices": [{"message": {"content": "' + b"x" * read_size
    parser.feed(filler, 1.0)
    for i in range(2 * MAX_BODY_BYTES // read_size):
        parser.feed(b"y" * read_size, 2.0 + i)
        assert len(parser._body) <= MAX_BODY_BYTES
    rec = read(parser, [b'"}}]}'])
    assert rec.outcome is Outcome.MALFORMED
    assert "a response body over 8 MiB" in str(rec.error) and "choices" in str(rec.error)
    assert rec.first_token is None


def test_a_body_just_under_the_cap_is_read() -> None:
    answer = chat_answer()
    answer["choices"][0]["message"]["content"] = "x" * (MAX_BODY_BYTES - 400)
    data = orjson.dumps(answer)
    assert len(data) <= MAX_BODY_BYTES
    assert read(UnstreamedParser(), split(data, 64 * 1024)).outcome is Outcome.OK


def test_a_failed_request_has_no_arrival() -> None:
    parser = UnstreamedParser()
    parser.feed(orjson.dumps(chat_answer())[:30], 2.0)
    rec = record()
    parser.fill(rec)  # as the transports do when the connection drops: no close
    assert rec.first_token is None and rec.streamed is False


def test_unstreamed_figures_have_ttft_equal_to_e2e_and_no_itl_or_tpot() -> None:
    acc = PhaseAccumulator("p")
    for i in range(4):
        rec = read(UnstreamedParser(), [orjson.dumps(chat_answer(completion=5 + i))], 3.0 + i)
        acc.add(rec)
    phase = acc.finish()
    ttft, e2e = phase.latency_ms["ttft"], phase.latency_ms["e2e"]
    assert ttft.count == e2e.count == 4 and ttft.p50 == e2e.p50
    assert phase.latency_ms["tpot"].count == phase.latency_ms["itl"].count == 0
    assert phase.tokens.generation == 5 + 6 + 7 + 8
    assert endpoint_named("chat-unstreamed").parser is UnstreamedParser
