"""Worker processes: a shard in a child process (`python -m loadgen.workers`), behind the same
interface as `LocalShard`.

The protocol is line-based over the child's stdin and stdout, so the same worker could run on
another machine behind any byte pipe:

    parent -> child   J <json {"protocol", "loadgen", "job"}>
                                                         once, first: the ShardJob as JSON
                      P <json {"name", "start"}>         run a phase from `start` on the run clock
                      S <reason> / C / X                 stop sending / cancel in flight / exit
    child -> parent   READY <description>                payloads built
                      R <record json>                    one finished request (as requests.jsonl)
                      G <json {"phase", "done", "errors", "tokens", "in_flight", "at"}>
                                                         progress of the current phase, about
                                                         once a second and before its D
                      D <json {"timing", "state"}>       a phase ended: timing and accumulator state
                      V <json>                           the self-check verdict, on exit
                      E <message>                        a fatal error

The job names the protocol's version and loadgen's; a worker refuses a job of any other (or one
that is not this JSON, such as an older loadgen's pickle) with one E line naming both, and exits
with status 1. Nothing a worker reads is ever unpickled or evaluated: its input may come from
another host.

Records are forwarded to the parent's results file as they arrive, so a crash loses nothing already
measured. The child ignores SIGINT: the parent relays Ctrl-C as S and C.

A worker that fails (any exception, a broken pipe to the parent included) sends E with the error in
one line if it still can and exits at once with status 1: nothing (such as the thread blocked
reading stdin) keeps it alive. A worker whose parent dies is killed with it (`loadgen.lifeline`).
The parent turns a worker that ended without its phase's D into `ShardLost`: which shard, why
(its E line, or the signal that killed it), and its requests in flight as of its last G line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import anyio.abc
import orjson

from loadgen import __version__, lifeline
from loadgen.errors import ScenarioError
from loadgen.results.schema import ShardPlace
from loadgen.scenario import config_from_json, config_to_json
from loadgen.shard import (
    LocalShard,
    PhaseResult,
    ShardFailed,
    ShardJob,
    ShardLost,
    ShardProgress,
    WriteLine,
)
from loadgen.target import read_api_key

# The line protocol's version: bump it with any change to the lines or to the job's JSON.
PROTOCOL = 1
_LINE_LIMIT = 1 << 26  # one record line can be long (every token's arrival time)
PROGRESS_INTERVAL = 1.0  # seconds between a worker's progress lines
# How the parent starts a worker, after sys.executable (a test may start a worker of its own).
WORKER_COMMAND: tuple[str, ...] = ("-m", "loadgen.workers")


class JobRefused(ShardFailed):
    """A job line this worker will not run: another protocol or loadgen version, or not a job."""


def job_line(job: ShardJob) -> bytes:
    """The J line that hands `job` to a worker (no newline)."""
    if job.settings.api_key is not None:  # each shard reads the key itself; it never travels
        raise ValueError("a shard's job never carries the API key")
    doc = {"protocol": PROTOCOL, "loadgen": __version__, "job": config_to_json(job)}
    return b"J " + orjson.dumps(doc)


def read_job_line(line: bytes) -> ShardJob:
    """The job of a J line, or JobRefused saying why not (in one line)."""
    kind, _, rest = line.rstrip(b"\n").partition(b" ")
    if kind != b"J":
        raise JobRefused("expected a job first")
    ours = f"protocol {PROTOCOL} (loadgen {__version__})"
    try:
        doc = orjson.loads(rest)
    except orjson.JSONDecodeError:
        raise JobRefused(
            f"the job is not JSON (another loadgen version?); this worker speaks {ours}"
        ) from None
    if not isinstance(doc, dict):
        raise JobRefused(f"the job is not a JSON object; this worker speaks {ours}")
    theirs = f"protocol {doc.get('protocol')!r:.20} (loadgen {doc.get('loadgen')!r:.40})"
    if doc.get("protocol") != PROTOCOL or doc.get("loadgen") != __version__:
        raise JobRefused(f"refused a job of {theirs}: this worker speaks {ours}")
    try:
        job = config_from_json(ShardJob, doc.get("job"))
    except ScenarioError as exc:
        raise JobRefused(" ".join(f"malformed job: {exc}".split())) from None
    if job.settings.api_key is not None:
        raise JobRefused("a job never carries the API key: each shard reads it itself")
    return job


def _describe_exit(status: int | None) -> str:
    if status is None:
        return "its output ended"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = "?"
        return f"killed by signal {-status} ({name})"
    return f"exited with status {status}"


class LineShard:
    """The parent's side of the line protocol over any byte pipe (the `Shard` protocol). A
    subclass says how the worker is started and handed its job (`_open`), how a line reaches it
    (`_send_bytes`), how its output arrives (`_output`), and how it ends (`_wait_exit`, `_kill`).
    Records are forwarded as the worker wrote them, never parsed here."""

    # A phase starts this long after it is announced, so that all the workers start it together.
    start_margin = 0.05
    place = "worker process"
    placed: ShardPlace | None = None  # on this host

    def __init__(self, job: ShardJob, write: WriteLine) -> None:
        self.job = job
        self.write = write
        self._opened = False
        self._phase_done: dict[str, anyio.Event] = {}
        self._phase_result: dict[str, PhaseResult] = {}
        self._ready = anyio.Event()
        self._ready_text = ""
        self._verdict: dict[str, Any] = {}
        self._closed = anyio.Event()
        self._error = ""  # the worker's E line, or why the parent gave up on it
        self._progress = ShardProgress()
        self.exit_status: int | None = None  # once the worker ended

    # ---- the pipe, by kind ----

    async def _open(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the worker and hand it `job_line(self.job)`."""
        raise NotImplementedError

    async def _send_bytes(self, data: bytes) -> None:
        """One line to the worker; silently nothing when it is gone (its reader says why)."""
        raise NotImplementedError

    def _output(self) -> AsyncIterator[bytes]:
        """The worker's output as it arrives, in chunks of any size, until it ends."""
        raise NotImplementedError

    async def _wait_exit(self) -> int | None:
        """The worker's exit status once its output has ended (None: unknown)."""
        raise NotImplementedError

    async def _kill(self) -> None:
        """End the worker now, whatever it is doing."""
        raise NotImplementedError

    def _describe_end(self) -> str:
        return _describe_exit(self.exit_status)

    # ---- the protocol ----

    def progress(self) -> ShardProgress:
        return self._progress  # as of the worker's last progress line

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        await self._open(tg)
        self._opened = True
        tg.start_soon(self._read)

    async def _send(self, line: str) -> None:
        await self._send_bytes(line.encode() + b"\n")

    async def _read(self) -> None:
        buf = b""
        try:
            async for data in self._output():
                buf += data
                lines = buf.split(b"\n")
                buf = lines.pop()
                for line in lines:
                    self._handle(line)
            # The output ended: the worker is exiting (or gone). Its status says how.
            with anyio.move_on_after(10):
                self.exit_status = await self._wait_exit()
        finally:
            if not self._ready.is_set() or not self._closed.is_set():
                self._error = self._error or self._describe_end()
            self._ready.set()
            for event in self._phase_done.values():
                event.set()
            self._closed.set()

    def _handle(self, line: bytes) -> None:
        kind, _, rest = line.partition(b" ")
        if kind == b"R":
            self.write(rest)
        elif kind == b"G":
            self._progress = ShardProgress.from_json(orjson.loads(rest))
        elif kind == b"D":
            result = PhaseResult.from_json(orjson.loads(rest))
            name = result.timing.name
            self._phase_result[name] = result
            self._phase_done.setdefault(name, anyio.Event()).set()
        elif kind == b"READY":
            self._ready_text = rest.decode()
            self._ready.set()
        elif kind == b"V":
            self._verdict = orjson.loads(rest)
        elif kind == b"E":
            self._error = rest.decode(errors="replace")
            self._ready.set()
            for event in self._phase_done.values():
                event.set()

    async def prepare(self) -> str:
        await self._ready.wait()
        if self._error:
            raise ShardFailed(f"worker {self.job.shard}: {self._error}")
        return self._ready_text

    async def run_phase(self, name: str, start: float) -> PhaseResult:
        done = self._phase_done.setdefault(name, anyio.Event())
        if not self._closed.is_set() and not self._error:  # else: lost before this phase
            await self._send("P " + orjson.dumps({"name": name, "start": start}).decode())
            await done.wait()
        result = self._phase_result.get(name)
        if result is None:
            if not self._closed.is_set():  # an E line: wait for the worker to end
                with anyio.move_on_after(10):
                    await self._closed.wait()
                if self.exit_status is None:
                    await self._kill()
            raise ShardLost(
                self.job.shard,
                self._error or f"ended phase {name} without a result",
                self.exit_status,
                self._progress,
            )
        return result

    async def stop_sending(self, reason: str) -> None:
        await self._send(f"S {reason}")

    async def cancel(self) -> None:
        await self._send("C")

    async def close(self) -> dict[str, Any]:
        if not self._opened:
            return {}
        await self._send("X")
        with anyio.move_on_after(30):
            await self._closed.wait()
            await self._wait_exit()
        await self._settle()
        return self._verdict

    async def _settle(self) -> None:
        """After X: make sure the worker is gone (killed if it has not exited)."""
        await self._kill()


