"""The bytes of vLLM's two completion APIs: chat (`/v1/chat/completions`) and text
(`/v1/completions`), streamed and whole.

Captured from vLLM's OpenAI server: a chat stream opens with a role chunk and carries text in
`choices[0].delta.content`; a text-completion stream has no role chunk and carries text in
`choices[0].text`, with `prompt_token_ids` and `token_ids` set to null on every choice. Both end
with a usage chunk whose `choices` is empty when `stream_options.include_usage` is set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class ApiShape:
    """How one API names its responses and where it puts a choice's text."""

    name: str  # "chat" or "completion"
    id_prefix: str
    chunk_object: bytes
    role_choice: bytes  # the opening chunk's choice, or b"" where the API has none
    text_open: bytes  # a choice up to its text
    choice_close: bytes  # after the text, while the choice goes on
    choice_finish: bytes  # after the text of the last choice; %s is the finish reason

    def head(self, request_id: str, model: str) -> bytes:
        """Every chunk's start, up to its first choice."""
        return (
            b'data: {"id":"' + request_id.encode() + b'","object":"' + self.chunk_object
            + b'","created":' + str(int(time.time())).encode()
            + b',"model":' + orjson.dumps(model) + b',"choices":['
        )  # fmt: skip

    def content(self, head: bytes, text: str, finish: str | None) -> bytes:
        """A content chunk up to its usage tail; the last one carries the finish reason."""
        close = self.choice_close if finish is None else self.choice_finish % finish.encode()
        return head + self.text_open + orjson.dumps(text) + close


CHAT = ApiShape(
    name="chat",
    id_prefix="chatcmpl-",
    chunk_object=b"chat.completion.chunk",
    role_choice=(
        b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
        b'"finish_reason":null}]'
    ),
    text_open=b'{"index":0,"delta":{"content":',
    choice_close=b'},"logprobs":null,"finish_reason":null}]',
    choice_finish=b'},"logprobs":null,"finish_reason":"%s","stop_reason":null}]',
)

COMPLETION = ApiShape(
    name="completion",
    id_prefix="cmpl-",
    chunk_object=b"text_completion",
    role_choice=b"",
    text_open=b'{"index":0,"text":',
    choice_close=(
        b',"logprobs":null,"finish_reason":null,"stop_reason":null,'
        b'"prompt_token_ids":null,"token_ids":null}]'
    ),
    choice_finish=(
        b',"logprobs":null,"finish_reason":"%s","stop_reason":null,'
        b'"prompt_token_ids":null,"token_ids":null}]'
    ),
)


def whole_response(
    shape: ApiShape, request_id: str, model: str, text: str, finish: str | None,
    usage: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The body of a request sent without `stream`."""
    if shape is CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": [],
                "reasoning_content": None,
            },
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
        }
        obj = "text_completion"
    body: dict[str, Any] = {
        "id": request_id,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage,
    }
    if shape is CHAT:
        body["prompt_logprobs"] = None
    body["kv_transfer_params"] = None
    return body
