"""`source = "synthetic"`: pictures drawn from the seed (`loadgen.datasets.pictures`), each
stream its own, named `syn-SEED-PHASE-KEY` (a warm-up's `warm-...`). With a mix
(`[workload.images] mix`) each key's size, format and content is its variant
(`loadgen.datasets.mix.variant_of`), named at the end of its id: `syn-SEED-PHASE-KEY-448x336-jpeg-photo`.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadgen.config import ImagesConfig
from loadgen.datasets.base import PHASE_STREAM, ImageBuilder
from loadgen.datasets.images import ImageItem, encode, make_item
from loadgen.datasets.mix import ImageVariant, Weighted, mix_of, variant_of
from loadgen.datasets.pictures import synthesize
from loadgen.datasets.slotted import SlottedDataset


@dataclass(frozen=True, slots=True)
class SyntheticImages:
    images: ImagesConfig
    seed: int  # the stream's
    prefix: str  # of the image ids
    mix: Weighted[ImageVariant] | None = None  # None: every image as `images` says

    def name(self, key: int) -> str:
        if self.mix is None:
            return f"{self.prefix}{key}"
        return f"{self.prefix}{key}-{self._variant(key).name}"

    def build(self, key: int) -> ImageItem:
        images = self.images
        if self.mix is None:
            content, fmt = images.content, images.format
            width, height = images.width, images.height
        else:
            v = self._variant(key)
            content, fmt, width, height = v.content, v.format, v.width, v.height
        picture = synthesize(content, width, height, self.seed, key)
        data = encode(picture, fmt, images.quality)
        return make_item(self.name(key), data, fmt, width, height)

    def _variant(self, key: int) -> ImageVariant:
        assert self.mix is not None
        return variant_of(self.mix, self.seed, key, self.images.pool_size)


class SyntheticDataset(SlottedDataset):
    def _builder(self, kind: str, phase: str, seed: int) -> ImageBuilder:
        prefix = f"{'syn' if kind == PHASE_STREAM else 'warm'}-{self.seed}-{phase}-"
        images = self.config.images
        mix = mix_of(images.mix) if images.mix else None
        return SyntheticImages(images, seed, prefix, mix)