class ProcessShard(LineShard):
    """A worker in a child process of this one, over its stdin and stdout."""

    def __init__(self, job: ShardJob, write: WriteLine, api_key: str | None = None) -> None:
        # api_key: unused; a worker reads the key itself, it never crosses the pipe
        super().__init__(job, write)
        self.process: anyio.abc.Process | None = None

    async def _open(self, tg: anyio.abc.TaskGroup) -> None:
        env = lifeline.child_env({**os.environ, "PYTHONUNBUFFERED": "1"})
        self.process = await anyio.open_process(
            [sys.executable, *WORKER_COMMAND],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the worker's own warnings go straight to the terminal
            env=env,
            start_new_session=True,  # Ctrl-C reaches the parent only; it relays
        )
        await self._send(job_line(self.job).decode())

    async def _send_bytes(self, data: bytes) -> None:
        assert self.process is not None and self.process.stdin is not None
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self.process.stdin.send(data)

    def _output(self) -> AsyncIterator[bytes]:
        assert self.process is not None and self.process.stdout is not None
        return aiter(self.process.stdout)

    async def _wait_exit(self) -> int | None:
        assert self.process is not None
        return await self.process.wait()

    async def _kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    async def _settle(self) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


# ---- the child ----


class LineIn(Protocol):
    """Where a worker reads the parent's lines: its stdin, or a Ray actor's queue."""

    def readline(self) -> bytes: ...  # b"" once the parent is gone


