"""The two extension points: a dataset and an endpoint registered from outside loadgen (here, a
toy dataset of numbered prompts with per-request max_tokens, and a toy text completions endpoint
at a path of its own), each through a real run: the dataset against the simulator, the endpoint
against a small in-test server."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Final

import anyio
import orjson
import pytest
from aiohttp import web

from loadgen.config import WorkloadConfig
from loadgen.datasets import DATASETS, RequestInputs
from loadgen.datasets.images import ImageItem
from loadgen.endpoints import (
    DEFAULT_API,
    ENDPOINTS,
    BodyTemplate,
    ChatEndpoint,
    ParserFactory,
    api_for_path,
    endpoint_named,
)
from loadgen.endpoints.chat import members, sampling_fields
from loadgen.errors import ScenarioError
from loadgen.orchestrator import RunOptions, RunResult, run_scenario
from loadgen.records import Outcome, RequestRecord
from loadgen.results.files import read_requests
from loadgen.scenario import Overrides, load_scenario
from loadgen.stream import ChunkShape, StreamParser
from loadgen.workload import Workload
from tests.conftest import StartSim

# ----------------------------------------------------------------------------- a toy dataset


class _NoImages:
    def name(self, key: int) -> str:
        raise LookupError(key)

    def build(self, key: int) -> ImageItem:
        raise LookupError(key)


class _Numbered:
    """Request r asks "NAME: count to r" for 1 + r % 4 tokens."""

    universe = None
    builder = _NoImages()

    def __init__(self, name: str) -> None:
        self.name = name
        self.built: dict[int, ImageItem] = {}

    def inputs(self, r: int) -> RequestInputs:
        return RequestInputs(f"{self.name}: count to {r}", (), max_tokens=tokens_of(r))

    def body_number(self, r: int) -> int:
        return r


class NumberedPrompts:
    def __init__(self, cfg: WorkloadConfig, seed: int) -> None:
        self.skipped: list[str] = []
        self.seed = seed

    def stream(self, kind: str, phase: str) -> _Numbered:
        return _Numbered(f"{kind}-{phase}-{self.seed}")


def tokens_of(r: int) -> int:
    return 1 + r % 4


# ---------------------------------------------------------------------------- a toy endpoint


class CompletionsParser(StreamParser):
    _SHAPE = ChunkShape(holder=None, texts=("text",))


class CompletionsEndpoint:
    """`/v1/toy-completions`: {"model": M, "prompt": P, "max_tokens": .., ...}; text only."""

    name: Final = "toy-completions"
    path: Final = "/v1/toy-completions"
    accepts_images: Final = False
    streamed: Final = True
    parser: Final[ParserFactory] = CompletionsParser

    def template(self, cfg: WorkloadConfig, model: str, max_tokens: int) -> BodyTemplate:
        head = b'{"model":' + orjson.dumps(model) + b',"prompt":'
        return BodyTemplate(head, b"," + members(sampling_fields(cfg, max_tokens)) + b"}")

    def prompt_part(self, prompt: str) -> bytes:
        return orjson.dumps(prompt)


@pytest.fixture
def registered() -> Iterator[None]:
    DATASETS["numbered"] = NumberedPrompts
    ENDPOINTS["toy-completions"] = CompletionsEndpoint()
    try:
        yield
    finally:
        del DATASETS["numbered"], ENDPOINTS["toy-completions"]


# --------------------------------------------------------------------------------- unit level


def test_the_registries_and_their_defaults() -> None:
    assert DEFAULT_API in ENDPOINTS
    assert endpoint_named("chat").path == "/v1/chat/completions"
    assert api_for_path("/v1/chat/completions") == "chat"
    assert api_for_path("/somewhere/else") == DEFAULT_API  # any path: chat bodies, as always
    assert api_for_path("/v1/completions") == "completions"  # the streamed one, not the whole
    with pytest.raises(ValueError, match="unknown api 'nope'; expected one of: 'chat', 'comp"):
        endpoint_named("nope")
    assert {"synthetic", "folder"} <= set(DATASETS)


def test_a_dataset_sets_prompts_and_max_tokens_per_request(registered: None) -> None:
    cfg = WorkloadConfig(images_per_request=0, prompts=("unused",), max_tokens=50)
    workload = Workload(cfg, 7, "m", dataset=NumberedPrompts(cfg, 7))
    reqs = workload.prepare("main", 6)
    for i in range(6):
        body = orjson.loads(reqs.body(i))
        assert body["max_tokens"] == tokens_of(i)
        assert body["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": f"phase-main-7: count to {i}"}]}
        ]
        assert reqs.prompt(i) == f"phase-main-7: count to {i}"
        assert reqs.body_id(i) == i
    assert orjson.loads(reqs.body(0))["temperature"] == 0.0


def test_an_endpoint_writes_its_bodies_and_its_parser_reads_its_stream(registered: None) -> None:
    cfg = WorkloadConfig(images_per_request=0, prompts=("a", "b"), max_tokens=3, min_tokens=1)
    reqs = Workload(cfg, 1, "m", api="toy-completions").prepare("main", 2)
    assert orjson.loads(reqs.body(1)) == {
        "model": "m",
        "prompt": "b",
        "max_tokens": 3,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "min_tokens": 1,
    }
    with pytest.raises(ValueError, match="takes no images"):
        Workload(WorkloadConfig(), 1, "m", api="toy-completions")
    rec = RequestRecord(index=0, phase="main", shard=0, target="", intended=0, sent=0, end=0)
    parser = ENDPOINTS["toy-completions"].parser(0.0, rec)
    parser.feed(completions_stream(3, prompt_tokens=5), 1.0)
    parser.fill(rec)
    assert (rec.outcome, rec.completion_tokens, rec.prompt_tokens) == (Outcome.OK, 3, 5)
    assert rec.chunk_tokens == [1, 1, 1] and rec.finish_reason == "length"
    # the chat parser reads no text in a completions chunk without usage: no token arrives
    chat = StreamParser()
    chat.feed(b'data: {"choices":[{"index":0,"text":"x","finish_reason":null}]}\n\n', 1.0)
    assert chat.token_times == []
    toy = CompletionsParser()
    toy.feed(b'data: {"choices":[{"index":0,"text":"x","finish_reason":null}]}\n\n', 1.0)
    assert toy.token_times == [1.0]
    toy.feed(b'data: {"choices":[{"index":0,"text":7}]}\n\n', 2.0)
    assert toy.malformed is not None and "a choice's text is not a string" in toy.malformed


def test_the_scenario_names_the_api(tmp_path: Path, registered: None) -> None:
    base = "[load]\nrequests = 1\n"
    chat = load_scenario(write(tmp_path, base))
    assert (chat.target.api, chat.target.endpoint) == ("chat", "/v1/chat/completions")
    elsewhere = load_scenario(write(tmp_path, base + '[target]\nendpoint = "/x/chat"\n'))
    assert (elsewhere.target.api, elsewhere.target.endpoint) == ("chat", "/x/chat")
    toy = load_scenario(
        write(
            tmp_path,
            base + '[target]\napi = "toy-completions"\n[workload]\nimages_per_request = 0\n',
        )
    )
    assert (toy.target.api, toy.target.endpoint) == ("toy-completions", "/v1/toy-completions")
    by_path = load_scenario(
        write(
            tmp_path,
            base
            + '[target]\nendpoint = "/v1/toy-completions"\n[workload]\nimages_per_request = 0\n',
        )
    )
    assert by_path.target.api == "toy-completions"
    with pytest.raises(
        ScenarioError, match=r"\[target\] api: unknown api 'nope'; expected one of: "
    ):
        load_scenario(write(tmp_path, base + '[target]\napi = "nope"\n'))
    with pytest.raises(ScenarioError, match=r"images_per_request: api 'toy-completions' takes no"):
        load_scenario(write(tmp_path, base + '[target]\napi = "toy-completions"\n'))
    with pytest.raises(ScenarioError, match=r"source: expected one of 'synthetic', 'folder'"):
        load_scenario(write(tmp_path, base + '[workload.images]\nsource = "nope"\n'))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------- real runs


def run(tmp_path: Path, text: str, url: str) -> RunResult:
    scenario = load_scenario(write(tmp_path, text), Overrides(urls=(url,)))
    # One worker: the run stays in this process, where the toy dataset and endpoint are known.
    options = RunOptions(run_dir=str(tmp_path / "run"), handle_signals=False, workers=1)
    return anyio.run(run_scenario, scenario, options, lambda _: None)


def test_a_registered_dataset_through_a_run_against_the_simulator(
    tmp_path: Path, sim_server: StartSim, registered: None
) -> None:
    sim = sim_server()
    text = """
