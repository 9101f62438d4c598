"""A two-node Ray cluster on this machine, for the tests of shards as Ray actors.

Ray binds to the host's network interface by default, and every byte of a test must stay on
loopback: these tests run only in a network namespace whose one interface is `lo` (scripts/test
runs them with `unshare -n`; scripts/netns does it by hand). Elsewhere they are skipped, or fail
when LOADGEN_REQUIRE_RAY=1 (CI). The cluster is scripts/raycluster.py's (also used by
scripts/bench_ray.py): each node a `ray start --block` process in its own session, with its own
CPU and a custom resource naming it, and a Ray auth token of its own; teardown ends each
session's processes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from raycluster import ClusterFailed, ClusterUnavailable, RayCluster, local_cluster

NODES = 2

__all__ = ["RayCluster", "ray_cluster"]


def _unavailable(why: str) -> NoReturn:
    if os.environ.get("LOADGEN_REQUIRE_RAY") == "1":
        pytest.fail(f"the Ray tests cannot run: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(local_cluster(NODES))
        except ClusterUnavailable as exc:
            _unavailable(str(exc))
        except ClusterFailed as exc:
            pytest.fail(str(exc))
        yield cluster