class LineOut(Protocol):
    """Where a worker writes its lines: its stdout, or a Ray actor's buffer."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


def _out(stream: LineOut, kind: bytes, payload: bytes) -> None:
    stream.write(kind + b" " + payload + b"\n")
    stream.flush()


async def _worker(stdin: LineIn, stdout: LineOut) -> int:
    """Serve one job; the process's exit status."""
    first = await anyio.to_thread.run_sync(stdin.readline)
    try:
        job = read_job_line(first)
    except JobRefused as exc:
        _out(stdout, b"E", str(exc).encode())
        return 1

    def write(line: bytes) -> None:  # a record line, its newline included
        stdout.write(b"R " + line)
        stdout.flush()

    shard = LocalShard(job, write, read_api_key(job.scenario.target))
    try:
        description = await shard.prepare()
    except Exception as exc:  # a workload problem: tell the parent in one line
        _out(stdout, b"E", " ".join(str(exc).split()).encode())
        return 0
    _out(stdout, b"READY", description.encode())
    await _Child(shard, stdin, stdout).serve()
    return 0


class _Child:
    """A prepared shard serving the parent's commands: phases in order, stop, cancel, exit."""

    def __init__(self, shard: LocalShard, stdin: LineIn, stdout: LineOut) -> None:
        self.shard = shard
        self.stdin = stdin
        self.stdout = stdout
        self.phases: list[tuple[str, float]] = []  # announced, not run yet
        self.wake = anyio.Event()
        self.exiting = False

    async def serve(self) -> None:
        async with anyio.create_task_group() as tg:
            await self.shard.start(tg)
            tg.start_soon(self.commands)
            tg.start_soon(self.progress_lines)
            while self.phases or not self.exiting:
                if not self.phases:
                    await self.wake.wait()
                    self.wake = anyio.Event()
                    continue
                name, start = self.phases.pop(0)
                result = await self.shard.run_phase(name, start)
                self.progress_line()  # the phase's last
                _out(self.stdout, b"D", orjson.dumps(result.to_json()))
            verdict = await self.shard.close()
            _out(self.stdout, b"V", orjson.dumps(verdict))
            tg.cancel_scope.cancel()

    async def commands(self) -> None:
        while True:
            line = await anyio.to_thread.run_sync(self.stdin.readline, abandon_on_cancel=True)
            if not line or line.startswith(b"X"):
                self.exiting = True
                self.wake.set()
                return
            kind, _, rest = line.rstrip(b"\n").partition(b" ")
            if kind == b"P":
                doc = orjson.loads(rest)
                self.phases.append((doc["name"], doc["start"]))
                self.wake.set()
            elif kind == b"S":
                await self.shard.stop_sending(rest.decode() or "stopped")
            elif kind == b"C":
                await self.shard.cancel()

    def progress_line(self) -> None:
        _out(self.stdout, b"G", orjson.dumps(self.shard.progress().to_json()))

    async def progress_lines(self) -> None:
        # Sent even when nothing changed: keeps the parent's reading of this shard current.
        while True:
            await anyio.sleep(PROGRESS_INTERVAL)
            self.progress_line()


def _one_line(exc: BaseException) -> str:
    """An error as one line: the first leaf of a task group's errors, with where it was raised."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        where = f" (at {os.path.basename(last.filename)}:{last.lineno})"
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}{where}"


def main() -> None:
    lifeline.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdout = sys.stdout.buffer
    try:
        status = anyio.run(
            _worker, sys.stdin.buffer, stdout, backend_options=lifeline.backend_options()
        )
        stdout.flush()
    except BaseException as exc:  # whatever it is, the parent must hear of it
        with contextlib.suppress(Exception):  # else the parent is gone: nobody left to tell
            _out(stdout, b"E", _one_line(exc).encode())
        # At once: a thread blocked reading stdin (or any other) must not keep this process up.
        os._exit(1)
    os._exit(status)


if __name__ == "__main__":
    main()
