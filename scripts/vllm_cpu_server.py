"""Start, stop and query a CPU vLLM server that serves the tiny test model on loopback.

    python3 scripts/vllm_cpu_server.py start [--port N] [--state-dir DIR] [--venv DIR] [--model DIR]
    python3 scripts/vllm_cpu_server.py status [--state-dir DIR]
    python3 scripts/vllm_cpu_server.py stop [--state-dir DIR]
    python3 scripts/vllm_cpu_server.py run [--host H] [--port N]   (foreground, e.g. in a container)

Standard library only, so any Python 3.11 runs it. `start` returns once GET /health answers 200
(about a minute on two cores, almost all of it imports) and leaves the server running; its pid,
port and log live in the state folder. `stop` sends SIGTERM and waits. The integration tests
import `ServerSpec`, `start` and `stop` from here, so tests and hand use share one set of flags.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "vllm_cpu_launch.py"
CACHE = Path.home() / ".cache" / "loadgen"
SERVED_NAME = "tiny-vlm"


def default_venv() -> Path:
    return Path(os.environ.get("LOADGEN_VLLM_VENV") or CACHE / "vllm-cpu-venv")


def default_model() -> Path:
    return Path(os.environ.get("LOADGEN_TINY_VLM") or CACHE / "tiny-vlm")


def default_state_dir() -> Path:
    return Path(os.environ.get("LOADGEN_VLLM_STATE") or CACHE / "vllm-cpu-server")


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """What to serve and how. The defaults are the ones the integration tests rely on."""

    venv: Path = field(default_factory=default_venv)
    model: Path = field(default_factory=default_model)
    port: int = 8000
    host: str = "127.0.0.1"
    served_name: str = SERVED_NAME
    max_model_len: int = 2048
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 4096
    # Only whole blocks are cached; the CPU default (128) is longer than a short captioning
    # prompt, which would then never hit the prefix cache.
    block_size: int = 32
    images_per_prompt: int = 2
    kv_cache_gib: int = 1
    log_stats_interval: float = 10.0  # seconds between the engine's throughput log lines

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [
            str(self.python),
            str(LAUNCHER),
            "serve",
            str(self.model),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--served-model-name",
            self.served_name,
            "--dtype",
            "float32",
            "--max-model-len",
            str(self.max_model_len),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--max-num-batched-tokens",
            str(self.max_num_batched_tokens),
            "--block-size",
            str(self.block_size),
            "--enforce-eager",
            "--limit-mm-per-prompt",
            json.dumps({"image": self.images_per_prompt, "video": 0}),
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
        ]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
                # The engine's worker binds one core and leaves the other to the API server.
                "VLLM_CPU_OMP_THREADS_BIND": "auto",
                "VLLM_LOG_STATS_INTERVAL": str(self.log_stats_interval),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def missing(self) -> str | None:
        """Why this spec cannot start, or None when the venv and the model are in place."""
        if not self.python.exists():
            return f"no CPU vLLM venv at {self.venv} (run scripts/vllm_cpu_install.sh)"
        if not (self.model / "config.json").exists():
            return f"no tiny model at {self.model} (run scripts/vllm_cpu_install.sh)"
        return None


class ServerError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class RunningServer:
    spec: ServerSpec
    pid: int
    log: Path
    startup_seconds: float  # from spawn to the first /health 200


def healthy(base_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=timeout) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(spec: ServerSpec, log: Path, timeout: float = 600.0) -> RunningServer:
    """Spawn the server in a session of its own, logging to `log`; return once it is healthy.

    On failure (exit or timeout) the server is stopped and ServerError carries the log's tail.
    """
    reason = spec.missing()
    if reason:
        raise ServerError(reason)
    if healthy(spec.base_url, timeout=0.5):
        raise ServerError(f"something already answers on {spec.base_url}")
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            spec.argv(),
            env=spec.env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches its children too
        )
    deadline = began + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise ServerError(
                    f"vLLM exited with {proc.returncode} during start-up:\n{_tail(log)}"
                )
            if healthy(spec.base_url):
                return RunningServer(spec, proc.pid, log, time.monotonic() - began)
            if time.monotonic() > deadline:
                raise ServerError(f"vLLM not healthy after {timeout:.0f} s:\n{_tail(log)}")
            time.sleep(1.0)
    except BaseException:
        # Whatever interrupts the wait (timeout, Ctrl-C, a test runner's alarm), the server
        # must not outlive it.
        stop(proc.pid)
        raise


def stop(pid: int, timeout: float = 60.0) -> bool:
    """SIGTERM the server's process group and wait for it; SIGKILL what is left after `timeout`.

    Returns True when the group ended on SIGTERM alone. The server was started as a session
    leader, so the group holds only its own processes.
    """
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        if not _group_alive(pid):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- command line: state kept in files so start and stop can be separate invocations ----


def _state_files(state_dir: Path) -> tuple[Path, Path, Path]:
    return state_dir / "server.pid", state_dir / "server.port", state_dir / "server.log"


def _read_state(state_dir: Path) -> tuple[int, int] | None:
    pid_file, port_file, _ = _state_files(state_dir)
    try:
        return int(pid_file.read_text()), int(port_file.read_text())
    except (OSError, ValueError):
        return None


def cmd_start(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    pid_file, port_file, log = _state_files(state_dir)
    state = _read_state(state_dir)
    if state and _alive(state[0]):
        print(f"vllm-cpu-server: already running (pid {state[0]}, port {state[1]})")
        return 0
    spec = ServerSpec(
        venv=args.venv,
        model=args.model,
        port=args.port,
        log_stats_interval=args.log_stats_interval,
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    try:
        server = start(spec, log, timeout=args.timeout)
    except ServerError as exc:
        print(f"vllm-cpu-server: {exc}", file=sys.stderr)
        return 1
    pid_file.write_text(f"{server.pid}\n")
    port_file.write_text(f"{spec.port}\n")
    print(
        f"vllm-cpu-server: {spec.base_url} healthy after {server.startup_seconds:.1f} s "
        f"(pid {server.pid}, model {spec.served_name!r}, log {log})"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = _read_state(args.state_dir)
    if not state or not _alive(state[0]):
        print("vllm-cpu-server: not running")
        return 3
    pid, port = state
    health = "healthy" if healthy(f"http://127.0.0.1:{port}") else "not healthy"
    print(f"vllm-cpu-server: running (pid {pid}, http://127.0.0.1:{port}, {health})")
    return 0 if health == "healthy" else 1


def cmd_stop(args: argparse.Namespace) -> int:
    pid_file, port_file, _ = _state_files(args.state_dir)
    state = _read_state(args.state_dir)
    if not state or not _alive(state[0]):
        print("vllm-cpu-server: not running")
    else:
        began = time.monotonic()
        clean = stop(state[0])
        how = "on SIGTERM" if clean else "after SIGKILL"
        print(f"vllm-cpu-server: stopped {how} in {time.monotonic() - began:.1f} s")
    for path in (pid_file, port_file):
        path.unlink(missing_ok=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Replace this process with the server, in the foreground (a container's main process)."""
    spec = ServerSpec(
        venv=args.venv,
        model=args.model,
        port=args.port,
        host=args.host,
        log_stats_interval=args.log_stats_interval,
    )
    reason = spec.missing()
    if reason:
        print(f"vllm-cpu-server: {reason}", file=sys.stderr)
        return 1
    argv = spec.argv()
    os.execve(argv[0], argv, spec.env())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CPU vLLM server for the tiny test model")
    parser.add_argument("command", choices=["start", "status", "stop", "run"])
    parser.add_argument("--state-dir", type=Path, default=default_state_dir())
    parser.add_argument("--venv", type=Path, default=default_venv())
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("LOADGEN_VLLM_PORT", "8000"))
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="start-up limit, seconds")
    parser.add_argument("--log-stats-interval", type=float, default=10.0)
    args = parser.parse_args(argv)
    handlers = {"start": cmd_start, "status": cmd_status, "stop": cmd_stop, "run": cmd_run}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
