"""What a run sends: a dataset's requests (`loadgen.datasets`) as an endpoint's bodies
(`loadgen.endpoints`), their images built before the measured phase. See docs/workload.md."""

from loadgen.datasets.images import ImageItem, decode_data_url
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
    "ImageItem",
    "PhaseRequests",
    "Workload",
    "WorkloadTooLarge",
    "decode_data_url",
]
