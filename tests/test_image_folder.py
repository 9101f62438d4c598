"""Image folders: every file either becomes a request's image or is named with its reason (or
skipped with `skip_bad`), before any request; never a traceback."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from loadgen.datasets.images import decode_data_url, load_file
from loadgen.errors import LoadgenError
from loadgen.scenario import load_scenario
from loadgen.workload.workload import Workload


def photo(
    width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 80, 20)
) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def mpo_bytes() -> bytes:
    """A multi-picture JPEG, as phones write them (Pillow reads it back as "MPO")."""
    buf = io.BytesIO()
    photo().save(buf, "MPO", save_all=True, append_images=[photo(colour=(10, 90, 200))])
    return buf.getvalue()


def jpeg_bytes(width: int = 640, height: int = 480) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((width, height), 60).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))


def scenario_for(folder: Path, *extra: str) -> Path:
    text = "\n".join(
        [
            "[load]",
            "requests = 4",
            "[workload.images]",
            'source = "folder"',
            f'folder = "{folder}"',
            *list(extra),
        ]
    )
    path = folder.parent / "s.toml"
    path.write_text(text + "\n")
    return path


def test_mpo_is_read_as_a_jpeg(tmp_path: Path) -> None:
    data = mpo_bytes()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    path = tmp_path / "phone.jpg"
    path.write_bytes(data)
    item = load_file(path, max_side=0, quality=85)
    assert (item.format, item.width, item.height) == ("jpeg", 64, 48)
    mime, sent = decode_data_url(item.data_url)
    assert (mime, sent) == ("image/jpeg", data)  # sent as the file is, as vLLM accepts it
    small = load_file(path, max_side=32, quality=85)
    assert (small.format, small.width, small.height) == ("jpeg", 32, 24)
    assert Image.open(io.BytesIO(decode_data_url(small.data_url)[1])).format == "JPEG"


BAD_FILES = [
    ("empty.jpg", b"", "empty file"),
    ("text.jpg", b"this is not a picture\n", "not an image file"),
    ("anim.png", b"GIF89a" + b"\0" * 64, ""),  # a GIF named .png: unsupported or unreadable
    ("truncated.jpg", jpeg_bytes()[:3000], "truncated"),
    ("bomb.png", png_header_only(20_000, 20_000), "pixels"),
]


@pytest.mark.parametrize(("name", "content", "reason"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
@pytest.mark.parametrize("max_side", [0, 64])
def test_a_bad_file_is_one_error_naming_it(
    tmp_path: Path, name: str, content: bytes, reason: str, max_side: int
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a-good.png")
    (folder / name).write_bytes(content)
    scenario = load_scenario(scenario_for(folder, f"max_side = {max_side}"))
    with pytest.raises(LoadgenError) as info:
        Workload(scenario.workload, 0, "m")
    message = str(info.value)
    assert str(folder / name) in message
    assert reason in message
    assert "skip_bad" in message
    assert "\n" not in message


def test_load_file_names_a_truncated_file_when_resizing(tmp_path: Path) -> None:
    """The file may change after the folder was checked: still one error naming it."""
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg_bytes()[:3000])
    with pytest.raises(LoadgenError, match=r"cut.jpg: .*truncated"):
        load_file(path, max_side=64, quality=85)


def test_skip_bad_leaves_bad_files_out_and_says_which(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, content, _ in BAD_FILES:
        (folder / name).write_bytes(content)
    (folder / "phone.jpg").write_bytes(mpo_bytes())
    Image.new("RGB", (32, 32)).save(folder / "z.png")
    scenario = load_scenario(scenario_for(folder, "skip_bad = true"))
    workload = Workload(scenario.workload, 0, "m")
    reqs = workload.prepare("main", 4)
    described = workload.describe()
    assert "skipped 5 unusable files" in described
    assert "empty.jpg: empty file" in described
    names = {item.id for item in reqs.images()}
    assert names == {"phone.jpg", "z.png"}


def test_a_folder_of_only_bad_files_is_refused_even_with_skip_bad(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    scenario = load_scenario(scenario_for(folder, "skip_bad = true"))
    with pytest.raises(LoadgenError, match=r"no usable image files .*1 unusable, skipped"):
        Workload(scenario.workload, 0, "m")


def test_run_with_a_bad_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder is read inside the run's task group: its error comes out as one line."""
    import socket

    from loadgen import cli

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "ok.jpg").write_bytes(jpeg_bytes(32, 32))
    path = scenario_for(folder)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        code = cli.main(["run", str(path), "--url", url, "--model", "m", "--no-report",
                         "--no-progress", "--workers", "1", "--output", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("loadgen:")]
    assert len(lines) == 1, err
    assert "empty.jpg: empty file" in lines[0]
