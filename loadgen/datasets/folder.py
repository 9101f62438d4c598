"""`source = "folder"`: the image files of a folder, sorted by name, listed (and checked) when
the dataset is made. Every stream draws from the same files, and shares the images built. With
`url_base` (set by `--serve-images`) requests name the files by URL instead of carrying them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from loadgen.config import WorkloadConfig
from loadgen.datasets.base import ImageBuilder
from loadgen.datasets.images import ImageItem, list_folder, load_file, url_item
from loadgen.datasets.slotted import SlottedDataset


@dataclass(frozen=True, slots=True)
class FolderImages:
    files: tuple[Path, ...]
    max_side: int
    quality: int

    def name(self, key: int) -> str:
        return self.files[key].name

    def build(self, key: int) -> ImageItem:
        return load_file(self.files[key], max_side=self.max_side, quality=self.quality)


@dataclass(frozen=True, slots=True)
class FolderUrls:
    """The folder's files named by URL (`url_base`, as `--serve-images` sets it): the target
    fetches them."""

    files: tuple[Path, ...]
    url_base: str

    def name(self, key: int) -> str:
        return self.files[key].name

    def build(self, key: int) -> ImageItem:
        name = self.files[key].name
        return url_item(name, f"{self.url_base.rstrip('/')}/{quote(name, safe='')}")


class FolderDataset(SlottedDataset):
    def __init__(self, cfg: WorkloadConfig, seed: int) -> None:
        super().__init__(cfg, seed)
        images = cfg.images
        files, self.skipped = list_folder(images.folder, skip_bad=images.skip_bad)
        self._images: FolderImages | FolderUrls = (
            FolderUrls(tuple(files), images.url_base)
            if images.url_base
            else FolderImages(tuple(files), images.max_side, images.quality)
        )
        self._shared: dict[int, ImageItem] = {}

    def _builder(self, kind: str, phase: str, seed: int) -> ImageBuilder:
        return self._images

    def _built(self) -> dict[int, ImageItem]:
        return self._shared

    def _files(self) -> int | None:
        return len(self._images.files)
