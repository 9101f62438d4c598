"""The real CPU vLLM server, started once for the session on a free loopback port.

Skipped with the reason when the CPU vLLM venv or the tiny model is absent (see
scripts/vllm_cpu_install.sh), unless LOADGEN_REQUIRE_VLLM=1, which turns absence into a failure.
LOADGEN_FAST=1 skips the whole suite. The server is stopped with SIGTERM at the end of the
session, and on any failure while it starts.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from vllm_helpers import ServerInfo

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import vllm_cpu_server  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.vllm)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def vllm_spec() -> vllm_cpu_server.ServerSpec:
    """The server's settings, once the CPU vLLM venv and the tiny model are known to exist."""
    if os.environ.get("LOADGEN_FAST") == "1":
        pytest.skip("LOADGEN_FAST=1: the real-vLLM suite is skipped")
    # A one-second stats interval puts engine log lines inside even a short run.
    spec = vllm_cpu_server.ServerSpec(port=_free_port(), log_stats_interval=1.0)
    reason = spec.missing()
    if reason:
        if os.environ.get("LOADGEN_REQUIRE_VLLM") == "1":
            pytest.fail(f"LOADGEN_REQUIRE_VLLM=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return spec


@pytest.fixture(scope="session")
def vllm_server(
    vllm_spec: vllm_cpu_server.ServerSpec, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerInfo]:
    spec = vllm_spec
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    # Under pytest-timeout's 300 s per test, which includes this start-up.
    server = vllm_cpu_server.start(spec, log, timeout=240.0)
    try:
        preprocessor = json.loads((spec.model / "preprocessor_config.json").read_text())
        yield ServerInfo(
            base_url=spec.base_url,
            model=spec.served_name,
            log=str(log),
            block_size=spec.block_size,
            min_pixels=int(preprocessor["min_pixels"]),
            max_pixels=int(preprocessor["max_pixels"]),
        )
    finally:
        vllm_cpu_server.stop(server.pid)


@pytest.fixture
def client(vllm_server: ServerInfo) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=vllm_server.base_url, timeout=120.0) as c:
        yield c
