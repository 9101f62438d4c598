"""Validate a chat or text completion body into the few things the simulator acts on.

Errors raise `ApiError`, which the server turns into vLLM's error body. Messages follow vLLM's
wording where vLLM has one (sampling parameter checks); the rest say plainly what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadgen.sim.images import ImageDecoder, ImageError, ImageInfo
from loadgen.sim.tokens import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    ImagePart,
    ImageSizeError,
    Message,
    Part,
    image_tokens,
    prompt_token_keys,
    text_token_keys,
)


class ApiError(Exception):
    """An error answered with vLLM's body {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        err_type: str = "BadRequestError",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.err_type = err_type
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.status,
            }
        }


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    stream: bool
    include_usage: bool
    continuous_usage: bool
    max_tokens: int
    max_tokens_param: int | None  # as sent (None: the rest of the context)
    min_tokens: int
    ignore_eos: bool
    seed: int | None
    prompt_keys: list[int]
    images: tuple[ImageInfo, ...]
    image_token_counts: tuple[int, ...]

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_keys)


@dataclass(frozen=True, slots=True)
class ParseLimits:
    max_model_len: int
    max_images: int = 16
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS


def _int_field(body: dict[str, Any], name: str, *, nullable: bool) -> int | None:
    value = body.get(name)
    if value is None:
        if name in body and not nullable:
            raise ApiError(f"{name}: Input should be a valid integer, got null", param=name)
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(f"{name}: Input should be a valid integer", param=name)
    if isinstance(value, float):
        if not value.is_integer():
            raise ApiError(f"{name}: Input should be a valid integer, got {value}", param=name)
        value = int(value)
    return value


