"""The simulator's HTTP face: vLLM's OpenAI-compatible routes on aiohttp.web.

Streams are written chunk by chunk in vLLM's exact shape. A request's tokens are buffered as the
engine produces them; the writer takes everything pending at once, so a client (or loop) that
cannot keep up receives several tokens in one chunk, as from vLLM's output processor.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from loadgen.childserver import serve_until_signalled
from loadgen.sim.driver import EngineDriver, StatsObserver
from loadgen.sim.engine import EngineCore, EngineRequest
from loadgen.sim.faults import (
    FaultConfig,
    FaultHeaderError,
    RequestFaults,
    StallSchedule,
    merge,
    parse_fault_header,
)
from loadgen.sim.fetch import ImageFetcher
from loadgen.sim.images import ImageDecoder, ImageError, ImageLimits
from loadgen.sim.mmcache import MultiModalCache
from loadgen.sim.process import LISTENING_PREFIX
from loadgen.sim.profiles import Profile
from loadgen.sim.request import (
    ApiError,
    ChatRequest,
    ParseLimits,
    parse_chat,
    parse_completion,
)
from loadgen.sim.shapes import CHAT, COMPLETION, ApiShape, whole_response
from loadgen.sim.stats import CacheStats, LoggingStatLogger, PrometheusMetrics

VLLM_VERSION = "0.11.0"  # the vLLM whose behaviour is imitated (see docs/simulator.md)
FAULT_HEADER = "X-Sim-Fault"

log = logging.getLogger("loadgen.sim")

_STATUS_TYPES = {
    429: "TooManyRequestsError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


@dataclass(frozen=True, slots=True)
class SimConfig:
    profile: Profile
    models: tuple[str, ...] = ("sim-vlm",)
    seed: int = 0
    enable_prefix_caching: bool = True
    enable_prompt_tokens_details: bool = False
    mm_cache_gb: float = 4.0
    log_interval: float = 10.0
    faults: FaultConfig = field(default_factory=FaultConfig)
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    max_images: int = 16


class TokenBuffer:
    """Tokens produced by the engine and not yet written to the client."""

    __slots__ = ("event", "finish", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.finish: str | None = None
        self.event = asyncio.Event()

    def on_token(self, _request: EngineRequest, text: str, finish: str | None) -> None:
        self.texts.append(text)
        if finish is not None:
            self.finish = finish
        self.event.set()

    async def take(self) -> tuple[str, int]:
        """Everything pending (waiting for at least one token)."""
        if not self.texts:
            self.event.clear()
            await self.event.wait()
        n = len(self.texts)
        text = self.texts[0] if n == 1 else "".join(self.texts)
        self.texts.clear()
        return text, n


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(err.body()),
        status=err.status,
        content_type="application/json",
        headers=headers,
    )


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        profile = config.profile
        if profile.kv_blocks * profile.block_size < profile.max_model_len:
            raise ValueError(
                f"the KV cache ({profile.kv_blocks} blocks of {profile.block_size} tokens) cannot "
                f"hold one sequence of max_model_len={profile.max_model_len} tokens"
            )
        self.config = config
        self.created = int(time.time())
        self.core = EngineCore(profile, config.enable_prefix_caching, config.seed)
        self.metrics = PrometheusMetrics(config.models[0], profile.max_model_len)
        self.stat_logger = LoggingStatLogger(time.monotonic())
        observers: list[StatsObserver] = [self.stat_logger, self.metrics]
        stalls = StallSchedule(None, config.faults.stall_every, config.faults.stall)
        self.driver = EngineDriver(self.core, observers, stalls)
        self.decoder = ImageDecoder(config.image_limits)
        self.fetcher = ImageFetcher(config.image_limits.max_bytes)
        self.mm_cache = MultiModalCache(int(config.mm_cache_gb * (1 << 30)))
        self.limits = ParseLimits(profile.max_model_len, config.max_images)
        self.fault_rng = random.Random(config.seed ^ 0x5EED)
        # Chat requests being handled (from arrival to the last byte written), and the most at once:
        # what a client's cap on requests in flight must never exceed (GET /sim/stats).
        self.in_flight = 0
        self.peak_in_flight = 0
        self.disconnects = 0  # clients gone before their request body was read
        self._log_task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/sim/stats", self.sim_stats)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self.driver.start()
        self._log_task = asyncio.create_task(self._log_loop(), name="sim-stats-log")

    async def _on_cleanup(self, _app: web.Application) -> None:
        if self._log_task is not None:
            self._log_task.cancel()
        await self.driver.stop()
        await self.fetcher.close()

    async def _log_loop(self) -> None:
        interval = self.config.log_interval
        next_at = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            self.stat_logger.log(time.monotonic())

    # -- small routes -----------------------------------------------------------------------

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, _request: web.Request) -> web.Response:
        return _json({"version": VLLM_VERSION})

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.exposition(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def sim_stats(self, _request: web.Request) -> web.Response:
        return _json(
            {
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
                "disconnects": self.disconnects,
            }
        )

    async def models(self, _request: web.Request) -> web.Response:
        cards = [
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": name,
                "parent": None,
                "max_model_len": self.config.profile.max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{uuid.uuid4().hex}",
                        "object": "model_permission",
                        "created": self.created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for name in self.config.models
        ]
        return _json({"object": "list", "data": cards})

    # -- chat and text completions ---------------------------------------------------------------------

    def _faults(self, request: web.Request) -> RequestFaults:
        drawn = self.config.faults.draw(self.fault_rng)
        header = request.headers.get(FAULT_HEADER)
        if header is None:
            return drawn
        try:
            return merge(drawn, parse_fault_header(header))
        except FaultHeaderError as exc:
            raise ApiError(str(exc)) from None

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, CHAT)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, COMPLETION)

    async def _serve(self, request: web.Request, shape: ApiShape) -> web.StreamResponse:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._completion(request, shape)
        finally:
            self.in_flight -= 1

    async def _fetch_images(self, body: object) -> None:
        try:
            await self.fetcher.inline(body)
        except ImageError as exc:
            raise ApiError(str(exc)) from None

    def _parse(self, body: object, shape: ApiShape) -> ChatRequest:
        if shape is CHAT:
            return parse_chat(body, self.config.models, self.decoder, self.limits)
        return parse_completion(body, self.config.models, self.limits)

    async def _completion(self, request: web.Request, shape: ApiShape) -> web.StreamResponse:
        arrival = time.monotonic()
        self.driver.stalls.begin(arrival)
        try:
            faults = self._faults(request)
        except ApiError as err:
            return error_response(err)
        if faults.slow_headers > 0:
            await asyncio.sleep(faults.slow_headers)
        if faults.http_status is not None:
            status = faults.http_status
            injected = ApiError(
                f"Simulated HTTP {status} (fault injection)", status, _STATUS_TYPES[status]
            )
            retry = {"Retry-After": "1"} if status in (429, 503) else None
            return error_response(injected, retry)
        try:
            try:
                raw = await request.read()
            except ConnectionError:
                # The client hung up before sending its whole body: one line, not a traceback.
                self.disconnects += 1
                log.info(
                    "client went away before its request body was read (%d so far)",
                    self.disconnects,
                )
                return web.Response(status=400)  # never sent: the connection is gone
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ApiError(f"JSON decode error: {exc}") from None
            if shape is CHAT:
                await self._fetch_images(body)
            chat = self._parse(body, shape)
            engine_request = await self._admit(chat, arrival, faults, shape)
        except ApiError as err:
            return error_response(err)
        buffer = TokenBuffer()
        engine_request.on_token = buffer.on_token
        try:
            if chat.stream:
                return await self._stream(request, chat, engine_request, buffer, faults, shape)
            return await self._complete(chat, engine_request, buffer, shape)
        finally:
            if engine_request.finish_reason is None:
                self.driver.abort(engine_request)

    async def _admit(
        self, chat: ChatRequest, arrival: float, faults: RequestFaults, shape: ApiShape
    ) -> EngineRequest:
        mm = CacheStats()
        miss_tokens = 0
        if chat.images and self.mm_cache.enabled:
            hits = 0
            for image, tokens in zip(chat.images, chat.image_token_counts, strict=True):
                if self.mm_cache.query(image.content_hash, tokens):
                    hits += 1
                else:
                    miss_tokens += tokens
            mm.record(len(chat.images), hits)
        else:
            miss_tokens = sum(chat.image_token_counts)
        await self.driver.preprocess(mm, miss_tokens)
        engine_request = self.core.make_request(
            f"{shape.id_prefix}{uuid.uuid4().hex}",
            chat.prompt_keys,
            chat.max_tokens,
            arrival=arrival,
            min_tokens=chat.min_tokens,
            ignore_eos=chat.ignore_eos,
            max_tokens_param=chat.max_tokens_param,
            request_seed=chat.seed,
        )
        if faults.stall > 0:
            self.driver.stall(faults.stall)
        try:
            self.driver.submit(engine_request)
        except ValueError as exc:
            raise ApiError(str(exc)) from None
        return engine_request

    @staticmethod
    def _usage(chat: ChatRequest, completion: int) -> dict[str, Any]:
        # vLLM's UsageInfo field order.
        return {
            "prompt_tokens": chat.prompt_tokens,
            "total_tokens": chat.prompt_tokens + completion,
            "completion_tokens": completion,
        }

    def _cached_details(self, engine_request: EngineRequest) -> dict[str, int] | None:
        cached = engine_request.num_cached_tokens
        if self.config.enable_prompt_tokens_details and cached:
            return {"cached_tokens": cached}
        return None

    async def _complete(
        self,
        chat: ChatRequest,
        engine_request: EngineRequest,
        buffer: TokenBuffer,
        shape: ApiShape,
    ) -> web.Response:
        texts: list[str] = []
        completion = 0
        while buffer.finish is None or buffer.texts:
            text, n = await buffer.take()
            texts.append(text)
            completion += n
        usage = self._usage(chat, completion)
        usage["prompt_tokens_details"] = self._cached_details(engine_request)
        body = whole_response(
            shape, engine_request.request_id, chat.model, "".join(texts), buffer.finish, usage
        )
        return _json(body)

    async def _stream(
        self,
        request: web.Request,
        chat: ChatRequest,
        engine_request: EngineRequest,
        buffer: TokenBuffer,
        faults: RequestFaults,
        shape: ApiShape,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        head = shape.head(engine_request.request_id, chat.model)
        writer = _ChunkWriter(request, response, head, faults)
        try:
            text, n = await buffer.take()
            if shape.role_choice and not await writer.send(
                head + shape.role_choice + _usage_tail(chat, faults, 0)
            ):
                return response
            completion = 0
            while True:
                completion += n
                finish = buffer.finish  # take() drained the buffer: set only with the last token
                chunk = shape.content(head, text, finish) + _usage_tail(chat, faults, completion)
                if not await writer.send(chunk):
                    return response
                if finish is not None:
                    break
                text, n = await buffer.take()
            if chat.include_usage and not faults.no_usage:
                usage = self._usage(chat, completion)
                details = self._cached_details(engine_request)
                if details is not None:
                    usage["prompt_tokens_details"] = details
                if not await writer.send(head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n"):
                    return response
            if faults.drop_after == writer.sent and request.transport is not None:
                request.transport.close()
                return response
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionError:
            log.debug("client went away during %s", engine_request.request_id)
        return response


def _usage_tail(chat: ChatRequest, faults: RequestFaults, completion: int) -> bytes:
    """The end of a chunk: with continuous usage stats when asked for."""
    # no_usage: as if a proxy dropped stream_options, so no chunk carries usage
    if not chat.continuous_usage or faults.no_usage:
        return b"}\n\n"
    prompt = chat.prompt_tokens
    return b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}\n\n' % (
        prompt,
        prompt + completion,
        completion,
    )


class _ChunkWriter:
    """Writes a stream's chunks, ending it early where the request's faults say so."""

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        head: bytes,
        faults: RequestFaults,
    ) -> None:
        self.request = request
        self.response = response
        self.head = head
        self.faults = faults
        self.sent = 0

    async def send(self, chunk: bytes) -> bool:
        """Write one chunk unless a fault ends the stream first; False when it ended."""
        faults = self.faults
        if faults.malformed_after == self.sent:
            await self.response.write(self.head + b'{"index":0,"delta":{"content":"\n\n')
        if faults.drop_after == self.sent:
            if self.request.transport is not None:
                self.request.transport.close()
            return False
        if faults.stream_error_after == self.sent:
            error = ApiError("Simulated engine error (fault injection)", 500, "InternalServerError")
            await self.response.write(
                b"data: " + orjson.dumps(error.body()) + b"\n\ndata: [DONE]\n\n"
            )
            return False
        await self.response.write(chunk)
        self.sent += 1
        return True


def configure_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(levelname)s %(asctime)s [%(name)s] %(message)s",
        datefmt="%m-%d %H:%M:%S",
    )


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; prints the bound URL as the first line on stdout."""
    simulator = Simulator(config)
    p = config.profile

    def started() -> None:
        log.info(
            "vLLM simulator (imitating vLLM %s): model=%s profile=%s max_num_seqs=%d "
            "max_num_batched_tokens=%d kv_blocks=%d block_size=%d prefix_caching=%s seed=%d",
            VLLM_VERSION, ",".join(config.models), p.name, p.max_num_seqs,
            p.max_num_batched_tokens, p.kv_blocks, p.block_size, config.enable_prefix_caching,
            config.seed,
        )  # fmt: skip

    await serve_until_signalled(simulator.app(), host, port, LISTENING_PREFIX, started=started)
