"""Hugging Face datasets from local files: parquet, arrow and imagefolder built on the spot
(nothing comes from a hub), read into rows with the columns named."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from loadgen.datasets.hf import HfSpec, read_hf
from loadgen.datasets.rows import DatasetFileError

datasets = pytest.importorskip("datasets")


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _captions(n: int) -> object:
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "captions": datasets.Sequence(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": _jpeg((10 * i, 20, 30)), "path": None} for i in range(n)],
            "question": [f"What is in picture {i}?" for i in range(n)],
            "captions": [[f"caption {i}", "another"] for i in range(n)],
        },
        features=features,
    )


def test_parquet_with_image_prompt_and_reference_columns(tmp_path: Path) -> None:
    path = tmp_path / "coco.parquet"
    _captions(4).to_parquet(str(path))  # type: ignore[attr-defined]
    spec = HfSpec(str(path), "image", prompt_column="question", reference_column="captions")
    rows = read_hf(spec)
    assert [r.prompt for r in rows] == [f"What is in picture {i}?" for i in range(4)]
    assert [r.reference for r in rows] == [f"caption {i}" for i in range(4)]
    for i, row in enumerate(rows):
        (image,) = row.images
        assert image.source == "bytes" and image.data == _jpeg((10 * i, 20, 30))
    assert read_hf(HfSpec(str(path), limit=2))[1].prompt is None


def test_arrow_saved_to_disk(tmp_path: Path) -> None:
    _captions(3).save_to_disk(str(tmp_path / "saved"))  # type: ignore[attr-defined]
    rows = read_hf(HfSpec(str(tmp_path / "saved"), reference_column="captions"))
    assert len(rows) == 3 and all(r.images[0].source == "bytes" for r in rows)


def test_imagefolder_with_metadata(tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(_jpeg((i, i, i)))
    (folder / "metadata.csv").write_text(
        "file_name,text\n" + "".join(f"{i}.jpg,a grey square {i}\n" for i in range(3))
    )
    rows = read_hf(HfSpec(str(folder), reference_column="text"))
    assert sorted(r.reference or "" for r in rows) == [f"a grey square {i}" for i in range(3)]
    assert all(len(r.images) == 1 for r in rows)


def test_string_columns_are_paths_or_urls(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(_jpeg((1, 2, 3)))
    table = datasets.Dataset.from_dict(
        {"img": ["a.jpg", "https://img.example/b.png"], "q": ["one", "two"]}
    )
    table.to_parquet(str(tmp_path / "s.parquet"))
    first, second = read_hf(HfSpec(str(tmp_path / "s.parquet"), "img", prompt_column="q"))
    assert first.images[0].source == "file" and second.images[0].source == "url"


@pytest.mark.parametrize(
    ("spec_args", "fragment"),
    [
        ({"image_column": "picture"}, "no column 'picture'; it has image, question, captions"),
        ({"prompt_column": "nope"}, "no column 'nope'"),
    ],
)
def test_missing_columns_are_named(
    tmp_path: Path, spec_args: dict[str, str], fragment: str
) -> None:
    path = tmp_path / "c.parquet"
    _captions(1).to_parquet(str(path))  # type: ignore[attr-defined]
    with pytest.raises(DatasetFileError) as info:
        read_hf(HfSpec(str(path), **spec_args))
    assert fragment in str(info.value)


def test_unreadable_and_unknown_inputs(tmp_path: Path) -> None:
    with pytest.raises(DatasetFileError, match="no such file or folder"):
        read_hf(HfSpec(str(tmp_path / "absent.parquet")))
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(DatasetFileError, match="cannot tell its format"):
        read_hf(HfSpec(str(tmp_path / "x.csv")))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DatasetFileError, match="cannot read it as parquet"):
        read_hf(HfSpec(str(tmp_path / "bad.parquet")))
    path = tmp_path / "up.parquet"
    datasets.Dataset.from_dict({"image": ["../escape.jpg"]}).to_parquet(str(path))
    with pytest.raises(DatasetFileError, match=r"row 0: images\[0\].*leads out"):
        read_hf(HfSpec(str(path)))
