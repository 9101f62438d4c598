"""A two-node Ray cluster on this machine, for the tests of shards as Ray actors.

Ray binds to the host's network interface by default, and every byte of a test must stay on
loopback: these tests run only in a network namespace whose one interface is `lo` (scripts/test
runs them with `unshare -n`; scripts/netns does it by hand). Elsewhere they are skipped, or fail
when LOADGEN_REQUIRE_RAY=1 (CI). Each node is a `ray start --block` process in its own session,
with its own CPU and a custom resource naming it; teardown ends each session's processes. The
cluster uses Ray's token authentication with a token of its own (RAY_AUTH_TOKEN, set for the
session's drivers too), so it never depends on a token file another cluster on this machine
may have written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NODES = 2
START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class RayCluster:
    address: str  # HOST:PORT of the head's GCS
    temp_dir: Path
    nodes: int


def _interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def _unavailable(why: str) -> None:
    if os.environ.get("LOADGEN_REQUIRE_RAY") == "1":
        pytest.fail(f"the Ray tests cannot run: {why}")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alive_nodes(address: str) -> int:
    code = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, address], capture_output=True, text=True, timeout=60
    )
    lines = out.stdout.strip().splitlines()
    return int(lines[-1]) if out.returncode == 0 and lines else 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            return


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    if _interfaces() != ["lo"]:
        _unavailable(
            "not in a network namespace with only lo (Ray would bind the host's interface): "
            f"interfaces {_interfaces()}; run scripts/test, or scripts/netns pytest tests/ray"
        )
    try:
        import ray  # noqa: F401
    except ImportError:
        _unavailable("Ray is not installed (pip install -e '.[ray]')")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    # A short path: Ray's socket paths live under it and must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="lgray", dir="/tmp"))
    port = _free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {key: os.environ.get(key) for key in auth}
    os.environ.update(auth)  # the drivers (loadgen run) the tests start
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--block", "--num-cpus=1", "--disable-usage-stats"]
    procs: list[subprocess.Popen[bytes]] = []
    log = (temp / "nodes.log").open("wb")
    try:
        head = [ray_cli, "start", "--head", f"--port={port}", f"--temp-dir={temp}"]
        head += ["--include-dashboard=false", '--resources={"node0": 1}', *common]
        procs.append(
            subprocess.Popen(head, stdout=log, stderr=log, env=env, start_new_session=True)
        )
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while _alive_nodes(address) < 1:
            if time.monotonic() > deadline or procs[0].poll() is not None:
                pytest.fail(f"the Ray head did not start: see {temp / 'nodes.log'}")
            time.sleep(1)
        for k in range(1, NODES):
            worker = [ray_cli, "start", f"--address={address}", f'--resources={{"node{k}": 1}}']
            procs.append(
                subprocess.Popen(
                    [*worker, *common], stdout=log, stderr=log, env=env, start_new_session=True
                )
            )
        while _alive_nodes(address) < NODES:
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray workers did not join: see {temp / 'nodes.log'}")
            time.sleep(1)
        yield RayCluster(address, temp, NODES)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
