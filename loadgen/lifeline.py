"""Process lifetime: loadgen's child processes die with it, and a signal during start-up ends
the run in one line.

Children (the simulator started by `loadgen run`/`sweep`, the worker processes) are started with
`child_env()`, which names the parent; the child calls `die_with_parent()` first thing. On Linux
that asks the kernel for SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG), which works even
when the parent itself was SIGKILLed and even when the child is stuck. The kernel sends it when
the parent *thread* that started the child ends, so a child started from another thread (one of a
thread pool's, say) watches its parent from a thread instead, as every child does where
prctl is not available. Either way the child also checks that the parent is still there, since
the parent may have died before the child got that far.

A worker's image builder (anyio's process pool) needs nothing of this: it exits when its stdin
(a pipe from the worker) closes, which happens when the worker dies.

Every loadgen process (a command, a worker, the simulator) runs its event loop on uvloop when the
`fast` extra is installed (`uvloop_factory`, `backend_options`), else on asyncio's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    import asyncio

PARENT_ENV = "LOADGEN_PARENT_PID"  # "<pid>" (prctl allowed) or "<pid>:watch"
_WATCH_INTERVAL_S = 0.5
_PR_SET_PDEATHSIG = 1


def child_env(env: dict[str, str]) -> dict[str, str]:
    """`env` plus what a child needs to die with this process (the current thread)."""
    main = threading.current_thread() is threading.main_thread()
    return {**env, PARENT_ENV: f"{os.getpid()}" + ("" if main else ":watch")}


def die_with_parent() -> None:
    """In a child started with `child_env`: end this process when the parent dies."""
    value = os.environ.pop(PARENT_ENV, "")  # not inherited by this process's own children
    pid_text, _, mode = value.partition(":")
    if not pid_text.isdigit():
        return
    parent = int(pid_text)
    if mode != "watch" and _set_parent_death_signal(signal.SIGKILL):
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
            os._exit(1)
        return
    thread = threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True)
    thread.start()


def _set_parent_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_WATCH_INTERVAL_S)
    os.kill(os.getpid(), signal.SIGKILL)  # nothing left to report to


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM outside the run's own signal watcher (start-up, the final writes).

    A KeyboardInterrupt, so that it passes through the event loop and `loadgen.cli` ends the
    command with one line and 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# Inside `cancel_on_signals()`, a signal cancels this scope (every `finally` runs, the simulator
# is stopped) rather than raising wherever the event loop happens to be.
_scope: list[anyio.CancelScope] = []
_received: list[int] = []


def raise_on_signals() -> None:
    """Make SIGINT and SIGTERM end the command (main thread only): by cancelling the innermost
    `cancel_on_signals()` scope when one is open, else by raising `Interrupted`."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        _received.append(signum)
        if _scope:
            _scope[-1].cancel()
        else:
            raise Interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[anyio.CancelScope]:
    """A scope that a signal cancels (see `raise_on_signals`); on leaving it cancelled by a
    signal, raises `Interrupted`."""
    seen = len(_received)
    with anyio.CancelScope() as scope:
        _scope.append(scope)
        try:
            yield scope
        finally:
            _scope.remove(scope)
    if len(_received) > seen and scope.cancel_called:
        raise Interrupted(_received[seen])


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop factory, or None when uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def backend_options() -> dict[str, Any]:
    """`anyio.run`'s backend options: uvloop when it is installed."""
    return {"use_uvloop": True} if uvloop_factory() is not None else {}
