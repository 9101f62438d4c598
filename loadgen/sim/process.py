"""Start and stop the simulator as a child process (`python -m loadgen sim ...`): a
`loadgen.childserver.ChildServer` whose first stdout line is LISTENING_PREFIX and its URL."""

from __future__ import annotations

import sys

from loadgen.childserver import ChildServer

LISTENING_PREFIX = "loadgen-sim listening on "  # the server's first stdout line, then its URL


class SimulatorProcess(ChildServer):
    listening_prefix = LISTENING_PREFIX
    what = "the simulator"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "loadgen", "sim",
            "--host", self.host, "--port", str(self.port), *self.args,
        ]  # fmt: skip
