"""The endpoints by name. A new endpoint is one line here (or, from outside loadgen, one
assignment to `ENDPOINTS[name]` before the scenario is loaded)."""

from __future__ import annotations

from loadgen.config import DEFAULT_API
from loadgen.endpoints.base import Endpoint
from loadgen.endpoints.chat import ChatEndpoint
from loadgen.endpoints.completions import CompletionsEndpoint
from loadgen.endpoints.unstreamed import UnstreamedChatEndpoint, UnstreamedCompletionsEndpoint

__all__ = ["DEFAULT_API", "ENDPOINTS", "api_for_path", "endpoint_named"]

# The first endpoint of a path is the one a scenario that names only the path gets.
ENDPOINTS: dict[str, Endpoint] = {
    ChatEndpoint.name: ChatEndpoint(),
    CompletionsEndpoint.name: CompletionsEndpoint(),
    UnstreamedChatEndpoint.name: UnstreamedChatEndpoint(),
    UnstreamedCompletionsEndpoint.name: UnstreamedCompletionsEndpoint(),
}


def endpoint_named(name: str) -> Endpoint:
    try:
        return ENDPOINTS[name]
    except KeyError:
        known = ", ".join(repr(n) for n in ENDPOINTS)
        raise ValueError(f"unknown api {name!r}; expected one of: {known}") from None


def api_for_path(path: str) -> str:
    """The api served at `path` (a scenario that sets `endpoint` and no `api`): the endpoint
    whose path it is, else DEFAULT_API (any other path gets chat completions bodies, as it
    always did)."""
    for name, endpoint in ENDPOINTS.items():
        if endpoint.path == path:
            return name
    return DEFAULT_API
