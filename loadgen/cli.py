"""Command line: `loadgen <command> ...`. Each command lives in its own module, and only the module
of the command given is imported (`loadgen --help` imports none), so that `loadgen sim` starts
fast and a missing optional extra only affects its own command."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import typing
from collections.abc import Sequence

from loadgen import __version__, lifeline

# command -> (module, one-line help). The module provides
#   configure(parser: argparse.ArgumentParser) -> None
#   execute(args: argparse.Namespace) -> int
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("loadgen.commands.run", "run a scenario file against an endpoint (or the simulator)"),
    "sim": ("loadgen.sim.cli", "serve the built-in vLLM simulator"),
    "report": ("loadgen.commands.report", "write a results folder's self-contained report.html"),
    "compare": ("loadgen.commands.compare", "compare runs side by side, flagging real differences"),
    "sweep": ("loadgen.commands.sweep", "run a scenario at several load levels and find the knee"),
}


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line (argparse's own usage block runs to a dozen)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of `loadgen`, with the options of `command` (every command's when None)."""
    parser = _Parser(
        prog="loadgen",
        description="Load generator for vLLM / OpenAI-compatible vision-language endpoints.",
    )
    parser.add_argument("--version", action="version", version=f"loadgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            module = importlib.import_module(module_name)
            module.configure(sp)
            sp.set_defaults(_module=module)
    return parser


def _command(argv: Sequence[str]) -> str:
    """The command named on the command line ("" when none is): the first word that is not an
    option, since `loadgen`'s own options (--help, --version) take no value."""
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: Sequence[str] | None = None) -> int:
    lifeline.die_with_parent()  # when started by loadgen itself (the simulator of a run)
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(words))
    args = parser.parse_args(words)
    # SIGTERM like Ctrl-C: until a command installs its own handling (a run's signal watcher,
    # the simulator's), either ends the command in one line, every clean-up done.
    lifeline.raise_on_signals()
    try:
        return int(args._module.execute(args))
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, lifeline.Interrupted) else signal.SIGINT
        print(f"loadgen: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return lifeline.exit_code(signum)
