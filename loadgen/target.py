"""Where the load goes: base URLs, the API key, the model, and a reachability check.

Precedence for the URL: --url, then the scenario's [target] url, then OPENAI_BASE_URL; with none
of them the built-in simulator is started. The API key comes from the environment variable named
by `api_key_env` (default OPENAI_API_KEY) or from `api_key_file`; it is never printed or written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import orjson

from loadgen.client import ClientSettings, headers_for_control, server_root
from loadgen.config import TargetConfig
from loadgen.errors import TargetError
from loadgen.safetext import key_problem, redact


def urls_from_environment(target: TargetConfig) -> tuple[str, ...]:
    if target.urls:
        return target.urls
    env = os.environ.get("OPENAI_BASE_URL", "").strip()
    return (env.rstrip("/"),) if env else ()


def read_api_key(target: TargetConfig) -> str | None:
    if target.api_key_file:
        path = Path(target.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TargetError(f"cannot read the API key file {path}: {exc.strerror}") from None
        if not key:
            raise TargetError(f"the API key file {path} is empty")
        problem = key_problem(key)  # a second line would be sent as a header of its own
        if problem:
            raise TargetError(f"the API key file {path} cannot be used: {problem}")
        return key
    key = os.environ.get(target.api_key_env, "").strip() if target.api_key_env else ""
    problem = key_problem(key)
    if problem:
        raise TargetError(f"the API key in ${target.api_key_env} cannot be used: {problem}")
    return key or None


@dataclass(frozen=True, slots=True)
class ServerInfo:
    models: tuple[str, ...]
    reachable: bool
    problem: str = ""


async def probe(base_url: str, settings: ClientSettings) -> ServerInfo:
    """GET /v1/models: is the server there, and which models does it serve?"""
    info = await _probe(base_url, settings)
    if info.problem and settings.api_key:  # an HTTP library's message may quote the headers
        return ServerInfo(info.models, info.reachable, redact(info.problem, settings.api_key))
    return info


async def _probe(base_url: str, settings: ClientSettings) -> ServerInfo:
    url = server_root(base_url) + "/v1/models"
    timeout = httpx.Timeout(settings.connect_timeout, read=max(settings.connect_timeout, 30.0))
    try:
        async with httpx.AsyncClient(
            timeout=timeout, verify=settings.verify_tls, headers=headers_for_control(settings)
        ) as client:
            response = await client.get(url)
    except httpx.ConnectError as exc:
        return ServerInfo((), False, f"cannot connect to {url}: {exc or type(exc).__name__}")
    except httpx.TimeoutException:
        return ServerInfo((), False, f"no answer from {url} within {timeout.read:.0f} s")
    except httpx.HTTPError as exc:
        return ServerInfo((), False, f"{url}: {type(exc).__name__}: {exc}")
    if response.status_code != 200:
        hint = " (check the API key)" if response.status_code in (401, 403) else ""
        return ServerInfo((), True, f"{url} answered HTTP {response.status_code}{hint}")
    try:
        doc = orjson.loads(response.content)
        models = tuple(str(m["id"]) for m in doc["data"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ServerInfo((), True, f"{url} did not answer a model list")
    return ServerInfo(models, True)


async def probe_all(urls: Sequence[str], settings: ClientSettings) -> list[ServerInfo]:
    """`probe` of every URL, concurrently, in the order given."""
    infos: list[ServerInfo | None] = [None] * len(urls)

    async def one(k: int) -> None:
        infos[k] = await probe(urls[k], settings)

    async with anyio.create_task_group() as tg:
        for k in range(len(urls)):
            tg.start_soon(one, k)
    return [i if i is not None else ServerInfo((), False, "not probed") for i in infos]


async def resolve_model(
    target: TargetConfig, urls: tuple[str, ...], settings: ClientSettings
) -> tuple[str, list[str]]:
    """The model to request, and warnings. Refuses to guess when it cannot ask any server, and
    refuses a model that none of the servers that listed their models serves.

    Requests go round-robin over every URL, so each is probed: one that is down, or does not
    serve the model, is named in a warning (its share of the requests would fail).
    """
    warnings: list[str] = []
    infos = await probe_all(urls, settings)
    model = target.model
    if not model:  # none given: the first model of the first server that answers
        first = next((i for i in infos if not i.problem), None)
        if first is None:
            if not any(i.reachable for i in infos):  # a model name would not bring it up
                raise TargetError(
                    f"{infos[0].problem}; is the server up? (check --url or the scenario's "
                    "[target] url)"
                )
            raise TargetError(
                f"{infos[0].problem}; cannot find a model to use (pass --model to run anyway)"
            )
        if not first.models:
            raise TargetError(f"{urls[infos.index(first)]} lists no models")
        model = first.models[0]
    listed = [(url, info) for url, info in zip(urls, infos, strict=True) if not info.problem]
    if listed and not any(model in info.models for _, info in listed):
        # Every server that answered would refuse each request (404): nothing to measure.
        url, info = listed[0]
        served = ", ".join(info.models[:20]) + (", ..." if len(info.models) > 20 else "")
        raise TargetError(
            f"model {model!r} is not served by {url}; it serves: {served or 'no model'} "
            "(pass one of them with --model)"
        )
    for url, info in zip(urls, infos, strict=True):
        if info.problem:
            warnings.append(f"{info.problem}; running anyway with model {model!r}")
        elif model not in info.models:
            where = f" at {url}" if len(urls) > 1 else ""
            warnings.append(
                f"model {model!r} is not among the server's models{where} "
                f"({', '.join(info.models)})"
            )
    return model, warnings
