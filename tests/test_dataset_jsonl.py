"""The jsonl dataset file: every request read and checked before a run, each problem by line."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from loadgen.datasets.jsonl import read_jsonl
from loadgen.datasets.rows import DatasetFileError, ImageRef

SHIPPED = Path(__file__).resolve().parents[1] / "scenarios" / "captions.jsonl"


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def _write(folder: Path, *lines: object) -> Path:
    path = folder / "set.jsonl"
    text = "\n".join(x if isinstance(x, str) else orjson.dumps(x).decode() for x in lines)
    path.write_text(text + "\n")
    return path


def test_the_shipped_example_reads_whole() -> None:
    requests = read_jsonl(SHIPPED)
    assert len(requests) == 5
    assert [len(r.images) for r in requests] == [1, 1, 1, 2, 0]
    assert requests[1].max_tokens == 48 and requests[0].max_tokens is None
    assert requests[0].reference and requests[4].reference is None
    assert all(Path(i.value).is_file() for r in requests for i in r.images)


def test_paths_urls_and_data_urls(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.jpg").write_bytes(_jpeg())
    data = "data:image/jpeg;base64," + base64.b64encode(_jpeg()).decode()
    path = _write(
        tmp_path,
        {"prompt": "p", "images": ["pics/a.jpg", "https://img.example/b.png", data]},
        "",
        {"prompt": "q", "max_tokens": 5},
    )
    first, second = read_jsonl(path)
    assert first.images == (
        ImageRef("file", str((tmp_path / "pics" / "a.jpg").resolve())),
        ImageRef("url", "https://img.example/b.png"),
        ImageRef("data", data),
    )
    assert (first.origin, second.origin) == ("line 1", "line 3") and second.max_tokens == 5


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "a JSON object is expected"),
        ({"prompt": "p", "image": ["a.jpg"]}, "unknown key(s) 'image'"),
        ({"images": []}, '"prompt" must be a non-empty string'),
        ({"prompt": "p", "images": "a.jpg"}, '"images" must be a list of strings'),
        ({"prompt": "p", "max_tokens": 0}, '"max_tokens" must be a whole number'),
        ({"prompt": "p", "max_tokens": True}, '"max_tokens" must be a whole number'),
        ({"prompt": "p", "reference": 3}, '"reference" must be a string'),
        ({"prompt": "p", "images": ["../x.jpg"]}, "leads out of the dataset file's folder"),
        ({"prompt": "p", "images": ["/etc/x.jpg"]}, "paths are relative"),
        ({"prompt": "p", "images": ["missing.jpg"]}, "no such file"),
        ({"prompt": "p", "images": ["notes.txt"]}, "an image file ends in"),
        ({"prompt": "p", "images": ["a\x1b[31m.jpg"]}, "without control characters"),
        ({"prompt": "p", "images": ["http:///x.png"]}, "names no host"),
        ({"prompt": "p", "images": ["https://h/a b.png"]}, "control characters, blanks"),
        ({"prompt": "p", "images": ["data:text/plain;base64,aGk="]}, "data:image/<type>"),
        ({"prompt": "p", "images": ["data:image/png;base64,@@@"]}, "does not decode"),
    ],
)
def test_each_problem_is_named_with_its_line(tmp_path: Path, line: object, fragment: str) -> None:
    path = _write(tmp_path, {"prompt": "fine"}, line)
    with pytest.raises(DatasetFileError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert "line 2:" in message and fragment in message
    assert "\x1b" not in message


def test_many_problems_are_summed_up(tmp_path: Path) -> None:
    path = _write(tmp_path, *["{bad"] * 9)
    with pytest.raises(DatasetFileError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert "9 bad line(s)" in message and "... and 4 more" in message


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DatasetFileError, match="no requests"):
        read_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(DatasetFileError, match="cannot read it"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(_jpeg())
    inner = tmp_path / "set"
    inner.mkdir()
    (inner / "link.jpg").symlink_to(outside)
    path = inner / "s.jsonl"
    path.write_text('{"prompt": "p", "images": ["link.jpg"]}\n')
    with pytest.raises(DatasetFileError, match="leads out"):
        read_jsonl(path)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(["prompt", "images", "max_tokens", "reference"]), _json)
        | _json,
        min_size=1,
        max_size=4,
    )
)
def test_any_json_lines_read_or_refuse_cleanly(
    tmp_path_factory: pytest.TempPathFactory, lines: list[object]
) -> None:
    folder = tmp_path_factory.mktemp("any")
    path = folder / "x.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))  # json: integers of any size
    try:
        requests = read_jsonl(path)
    except DatasetFileError as exc:
        assert "line" in str(exc) or "no requests" in str(exc)
    else:
        assert all(r.prompt and r.prompt.strip() for r in requests)