seed = 4
[load]
concurrency = 3
requests = 12
[workload]
images_per_request = 0
ignore_eos = true
[workload.images]
source = "numbered"
"""
    result = run(tmp_path, text, sim.base_url)
    records = read_requests(result.run_dir / "requests.jsonl")
    assert len(records) == 12
    assert all(r.outcome is Outcome.OK for r in records)
    assert {r.index: r.completion_tokens for r in records} == {i: tokens_of(i) for i in range(12)}
    assert result.summary.phases["main"].tokens.generation == sum(map(tokens_of, range(12)))


class CompletionsServer:
    """/v1/toy-completions streamed as vLLM streams text completions (continuous usage), and
    /v1/models."""

    MODEL: ClassVar[str] = "toy-model"

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> CompletionsServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/toy-completions", self._completions)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.MODEL, "object": "model"}]}
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(completions_stream(body["max_tokens"], prompt_tokens=len(body["prompt"])))
        await resp.write_eof()
        return resp


def completions_stream(tokens: int, prompt_tokens: int) -> bytes:
    def usage(n: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": n}

    def event(obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    out = []
    for n in range(1, tokens + 1):
        reason = "length" if n == tokens else None
        choice = {"index": 0, "text": f"t{n}", "logprobs": None, "finish_reason": reason}
        out.append(event({"object": "text_completion", "choices": [choice], "usage": usage(n)}))
    out.append(event({"object": "text_completion", "choices": [], "usage": usage(tokens)}))
    return b"".join(out) + b"data: [DONE]\n\n"


def test_a_registered_endpoint_through_a_run(tmp_path: Path, registered: None) -> None:
    text = f"""
seed = 2
[target]
api = "toy-completions"
model = "{CompletionsServer.MODEL}"
scrape_metrics = false
[load]
concurrency = 2
requests = 8
[workload]
images_per_request = 0
[workload.images]
source = "numbered"
"""
    with CompletionsServer() as server:
        result = run(tmp_path, text, server.base_url)
    records = read_requests(result.run_dir / "requests.jsonl")
    assert sorted(r.index for r in records) == list(range(8))
    assert all(r.outcome is Outcome.OK for r in records), [r.error for r in records]
    assert {r.index: r.completion_tokens for r in records} == {i: tokens_of(i) for i in range(8)}
    assert sorted(b["prompt"] for b in server.bodies) == sorted(
        f"phase-main-2: count to {i}" for i in range(8)
    )
    assert all("messages" not in b and b["model"] == "toy-model" for b in server.bodies)
    assert result.summary.phases["main"].tokens.generation == sum(map(tokens_of, range(8)))


def test_the_chat_endpoint_is_the_default() -> None:
    assert isinstance(ENDPOINTS[DEFAULT_API], ChatEndpoint)
