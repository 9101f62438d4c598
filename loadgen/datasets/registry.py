"""The datasets by name (`[workload.images] source`). A new dataset is one line here (or, from
outside loadgen, one assignment to `DATASETS[name]` before the scenario is loaded)."""

from __future__ import annotations

from collections.abc import Callable

from loadgen.config import WorkloadConfig
from loadgen.datasets.base import Dataset
from loadgen.datasets.folder import FolderDataset
from loadgen.datasets.synthetic import SyntheticDataset
from loadgen.datasets.table import RowsDataset

# name -> how to make it from the workload's configuration and the scenario's seed
DatasetFactory = Callable[[WorkloadConfig, int], Dataset]

DATASETS: dict[str, DatasetFactory] = {
    "synthetic": SyntheticDataset,
    "folder": FolderDataset,
    "jsonl": RowsDataset,  # a .jsonl file, one request a line ([workload.dataset])
    "hf": RowsDataset,  # a Hugging Face dataset from local files ([workload.dataset])
}


def dataset_named(name: str) -> DatasetFactory:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(repr(n) for n in DATASETS)
        raise ValueError(f"unknown dataset {name!r}; expected one of: {known}") from None
