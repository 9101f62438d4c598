"""What a run sends: images (synthetic or from a folder), prompts, and request bodies, built
before the measured phase. See docs/workload.md."""

from loadgen.workload.images import ImageItem, decode_data_url
from loadgen.workload.payloads import TEXT_BEFORE_IMAGES
from loadgen.workload.workload import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_IMAGES,
    PhaseRequests,
    Workload,
    WorkloadTooLarge,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_IMAGES",
    "TEXT_BEFORE_IMAGES",
    "ImageItem",
    "PhaseRequests",
    "Workload",
    "WorkloadTooLarge",
    "decode_data_url",
]
