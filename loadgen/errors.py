"""Errors that end a command with a one-line message (no traceback)."""


class LoadgenError(Exception):
    """A problem the user can fix; printed as `loadgen: <message>` with exit status 2."""


class ScenarioError(LoadgenError):
    """A scenario file (or an override) that is malformed or impossible."""


class TargetError(LoadgenError):
    """The endpoint cannot be used: unreachable before the run, no models listed, ..."""
