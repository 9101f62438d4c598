"""Row datasets (`source = "jsonl"`, `"hf"`) and images by URL (`--serve-images`) as a run sends
them: per-request prompts, images and max_tokens; the same requests from any number of shards;
token totals equal to the simulator's counters; the image server's fetches counted."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import anyio
import orjson
import pytest
from PIL import Image

from loadgen.config import WARMUP
from loadgen.datasets import PHASE_STREAM
from loadgen.datasets.rows import DatasetFileError
from loadgen.errors import ScenarioError
from loadgen.orchestrator import RunOptions, RunResult, run_scenario
from loadgen.records import Outcome, RequestRecord
from loadgen.results.files import read_requests
from loadgen.scenario import Overrides, load_scenario
from loadgen.workload.workload import Workload
from tests.conftest import StartSim

IMAGES = Path(__file__).resolve().parents[1] / "scenarios" / "images"


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


ROWS = [
    {"prompt": "Describe a.", "images": ["pics/a.jpg"], "max_tokens": 5},
    {"prompt": "Describe b.", "images": ["pics/b.jpg"], "max_tokens": 9},
    {"images": ["pics/a.jpg", "pics/b.jpg"], "max_tokens": 3},
    {"prompt": "Text only.", "max_tokens": 7},
    {"images": ["pics/c.png"]},  # the scenario's prompts and max_tokens
]
DEFAULT_MAX_TOKENS = 11


def jsonl_dataset(folder: Path) -> Path:
    pics = folder / "pics"
    pics.mkdir(parents=True)
    (pics / "a.jpg").write_bytes(_jpeg((200, 0, 0)))
    (pics / "b.jpg").write_bytes(_jpeg((0, 200, 0), (64, 48)))
    Image.new("RGB", (20, 20), (0, 0, 200)).save(pics / "c.png")
    path = folder / "set.jsonl"
    rows = [{k: v for k, v in row.items() if k != "prompt"} | _prompt(row) for row in ROWS]
    path.write_bytes(b"\n".join(orjson.dumps(row) for row in rows) + b"\n")
    return path


def _prompt(row: dict[str, object]) -> dict[str, object]:
    # a jsonl line needs a prompt: the rows without one ask the scenario's (below, in hf)
    return {"prompt": row.get("prompt", "Scenario prompt.")}


def scenario(
    folder: Path, source: str, dataset: str, *extra: str, requests: int = 12, images: str = ""
) -> Path:
    text = f"""
seed = 3
[load]
concurrency = 3
requests = {requests}
[workload]
ignore_eos = true
max_tokens = {DEFAULT_MAX_TOKENS}
prompts = ["First scenario prompt.", "Second scenario prompt."]
{chr(10).join(extra)}
[workload.images]
source = "{source}"
{images}
[workload.dataset]
{dataset}
"""
    path = folder / "s.toml"
    path.write_text(text)
    return path


def run(path: Path, url: str, workers: int = 1, **overrides: object) -> RunResult:
    scenario = load_scenario(path, Overrides(urls=(url,), **overrides))  # type: ignore[arg-type]
    options = RunOptions(
        run_dir=str(path.parent / f"run-{workers}"), handle_signals=False, workers=workers
    )
    return anyio.run(run_scenario, scenario, options, lambda _: None)


def check_totals(result: RunResult, records: list[RequestRecord]) -> None:
    phase = result.summary.phases["main"]
    assert all(r.outcome is Outcome.OK for r in records)
    assert phase.tokens.generation == sum(r.completion_tokens or 0 for r in records)
    server = result.summary.server.phases["main"]
    assert server.delta is not None and server.comparison is not None
    assert server.delta.generation_tokens == phase.tokens.generation
    assert server.delta.prompt_tokens == phase.tokens.prompt
    assert server.comparison.mismatch is False


def test_a_jsonl_dataset_run_honours_each_rows_max_tokens(
    tmp_path: Path, sim_server: StartSim
) -> None:
    sim = sim_server("--enable-prompt-tokens-details")
    jsonl_dataset(tmp_path)
    result = run(scenario(tmp_path, "jsonl", 'path = "set.jsonl"'), sim.base_url)
    records = read_requests(result.run_dir / "requests.jsonl")
    assert len(records) == 12
    check_totals(result, records)
    for rec in records:
        row = ROWS[rec.index % len(ROWS)]
        assert rec.completion_tokens == row.get("max_tokens", DEFAULT_MAX_TOKENS)
        assert rec.images == row.get("images", [])
    # rows repeat every 5 requests: byte-identical bodies
    assert {rec.index: rec.body for rec in records} == {i: i % 5 for i in range(12)}


def test_one_or_two_workers_send_the_same_requests(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server()
    jsonl_dataset(tmp_path)
    path = scenario(tmp_path, "jsonl", 'path = "set.jsonl"\nshuffle = true', requests=17)

    def sent(workers: int) -> set[tuple[object, ...]]:
        records = read_requests(run(path, sim.base_url, workers).run_dir / "requests.jsonl")
        assert len(records) == 17
        if workers > 1:
            assert {r.shard for r in records} == set(range(workers))
        return {(r.index, tuple(r.images), r.body, r.completion_tokens) for r in records}

    one = sent(1)
    assert one == sent(2)
    # shuffled by the seed: not the file's order, yet every row shown
    by_index = sorted(one)
    firsts = [images for _, images, _, _ in by_index[:5]]
    assert len({t for _, _, _, t in by_index}) == 5
    assert firsts != [tuple(row.get("images", [])) for row in ROWS]


def test_an_hf_parquet_dataset_run(tmp_path: Path, sim_server: StartSim) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string")})
    n = 4
    table = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": _jpeg((50 * i, 10, 10)), "path": None} for i in range(n)],
            "question": [f"What is in picture {i}?" for i in range(n)],
        },
        features=features,
    )
    table.to_parquet(str(tmp_path / "coco.parquet"))
    sim = sim_server("--enable-prompt-tokens-details")
    path = scenario(tmp_path, "hf", 'path = "coco.parquet"\nprompt_column = "question"\nlimit = 3')
    result = run(path, sim.base_url)
    records = read_requests(result.run_dir / "requests.jsonl")
    assert len(records) == 12
    check_totals(result, records)
    assert all(r.completion_tokens == DEFAULT_MAX_TOKENS for r in records)
    assert {r.index: r.images for r in records} == {i: [f"row {i % 3} image 0"] for i in range(12)}
    assert result.summary.phases["main"].tokens.generation == 12 * DEFAULT_MAX_TOKENS


def test_served_images_go_by_url_and_are_fetched(tmp_path: Path, sim_server: StartSim) -> None:
    sim = sim_server()
    folder = tmp_path / "images"
    shutil.copytree(IMAGES, folder)
    path = tmp_path / "s.toml"
    path.write_text(
        """
