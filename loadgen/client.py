"""One streamed request -> one RequestRecord.

Two transports sit behind one small interface, `Transport.send(rec, url, body)`:
- `aiohttp` (the default): reads raw bytes with `iter_any()`, the cheapest path per streamed token
  measured here (see scripts/bench_client.py);
- `httpx`: `AsyncClient.stream(...).aiter_raw()`, for comparison and for environments that want
  httpx's behaviour.
Both time each network read when it arrives, hand the bytes to `StreamParser`, and map every
failure to one `Outcome` kind. Neither ever prints or stores the API key.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Literal, Protocol

import aiohttp
import httpx

from loadgen import __version__
from loadgen.records import Outcome, RequestRecord
from loadgen.stream import StreamParser, http_error_text, outcome_for_status

TransportName = Literal["aiohttp", "httpx"]
_ERROR_BODY_LIMIT = 64 * 1024
_READ_BUFFER = 256 * 1024  # large SSE lines (long outputs, big usage objects) need no re-reads


@dataclass(frozen=True, slots=True)
class ClientSettings:
    pool_size: int  # max connections, all targets together; 0 = unlimited (open loop, no cap)
    connect_timeout: float
    read_timeout: float  # longest silence between two reads of a stream
    verify_tls: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    api_key: str | None = None  # sent as a Bearer token; never logged


def request_headers(settings: ClientSettings) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "User-Agent": f"loadgen/{__version__}",
    }
    headers.update(settings.headers)
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    return headers


class Transport(Protocol):
    async def send(self, rec: RequestRecord, url: str, body: bytes, origin: float) -> None:
        """Send `body` to `url`, stream the answer and fill `rec`'s measured fields.

        `rec.sent` is set here, just before the request starts; times are on the run clock
        (perf_counter() - origin). Cancellation marks the record CANCELLED and re-raises.
        """
        ...

    async def aclose(self) -> None: ...


def _ssl_context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class AiohttpTransport:
    def __init__(self, settings: ClientSettings) -> None:
        self._headers = request_headers(settings)
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None,  # waiting for a pooled connection is load, not a fault
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._settings.pool_size,
                limit_per_host=0,
                # True: aiohttp's default verifying context, built only if an https URL is used
                ssl=self._settings.verify_tls,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                read_bufsize=_READ_BUFFER,
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def send(self, rec: RequestRecord, url: str, body: bytes, origin: float) -> None:
        session = self._get_session()
        parser = StreamParser(origin)
        feed = parser.feed
        clock = perf_counter
        rec.sent = clock() - origin
        try:
            async with session.post(url, data=body, headers=self._headers) as resp:
                rec.headers_at = clock() - origin
                rec.status = resp.status
                if resp.status != 200:
                    text = await resp.content.read(_ERROR_BODY_LIMIT)
                    rec.end = clock() - origin
                    rec.outcome = outcome_for_status(resp.status)
                    rec.error = http_error_text(resp.status, text)
                    return
                read = resp.content.readany  # iter_any() without its extra coroutine per read
                while data := await read():
                    feed(data, clock())
                now = clock()
                parser.close(now)
                rec.end = now - origin
                parser.fill(rec)
        except asyncio.CancelledError:
            _cancelled(rec, parser, origin)
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            _failed(rec, parser, origin, Outcome.TIMEOUT, _describe(exc, "timed out"))
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            _failed(rec, parser, origin, Outcome.TLS, _describe(exc, "TLS failure"))
        except aiohttp.ClientConnectorError as exc:
            _failed(rec, parser, origin, Outcome.CONNECT, _describe(exc, "cannot connect"))
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            _failed(rec, parser, origin, Outcome.DROPPED, _describe(exc, "connection dropped"))
        except aiohttp.ClientOSError as exc:
            kind = Outcome.DROPPED if rec.headers_at is not None else Outcome.CONNECT
            _failed(rec, parser, origin, kind, _describe(exc, "connection error"))
        except aiohttp.ClientResponseError as exc:
            _failed(rec, parser, origin, Outcome.MALFORMED, _describe(exc, "bad HTTP response"))
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            _failed(rec, parser, origin, Outcome.OTHER, _describe(exc, "client error"))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxTransport:
    def __init__(self, settings: ClientSettings) -> None:
        self._headers = request_headers(settings)
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=settings.pool_size or None,
                max_keepalive_connections=settings.pool_size or None,
            ),
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.read_timeout,
                pool=None,
            ),
            verify=_ssl_context(settings.verify_tls),
        )

    async def send(self, rec: RequestRecord, url: str, body: bytes, origin: float) -> None:
        parser = StreamParser(origin)
        feed = parser.feed
        clock = perf_counter
        rec.sent = clock() - origin
        try:
            async with self._client.stream("POST", url, content=body, headers=self._headers) as r:
                rec.headers_at = clock() - origin
                rec.status = r.status_code
                if r.status_code != 200:
                    text = b""
                    async for part in r.aiter_raw():
                        text += part
                        if len(text) >= _ERROR_BODY_LIMIT:
                            break
                    rec.end = clock() - origin
                    rec.outcome = outcome_for_status(r.status_code)
                    rec.error = http_error_text(r.status_code, text)
                    return
                async for data in r.aiter_raw():
                    feed(data, clock())
                now = clock()
                parser.close(now)
                rec.end = now - origin
                parser.fill(rec)
        except asyncio.CancelledError:
            _cancelled(rec, parser, origin)
            raise
        except httpx.TimeoutException as exc:
            _failed(rec, parser, origin, Outcome.TIMEOUT, _describe(exc, "timed out"))
        except httpx.ConnectError as exc:
            tls = isinstance(exc.__cause__, ssl.SSLError) or "SSL" in str(exc)
            kind = Outcome.TLS if tls else Outcome.CONNECT
            _failed(rec, parser, origin, kind, _describe(exc, "cannot connect"))
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            kind = Outcome.DROPPED if rec.headers_at is not None else Outcome.CONNECT
            _failed(rec, parser, origin, kind, _describe(exc, "connection dropped"))
        except (httpx.HTTPError, OSError, ValueError) as exc:
            _failed(rec, parser, origin, Outcome.OTHER, _describe(exc, "client error"))

    async def aclose(self) -> None:
        await self._client.aclose()


def make_transport(name: TransportName, settings: ClientSettings) -> Transport:
    if name == "httpx":
        return HttpxTransport(settings)
    return AiohttpTransport(settings)


def _describe(exc: BaseException, what: str) -> str:
    detail = str(exc).strip()
    return (
        f"{what}: {type(exc).__name__}: {detail}"[:300]
        if detail
        else f"{what}: {type(exc).__name__}"
    )


def _failed(
    rec: RequestRecord, parser: StreamParser, origin: float, outcome: Outcome, message: str
) -> None:
    rec.end = perf_counter() - origin
    parser.fill(rec)  # keep what did arrive (token times, partial usage)
    rec.outcome = outcome
    rec.error = message


def _cancelled(rec: RequestRecord, parser: StreamParser, origin: float) -> None:
    _failed(rec, parser, origin, Outcome.CANCELLED, "cancelled before the stream ended")


def endpoint_url(base: str, endpoint: str) -> str:
    """`http://h:8000` or `http://h:8000/v1` + `/v1/chat/completions` -> one clean URL."""
    base = base.rstrip("/")
    if base.endswith("/v1") and endpoint.startswith("/v1/"):
        base = base[: -len("/v1")]
    return base + endpoint


def server_root(base: str) -> str:
    """The server's root URL (where /metrics, /health and /v1/models live)."""
    base = base.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def headers_for_control(settings: ClientSettings) -> Mapping[str, str]:
    """Headers for non-streaming calls (model list, metrics)."""
    h = request_headers(settings)
    h.pop("Accept")
    return h
