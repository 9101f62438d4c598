"""`--serve-images`' static server: the folder's image files by name, nothing else, counted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadgen.childserver import ChildServerError
from loadgen.imageserver import ImageServerProcess, image_path

IMAGES = Path(__file__).resolve().parents[1] / "scenarios" / "images"


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServerProcess]:
    process = ImageServerProcess(str(IMAGES))
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_serves_each_file_byte_for_byte(server: ImageServerProcess) -> None:
    names = sorted(p.name for p in IMAGES.glob("*.jpg"))
    assert names
    with httpx.Client(base_url=server.base_url, trust_env=False) as client:
        before = client.get("/stats").json()["served"]
        for name in names:
            response = client.get(image_path(name))
            assert response.status_code == 200
            assert response.headers["content-type"] == "image/jpeg"
            assert response.content == (IMAGES / name).read_bytes()
        stats = client.get("/stats").json()
    assert stats["served"] - before == len(names) and stats["files"] == len(names)


@pytest.mark.parametrize(
    "path",
    ["/images/README.md", "/images/..%2FREADME.md", "/images/%2e%2e", "/images/missing.jpg",
     "/etc/passwd", "/images/"],
)  # fmt: skip
def test_nothing_but_the_listed_files(server: ImageServerProcess, path: str) -> None:
    with httpx.Client(base_url=server.base_url, trust_env=False) as client:
        response = client.get(path)
    assert response.status_code == 404
    assert b"Installation" not in response.content


def test_a_public_host_names_the_url(tmp_path: Path) -> None:
    process = ImageServerProcess(str(IMAGES), public_host="localhost")
    try:
        url = process.start()
        assert url.startswith("http://localhost:")
    finally:
        process.stop()


def test_a_folder_without_images_is_a_clear_failure(tmp_path: Path) -> None:
    process = ImageServerProcess(str(tmp_path))
    with pytest.raises(ChildServerError, match="the image server") as info:
        process.start()
    assert "loadgen-images: no usable image files" in str(info.value)
    assert "Traceback" not in str(info.value)
