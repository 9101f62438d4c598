"""Where requests' inputs come from: prompts, images (synthetic or from a folder) and per-request
max_tokens, by named, seeded streams. Adding a dataset is a module with a `Dataset` and a line in
`DATASETS` (docs/architecture.md, "Endpoints and datasets")."""

from loadgen.datasets.base import (
    PHASE_STREAM,
    Dataset,
    ImageBuilder,
    RequestInputs,
    RequestStream,
)
from loadgen.datasets.images import ImageItem, decode_data_url
from loadgen.datasets.registry import DATASETS, DatasetFactory, dataset_named

__all__ = [
    "DATASETS",
    "PHASE_STREAM",
    "Dataset",
    "DatasetFactory",
    "ImageBuilder",
    "ImageItem",
    "RequestInputs",
    "RequestStream",
    "dataset_named",
    "decode_data_url",
]
