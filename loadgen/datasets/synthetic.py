"""`source = "synthetic"`: pictures drawn from the seed (`loadgen.datasets.pictures`), each
stream its own, named `syn-SEED-PHASE-KEY` (a warm-up's `warm-...`)."""

from __future__ import annotations

from dataclasses import dataclass

from loadgen.config import ImagesConfig
from loadgen.datasets.base import PHASE_STREAM, ImageBuilder
from loadgen.datasets.images import ImageItem, encode, make_item
from loadgen.datasets.pictures import synthesize
from loadgen.datasets.slotted import SlottedDataset


@dataclass(frozen=True, slots=True)
class SyntheticImages:
    images: ImagesConfig
    seed: int  # the stream's
    prefix: str  # of the image ids

    def name(self, key: int) -> str:
        return f"{self.prefix}{key}"

    def build(self, key: int) -> ImageItem:
        images = self.images
        picture = synthesize(images.content, images.width, images.height, self.seed, key)
        data = encode(picture, images.format, images.quality)
        return make_item(self.name(key), data, images.format, images.width, images.height)


class SyntheticDataset(SlottedDataset):
    def _builder(self, kind: str, phase: str, seed: int) -> ImageBuilder:
        prefix = f"{'syn' if kind == PHASE_STREAM else 'warm'}-{self.seed}-{phase}-"
        return SyntheticImages(self.config.images, seed, prefix)
