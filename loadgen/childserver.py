"""A server run as a child process: started, awaited until healthy, stopped, never left behind.

With port 0 the server binds a free port itself and prints its URL as the first stdout line (after
a fixed prefix), so there is no window in which another process could take the port. stderr is
collected by a reader thread, and copied to `log_path` when given. The server is killed when this
process dies, however it dies (`loadgen.lifeline`). Subclasses name the command and the prefix.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import IO, TYPE_CHECKING, ClassVar, Self

import anyio

if TYPE_CHECKING:
    from aiohttp import web

from loadgen import lifeline

# Loopback health checks must not go through a proxy named in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ChildServerError(RuntimeError):
    """The server did not start (its stderr is in the message)."""


class ChildServer:
    """One server process; a subclass gives `command()`, `listening_prefix` and `what`."""

    listening_prefix: ClassVar[str]
    what: ClassVar[str]  # how messages name it: "the simulator"

    def __init__(
        self,
        args: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.args = list(args)
        self.host = host
        self.port = port
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.base_url = ""
        self._proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._log_file: IO[str] | None = None
        self._url_box: list[str] = []  # the address from the first stdout line

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> str:
        """Start the server, wait until /health answers 200; return its base URL. Blocks: from
        async code, use `astart`."""
        deadline = time.monotonic() + timeout
        first_line = self._launch()
        try:
            first_line.wait(timeout)
            self._take_address()
            while not self._healthy(deadline):
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        return self.base_url

    async def astart(self, within: float = 10.0) -> str:
        """`start` without blocking the event loop. The process is started from the calling
        thread (the loop's: so it dies with it by prctl, `loadgen.lifeline`); its address is
        awaited and each health check made in a worker thread."""
        deadline = time.monotonic() + within
        first_line = self._launch()
        try:
            await anyio.to_thread.run_sync(first_line.wait, within, abandon_on_cancel=True)
            self._take_address()
            while True:
                if await anyio.to_thread.run_sync(self._healthy, deadline):
                    break
                await anyio.sleep(0.02)
        except BaseException:
            await self.astop()
            raise
        return self.base_url

    def _launch(self) -> threading.Event:
        """Start the process and its output readers; the event is set on its first stdout line."""
        if self._proc is not None:
            raise RuntimeError("already started")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # The server dies with this process, even a SIGKILLed one (loadgen.lifeline).
        env = lifeline.child_env(env)
        if self.log_path:
            self._log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._spawn(self._read_stderr, self._proc.stderr)
        first_line = threading.Event()
        self._spawn(
            self._read_stdout, self._proc.stdout, self.listening_prefix, self._url_box, first_line
        )
        return first_line

    def _take_address(self) -> None:
        if not self._url_box:
            raise ChildServerError(self._failure("did not report its address"))
        self.base_url = self._url_box[0]

    def poll(self) -> int | None:
        """The exit code if the process ended, else None."""
        return self._proc.poll() if self._proc is not None else None

    def log_lines(self) -> list[str]:
        """The stderr lines captured so far (stats log lines and others)."""
        with self._lock:
            return list(self._lines)

    def wait_for_log(self, needle: str, timeout: float = 10.0, start: int = 0) -> str:
        """The first captured line from index `start` on that contains `needle`."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log_lines()
            for line in lines[start:]:
                if needle in line:
                    return line
            if time.monotonic() > deadline or self.poll() is not None:
                raise TimeoutError(f"no log line containing {needle!r} within {timeout} s")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait, then kill."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def astop(self, within: float = 5.0) -> None:
        """`stop` without blocking the event loop: it waits in a worker thread. Shielded: a
        cancelled caller (Ctrl-C, a failed start) still leaves no server behind."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop, within)

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        if self._proc is None:
            await self.astart()
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.astop()

    # -- internals ------------------------------------------------------------------------------

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            line = line.rstrip("\n")
            with self._lock:
                self._lines.append(line)
                if self._log_file is not None:
                    self._log_file.write(line + "\n")
                    self._log_file.flush()

    @staticmethod
    def _read_stdout(
        stream: IO[str], prefix: str, url_box: list[str], first_line: threading.Event
    ) -> None:
        for line in stream:
            if not first_line.is_set():
                if line.startswith(prefix):
                    url_box.append(line[len(prefix) :].strip())
                first_line.set()
        first_line.set()  # EOF: the process ended before printing its address

    def _healthy(self, deadline: float) -> bool:
        """One health check: True when /health answers 200; ChildServerError once the process has
        ended or the deadline has passed."""
        if self.poll() is not None:
            raise ChildServerError(self._failure(f"exited with code {self.poll()}"))
        try:
            with _OPENER.open(self.base_url + "/health", timeout=1.0) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ChildServerError(self._failure("did not answer /health in time"))
        return False

    def _failure(self, what: str) -> str:
        if self._proc is not None and self._proc.poll() is not None:
            for thread in self._threads:
                thread.join(1.0)
        tail = "\n".join(self.log_lines()[-20:])
        return f"{self.what} {what}: {' '.join(self.command())}\n{tail}"


async def serve_until_signalled(
    app: web.Application,
    host: str,
    port: int,
    listening_prefix: str,
    *,
    public_host: str = "",
    started: Callable[[], None] | None = None,
) -> None:
    """The child's side: serve `app` until SIGTERM or SIGINT. The first stdout line is
    `listening_prefix` and the base URL (the bound port; named by `public_host`, how others
    reach this host, when given), which `ChildServer` waits for; `started` runs after it."""
    import asyncio
    import signal

    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        name = public_host or host
        url_host = f"[{name}]" if ":" in name else name
        print(f"{listening_prefix}http://{url_host}:{bound}", flush=True)
        if started is not None:
            started()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.shutdown()
        await runner.cleanup()
