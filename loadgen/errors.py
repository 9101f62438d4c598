"""Errors that end a command with a one-line message (no traceback)."""


class LoadgenError(Exception):
    """A problem the user can fix; printed as `loadgen: <message>` with exit status 2."""


class ScenarioError(LoadgenError):
    """A scenario file (or an override) that is malformed or impossible."""


def user_error(exc: BaseException) -> LoadgenError | None:
    """The LoadgenError that `exc` is or holds: errors raised in a task group reach the command
    wrapped in (nested) exception groups. None when it holds no such error."""
    if isinstance(exc, LoadgenError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = user_error(inner)
            if found is not None:
                return found
    return None


class TargetError(LoadgenError):
    """The endpoint cannot be used: unreachable before the run, no models listed, ..."""