def _bool_field(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(f"{name}: Input should be a valid boolean", param=name)
    return value


def _parts(
    content: object,
    index: int,
    decoder: ImageDecoder,
    limits: ParseLimits,
    images: list[ImageInfo],
) -> list[Part]:
    if isinstance(content, str):
        return [content]
    if content is None:
        return []
    if not isinstance(content, list):
        raise ApiError(f"messages[{index}].content must be a string or a list of parts")
    parts: list[Part] = []
    for j, part in enumerate(content):
        where = f"messages[{index}].content[{j}]"
        if not isinstance(part, dict):
            raise ApiError(f"{where} must be an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ApiError(f"{where}.text must be a string")
            parts.append(text)
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            try:
                info = decoder.decode(url)
                tokens = image_tokens(info.width, info.height, limits.min_pixels, limits.max_pixels)
            except (ImageError, ImageSizeError) as exc:
                raise ApiError(f"{where}: {exc}") from None
            parts.append(ImagePart(info.content_hash, tokens))
            images.append(info)
        else:
            raise ApiError(f"{where}: unsupported content part type {kind!r}")
    return parts


def parse_chat(
    body: object, served_models: tuple[str, ...], decoder: ImageDecoder, limits: ParseLimits
) -> ChatRequest:
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    model = _model(body, served_models)
    images: list[ImageInfo] = []
    messages = _messages(body, decoder, limits, images)
    image_counts = [p.tokens for m in messages for p in m.parts if isinstance(p, ImagePart)]
    keys = prompt_token_keys(messages)
    return _request(body, model, keys, tuple(images), tuple(image_counts), limits)


def parse_completion(
    body: object, served_models: tuple[str, ...], limits: ParseLimits
) -> ChatRequest:
    """A `/v1/completions` body: one text prompt (or its token ids), no images."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    model = _model(body, served_models)
    keys = _prompt_keys(body.get("prompt"))
    return _request(body, model, keys, (), (), limits)


def _request(
    body: dict[str, Any],
    model: str,
    keys: list[int],
    images: tuple[ImageInfo, ...],
    image_counts: tuple[int, ...],
    limits: ParseLimits,
) -> ChatRequest:
    """The sampling and streaming fields both APIs share, read after the prompt."""
    n = _int_field(body, "n", nullable=True)
    if n is not None and n != 1:
        raise ApiError(f"n must be 1 in the simulator, got {n}.", param="n")
    stream = _bool_field(body, "stream", False)
    include_usage, continuous_usage = _stream_options(body, stream)
    max_tokens, min_tokens = _token_limits(body)
    ignore_eos = _bool_field(body, "ignore_eos", False)
    seed = _int_field(body, "seed", nullable=True)
    return ChatRequest(
        model=model,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous_usage,
        max_tokens=_completion_room(len(keys), max_tokens, limits.max_model_len),
        max_tokens_param=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=ignore_eos,
        seed=seed,
        prompt_keys=keys,
        images=images,
        image_token_counts=image_counts,
    )


def _prompt_keys(prompt: object) -> list[int]:
    """A completion's prompt as token keys: a string, one string in a list, or token ids."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return text_token_keys(prompt)
    if isinstance(prompt, list) and prompt and all(type(t) is int and t >= 0 for t in prompt):
        return list(prompt)
    if prompt is None or prompt == "" or prompt == []:
        raise ApiError(
            "Either prompt or prompt_embeds must be provided and non-empty.", param="prompt"
        )
    raise ApiError(
        "prompt must be a string or a list of token ids (the simulator serves one prompt "
        "per request)",
        param="prompt",
    )


def _model(body: dict[str, Any], served_models: tuple[str, ...]) -> str:
    model = body.get("model")
    if model is None or model == "":
        return served_models[0]
    if not isinstance(model, str):
        raise ApiError("model: Input should be a valid string", param="model")
    if model not in served_models:
        raise ApiError(f"The model `{model}` does not exist.", 404, "NotFoundError", param="model")
    return model


def _messages(
    body: dict[str, Any], decoder: ImageDecoder, limits: ParseLimits, images: list[ImageInfo]
) -> list[Message]:
    """The messages, their images appended to `images` in order."""
    raw_messages = body.get("messages")
    if "messages" not in body:
        raise ApiError("messages: Field required", param="messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise ApiError("messages must be a non-empty list", param="messages")
    messages: list[Message] = []
    for i, raw in enumerate(raw_messages):
        if not isinstance(raw, dict):
            raise ApiError(f"messages[{i}] must be an object", param="messages")
        role = raw.get("role")
        if not isinstance(role, str) or not role:
            raise ApiError(f"messages[{i}].role must be a non-empty string", param="messages")
        parts = _parts(raw.get("content"), i, decoder, limits, images)
        messages.append(Message(role, tuple(parts)))
    if len(images) > limits.max_images:
        raise ApiError(
            f"At most {limits.max_images} image(s) may be provided in one prompt.",
            param="messages",
        )
    return messages


def _stream_options(body: dict[str, Any], stream: bool) -> tuple[bool, bool]:
    """(include_usage, continuous_usage_stats) as vLLM reads `stream_options`."""
    options = body.get("stream_options")
    if options is None:
        return False, False
    if not stream:
        raise ApiError(
            "Stream options can only be defined when `stream=True`.", param="stream_options"
        )
    if not isinstance(options, dict):
        raise ApiError("stream_options must be an object", param="stream_options")
    include_usage = _bool_field(options, "include_usage", True)
    return include_usage, _bool_field(options, "continuous_usage_stats", False)


def _token_limits(body: dict[str, Any]) -> tuple[int | None, int]:
    """(max_tokens as asked or None, min_tokens), checked against each other."""
    max_tokens = _int_field(body, "max_completion_tokens", nullable=True)
    if max_tokens is None:
        max_tokens = _int_field(body, "max_tokens", nullable=True)
    min_tokens = _int_field(body, "min_tokens", nullable=False) or 0
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")
    if min_tokens < 0:
        raise ApiError(f"min_tokens must be greater than or equal to 0, got {min_tokens}.")
    if max_tokens is not None and min_tokens > max_tokens:
        raise ApiError(
            f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.",
            param="min_tokens",
        )
    return max_tokens, min_tokens


def _completion_room(prompt_tokens: int, max_tokens: int | None, max_model_len: int) -> int:
    """The tokens the completion may have: as asked, or what the context leaves."""
    room = max_model_len - prompt_tokens
    wanted = max_tokens if max_tokens is not None else room
    if room < 1 or wanted > room:
        raise ApiError(
            f"This model's maximum context length is {max_model_len} tokens. However, "
            f"you requested {prompt_tokens + max(wanted, 0)} tokens ({prompt_tokens} in the "
            f"messages, {max(wanted, 0)} in the completion). Please reduce the length of the "
            "messages or completion.",
            param="messages",
        )
    return wanted
