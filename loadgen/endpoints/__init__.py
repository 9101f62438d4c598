"""The APIs loadgen can drive, by name (`[target] api`): how each writes a request body and
reads its answer (a stream, or one JSON object when unstreamed). Adding one is a module with an
`Endpoint` and a line in `ENDPOINTS` (docs/architecture.md, "Endpoints and datasets")."""

from loadgen.endpoints.base import BodyTemplate, Endpoint, ParserFactory
from loadgen.endpoints.chat import ChatEndpoint
from loadgen.endpoints.completions import CompletionsEndpoint
from loadgen.endpoints.registry import DEFAULT_API, ENDPOINTS, api_for_path, endpoint_named

__all__ = [
    "DEFAULT_API",
    "ENDPOINTS",
    "BodyTemplate",
    "ChatEndpoint",
    "CompletionsEndpoint",
    "Endpoint",
    "ParserFactory",
    "api_for_path",
    "endpoint_named",
]