[load]
concurrency = 2
requests = 8
[workload]
ignore_eos = true
max_tokens = 4
images_per_request = 2
[workload.images]
source = "folder"
folder = "images"
"""
    )
    said: list[str] = []
    scenario = load_scenario(path, Overrides(urls=(sim.base_url,), serve_images=True))
    options = RunOptions(run_dir=str(tmp_path / "run"), handle_signals=False, workers=1)
    result = anyio.run(run_scenario, scenario, options, said.append)
    records = read_requests(result.run_dir / "requests.jsonl")
    check_totals(result, records)
    assert "image server: answered 16 image fetches (0 refused)" in said
    images = result.summary.scenario["workload"]["images"]
    assert images["serve"] is True and images["url_base"].startswith("http://127.0.0.1:")
    assert records[0].images[0].endswith(".jpg")


# ------------------------------------------------------------------------------ the dataset


def make(tmp_path: Path, dataset: str, *extra: str) -> Workload:
    return Workload(load_scenario(scenario(tmp_path, "jsonl", dataset, *extra)).workload, 3, "m")


def test_rows_in_file_order_and_a_warmup_walks_them_backwards(tmp_path: Path) -> None:
    jsonl_dataset(tmp_path)
    dataset = make(tmp_path, 'path = "set.jsonl"').dataset
    phase = dataset.stream(PHASE_STREAM, "main")
    warm = dataset.stream(WARMUP, "main")
    assert phase.universe == 3
    assert [phase.inputs(r).max_tokens for r in range(6)] == [5, 9, 3, 7, None, 5]
    assert [warm.inputs(r).max_tokens for r in range(3)] == [None, 7, 3]
    assert phase.inputs(2).images == (0, 1) and phase.inputs(4).images == (2,)


def test_bodies_repeat_with_rows_and_prompts(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict({"image": ["a.jpg", "a.jpg", "b.jpg"]})
    (tmp_path / "a.jpg").write_bytes(_jpeg((1, 2, 3)))
    (tmp_path / "b.jpg").write_bytes(_jpeg((3, 2, 1)))
    table.to_parquet(str(tmp_path / "t.parquet"))
    wl = load_scenario(scenario(tmp_path, "hf", 'path = "t.parquet"')).workload
    stream = Workload(wl, 0, "m").dataset.stream(PHASE_STREAM, "main")
    # rows a, a, b asking the scenario's two prompts in turn: the bodies repeat every 6
    inputs = [stream.inputs(r) for r in range(8)]
    numbers = [stream.body_number(r) for r in range(8)]
    assert numbers == [0, 1, 2, 1, 0, 5, 0, 1]
    for r in range(8):
        first = numbers[r]
        assert inputs[first] == inputs[r] and first <= r
        assert all(inputs[s] != inputs[r] for s in range(first))


def test_images_per_request_0_leaves_the_rows_images_out(tmp_path: Path) -> None:
    jsonl_dataset(tmp_path)
    workload = make(tmp_path, 'path = "set.jsonl"', "images_per_request = 0")
    reqs = workload.prepare("main", 5)
    assert all(reqs.image_ids(i) == [] for i in range(5))
    assert b"image_url" not in reqs.body(0)


def test_url_images_go_as_urls(tmp_path: Path) -> None:
    (tmp_path / "set.jsonl").write_text(
        '{"prompt": "p", "images": ["http://127.0.0.1:9/x.png", "http://127.0.0.1:9/x.png"]}\n'
    )
    reqs = make(tmp_path, 'path = "set.jsonl"').prepare("main", 1)
    body = orjson.loads(reqs.body(0))
    parts = body["messages"][-1]["content"]
    assert [p["image_url"]["url"] for p in parts[1:]] == ["http://127.0.0.1:9/x.png"] * 2
    (item,) = reqs.images()
    assert (item.nbytes, item.format) == (0, "png")


@pytest.mark.parametrize(
    ("dataset", "images", "message"),
    [
        ("", "", r"\[workload.dataset\] path: required when source = 'jsonl'"),
        ('path = "none.jsonl"', "", r"path: no such file: .*none.jsonl"),
        (
            'path = "set.jsonl"\nimage_column = "img"',
            "",
            r"image_column: applies to source = 'hf' only",
        ),
        ('path = "set.jsonl"', "pool_size = 2", r"pool_size: does not apply"),
        ('path = "set.jsonl"\nlimit = -1', "", r"limit: expected 0 to"),
    ],
)
def test_scenario_refusals(tmp_path: Path, dataset: str, images: str, message: str) -> None:
    (tmp_path / "set.jsonl").write_text('{"prompt": "p"}\n')
    with pytest.raises(ScenarioError, match=message):
        load_scenario(scenario(tmp_path, "jsonl", dataset, images=images))


def test_a_dataset_table_for_another_source_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[workload.dataset]\npath = "x.jsonl"\n')
    with pytest.raises(ScenarioError, match=r"path: applies to source = 'jsonl' or 'hf'"):
        load_scenario(path)


def test_serving_needs_a_folder_kept_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[workload.images]\nserve = true\n")
    with pytest.raises(ScenarioError, match=r"serve: serves a folder's files"):
        load_scenario(path)
    path.write_text("[workload.images]\n")
    with pytest.raises(ScenarioError, match=r"--serve-images: serves a folder's files"):
        load_scenario(path, Overrides(serve_images=True))
    path.write_text(f'[workload.images]\nsource = "folder"\nfolder = "{IMAGES}"\nmax_side = 64\n')
    with pytest.raises(ScenarioError, match=r"max_side cannot shrink them"):
        load_scenario(path, Overrides(serve_images=True))


def test_bad_rows_are_named_before_the_run(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not a picture")
    (tmp_path / "set.jsonl").write_text(
        '{"prompt": "p", "images": ["bad.jpg"]}\n{"prompt": "q", "max_tokens": 2}\n'
    )
    with pytest.raises(DatasetFileError, match=r"line 1: images\[0\] .*bad.jpg: not an image"):
        make(tmp_path, 'path = "set.jsonl"')
    (tmp_path / "set.jsonl").write_text('{"prompt": "q", "max_tokens": 2}\n')
    with pytest.raises(DatasetFileError, match=r"line 1: max_tokens 2 is below .*min_tokens \(4\)"):
        make(tmp_path, 'path = "set.jsonl"', "min_tokens = 4")


def test_the_simulator_fetches_from_loopback_only(sim_server: StartSim) -> None:
    import httpx

    from loadgen.imageserver import ImageServerProcess

    sim = sim_server()

    def ask(url: str) -> httpx.Response:
        part = {"type": "image_url", "image_url": {"url": url}}
        body = {"messages": [{"role": "user", "content": [part]}], "max_tokens": 2}
        with httpx.Client(trust_env=False) as client:
            return client.post(sim.base_url + "/v1/chat/completions", json=body, timeout=20)

    refused = ask("http://192.0.2.1/x.jpg")
    assert refused.status_code == 400 and "loopback hosts only" in refused.text
    with ImageServerProcess(str(IMAGES)) as images:
        assert ask(images.base_url + "/images/coffee.jpg").status_code == 200
        missing = ask(images.base_url + "/images/none.jpg")
        assert missing.status_code == 400 and "HTTP 404" in missing.text


def test_the_run_flag_asks_for_served_images() -> None:
    import argparse

    from loadgen.commands import run as run_command
    from loadgen.commands.flags import scenario_overrides

    parser = argparse.ArgumentParser()
    run_command.configure(parser)
    assert scenario_overrides(parser.parse_args(["s.toml", "--serve-images"])).serve_images
    assert not scenario_overrides(parser.parse_args(["s.toml"])).serve_images
