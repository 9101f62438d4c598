"""A local Ray cluster of several nodes on this machine (for tests/ray and scripts/bench_ray.py).

Each node is a `ray start --block` process in its own session, with its own CPUs and a custom
resource naming it (`node0`, `node1`, ...); `stop()` ends each session's processes. Ray binds the
host's interface address by default: start a cluster only in a network namespace whose one
interface is `lo` (`only_loopback()`; scripts/netns makes one, as root). The cluster uses Ray's
token authentication with a token of its own (RAY_AUTH_TOKEN, set in this process's environment
while the cluster runs, so the drivers it starts have it too): it never depends on a token file
another cluster on this machine may have written.

    with local_cluster(2) as cluster:   # cluster.address: HOST:PORT of the head's GCS
        ...

`ClusterUnavailable`: this host cannot have one (Ray missing, more than loopback), a test's skip;
`ClusterFailed`: a node did not start or join, a failure. A script prints either and exits.
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 90.0
STARTED = b"Ray runtime started."  # what `ray start` logs once its node is up


class ClusterUnavailable(RuntimeError):
    """A local Ray cluster cannot be started here; the message says why."""


class ClusterFailed(RuntimeError):
    """A node of the cluster did not start or join; the message names its log."""


@dataclass(frozen=True)
class RayCluster:
    address: str  # HOST:PORT of the head's GCS
    temp_dir: Path
    nodes: int
    pids: tuple[int, ...] = field(default=())  # each node's `ray start --block` process


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def only_loopback() -> bool:
    return interfaces() == ["lo"]


def ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def alive_nodes(address: str) -> int:
    """Alive nodes of the cluster at `address`, asked from a short-lived driver (0 if none)."""
    code = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, address], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return 0
    lines = out.stdout.strip().splitlines()
    return int(lines[-1]) if out.returncode == 0 and lines else 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            return


def _wait_for(
    address: str, nodes: int, deadline: float, failed: Callable[[], bool], what: str, log: Path
) -> None:
    # Ask the cluster only once every node said it started: a driver that connects to a head
    # still starting can fail its registration and hang (seen on a loaded host).
    while log.read_bytes().count(STARTED) < nodes or alive_nodes(address) < nodes:
        if time.monotonic() > deadline or failed():
            raise ClusterFailed(f"{what}: see {log}")
        time.sleep(1)


@contextlib.contextmanager
def local_cluster(
    nodes: int, num_cpus: int = 1, cpus: Sequence[int] | None = None
) -> Iterator[RayCluster]:
    """`nodes` Ray nodes on this host, `num_cpus` CPUs each (what placement counts, not a
    limit); `cpus`: the cores their processes (and so their actors) may run on."""
    if not only_loopback():
        raise ClusterUnavailable(
            "not in a network namespace with only lo (Ray would bind the host's interface): "
            f"interfaces {interfaces()}; run it under scripts/netns (as root)"
        )
    if not ray_installed():
        raise ClusterUnavailable("Ray is not installed (pip install -e '.[ray]')")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    # A short path: Ray's socket paths live under it and must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="lgray", dir="/tmp"))
    port = _free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {key: os.environ.get(key) for key in auth}
    os.environ.update(auth)  # the drivers started while the cluster runs
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--block", f"--num-cpus={num_cpus}", "--disable-usage-stats"]
    pin = (lambda: os.sched_setaffinity(0, set(cpus))) if cpus else None
    procs: list[subprocess.Popen[bytes]] = []
    log_path = temp / "nodes.log"
    log = log_path.open("wb")

    def start(cmd: list[str]) -> None:
        procs.append(
            subprocess.Popen(
                cmd, stdout=log, stderr=log, env=env, start_new_session=True, preexec_fn=pin
            )
        )

    try:
        head = [ray_cli, "start", "--head", f"--port={port}", f"--temp-dir={temp}"]
        start([*head, "--include-dashboard=false", '--resources={"node0": 1}', *common])
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        head_died = lambda: procs[0].poll() is not None  # noqa: E731
        _wait_for(address, 1, deadline, head_died, "the Ray head did not start", log_path)
        for k in range(1, nodes):  # one at a time: nodes started together time out on a busy host
            start(
                [ray_cli, "start", f"--address={address}", f'--resources={{"node{k}": 1}}', *common]
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            died = lambda: procs[-1].poll() is not None  # noqa: E731
            _wait_for(address, k + 1, deadline, died, f"Ray node {k} did not join", log_path)
        yield RayCluster(address, temp, nodes, tuple(p.pid for p in procs))
    finally:
        for proc in reversed(procs):
            _stop(proc)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
