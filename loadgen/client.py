"""One request (streamed, or answered whole for an unstreamed endpoint) -> one RequestRecord.

Three transports sit behind one small interface, `Transport.send(rec, url, body, origin)`:
- `native`: loadgen's own HTTP/1.1 client (keep-alive pool, chunked bodies decoded by slicing
  each socket read, the bytes handed to the parser from the protocol callback). About two thirds
  of the client CPU per streamed token of the others (docs/performance.md); http and https, no
  proxies. In closed loop it sends a stream's next request from that callback too, the moment
  the response ends (`Follow`), so a busy event loop leaves no stream idle;
- `aiohttp`: reads raw bytes with `readany()`; aiohttp's own per-chunk work is most of its cost;
- `httpx`: `AsyncClient.stream(...).aiter_raw()`, for comparison and for environments that want
  httpx's behaviour (about four times the CPU per token).
All time each network read when it arrives, hand a 200 response's body bytes, whatever its
content type, to the endpoint's `StreamParser` (`ClientSettings.api`), and map every failure to
one `Outcome` kind. None ever prints or stores the API key: each takes it out of the record's
error text (`_redacted`), which a server or an HTTP library may have quoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import perf_counter, time
from typing import Literal, Protocol, cast
from urllib.parse import urlsplit

import aiohttp
import httpx

from loadgen import __version__
from loadgen.backoff import retry_after_seconds
from loadgen.chunked import SPLIT_BYTES, whole_chunks
from loadgen.config import DEFAULT_API
from loadgen.endpoints import ParserFactory, endpoint_named
from loadgen.records import Outcome, RequestRecord
from loadgen.safetext import header_name_problem, header_value_problem, redact, url_problem
from loadgen.stream import StreamParser, http_error_text, outcome_for_status

TransportName = Literal["aiohttp", "httpx", "native"]
_ERROR_BODY_LIMIT = 64 * 1024
_READ_BUFFER = 256 * 1024  # large SSE lines (long outputs, big usage objects) need no re-reads


@dataclass(frozen=True, slots=True)
class ClientSettings:
    pool_size: int  # max connections, all targets together; 0 = unlimited (open loop, no cap)
    # The transports hold this limit themselves (a semaphore taken before `rec.sent` is stamped),
    # not their HTTP library's pool: waiting for a connection is schedule lag, never latency.
    connect_timeout: float
    read_timeout: float  # longest silence between two reads of a stream
    request_timeout: float | None = None  # longest a whole request may take; None: no bound
    verify_tls: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    api_key: str | None = None  # sent as a Bearer token; never logged
    api: str = DEFAULT_API  # whose stream parser reads the answers (loadgen.endpoints)


def request_headers(settings: ClientSettings) -> dict[str, str]:
    streamed = endpoint_named(settings.api).streamed
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if streamed else "application/json",
        "User-Agent": f"loadgen/{__version__}",
    }
    headers.update(settings.headers)
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    return headers


class Follow(Protocol):
    """A closed-loop stream, asked for its next request the moment its current one ends."""

    def next_request(self, url: str) -> tuple[RequestRecord, bytes] | None:
        """The stream's next request (its record and body) when one is due and goes to `url`;
        the transport then sends it at once, on the connection that just became free, and the
        stream's task hands that same record to `send()` next. None: no request, or not to
        `url` (the task sends it the usual way). Called synchronously from an I/O callback."""
        ...


class Transport(Protocol):
    async def send(
        self,
        rec: RequestRecord,
        url: str,
        body: bytes,
        origin: float,
        follow: Follow | None = None,
    ) -> None:
        """Send `body` to `url`, stream the answer and fill `rec`'s measured fields.

        `rec.sent` is set here, once a connection slot of the pool is held, just before the request
        starts; times are on the run clock (perf_counter() - origin). Cancellation marks the record
        CANCELLED and re-raises. `follow` (closed loop): a transport may send the stream's next
        request from its own I/O callback when this response ends, before this task even wakes
        up (native does).
        """
        ...

    async def aclose(self) -> None: ...


def _pool_slots(settings: ClientSettings) -> asyncio.Semaphore | None:
    return asyncio.Semaphore(settings.pool_size) if settings.pool_size else None


def _ssl_context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _LibraryTransport:
    """What the aiohttp and httpx transports share: the pool limit held as a semaphore before
    `rec.sent` (their libraries' own pools are unlimited), and no `follow`: their task reads the
    stream, so it sends every request itself."""

    _slots: asyncio.Semaphore | None
    _secret: str | None
    _parser: ParserFactory
    _request_timeout: float | None

    async def send(
        self,
        rec: RequestRecord,
        url: str,
        body: bytes,
        origin: float,
        follow: Follow | None = None,
    ) -> None:
        slots = self._slots
        try:
            if slots is None:
                await self._bounded(rec, url, body, origin)
                return
            async with slots:  # waiting for a connection is schedule lag, before `rec.sent`
                await self._bounded(rec, url, body, origin)
        finally:
            _redacted(rec, self._secret)

    async def _bounded(self, rec: RequestRecord, url: str, body: bytes, origin: float) -> None:
        """The request within request_timeout, from its send (the pool wait is not in it)."""
        limit = self._request_timeout
        if limit is None:
            await self._send(rec, url, body, origin)
            return
        try:
            async with asyncio.timeout(limit):
                await self._send(rec, url, body, origin)  # marks the record cancelled on expiry
        except TimeoutError:
            rec.outcome, rec.error = Outcome.TIMEOUT, _request_timeout_text(limit)

    async def _send(self, rec: RequestRecord, url: str, body: bytes, origin: float) -> None:
        raise NotImplementedError


class AiohttpTransport(_LibraryTransport):
    def __init__(self, settings: ClientSettings) -> None:
        self._headers = request_headers(settings)
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None,  # waiting for a pooled connection is load, not a fault
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        self._settings = settings
        self._parser = endpoint_named(settings.api).parser
        self._slots = _pool_slots(settings)
        self._secret = settings.api_key
        self._request_timeout = settings.request_timeout
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0,  # the pool limit is self._slots, held before the send time is taken
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

    async def _send(self, rec: RequestRecord, url: str, body: bytes, origin: float) -> None:
        session = self._get_session()
        parser = self._parser(origin, rec)
        feed = parser.feed
        clock = perf_counter
        rec.sent = clock() - origin
        try:
            async with session.post(url, data=body, headers=self._headers) as resp:
                rec.headers_at = clock() - origin
                rec.status = resp.status
                if resp.status != 200:
                    error_body = await resp.content.read(_ERROR_BODY_LIMIT)
                    _http_error(
                        rec, resp.status, error_body, origin, resp.headers.get("Retry-After")
                    )
                    return
                read = resp.content.readany  # iter_any() without its extra coroutine per read
                while data := await read():
                    feed(data, clock())
                _stream_ended(rec, parser, origin)
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


class HttpxTransport(_LibraryTransport):
    def __init__(self, settings: ClientSettings) -> None:
        self._headers = request_headers(settings)
        self._parser = endpoint_named(settings.api).parser
        self._slots = _pool_slots(settings)
        self._secret = settings.api_key
        self._request_timeout = settings.request_timeout
        self._client = httpx.AsyncClient(
            # the pool limit is self._slots, held before the send time is taken
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.read_timeout,
                pool=None,
            ),
            verify=_ssl_context(settings.verify_tls),
        )

    async def _send(self, rec: RequestRecord, url: str, body: bytes, origin: float) -> None:
        parser = self._parser(origin, rec)
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
                    _http_error(rec, r.status_code, text, origin, r.headers.get("Retry-After"))
                    return
                async for data in r.aiter_raw():
                    feed(data, clock())
                _stream_ended(rec, parser, origin)
        except asyncio.CancelledError:
            _cancelled(rec, parser, origin)
            raise
        except httpx.TimeoutException as exc:
            _failed(rec, parser, origin, Outcome.TIMEOUT, _describe(exc, "timed out"))
        except httpx.ConnectError as exc:
            tls = isinstance(exc.__cause__, ssl.SSLError) or "SSL" in str(exc)
            kind = Outcome.TLS if tls else Outcome.CONNECT
            _failed(rec, parser, origin, kind, _describe(exc, "cannot connect"))
        except httpx.RemoteProtocolError as exc:
            # h11 says the peer closed the connection, or the bytes were not HTTP (as native
            # and aiohttp do: dropped_stream, malformed_stream)
            what = str(exc)
            if "disconnected" in what or "peer closed" in what:
                _failed(rec, parser, origin, Outcome.DROPPED, _describe(exc, "connection dropped"))
            else:
                _failed(rec, parser, origin, Outcome.MALFORMED, _describe(exc, "bad HTTP response"))
        except httpx.ReadError as exc:  # the connection was made: it broke
            _failed(rec, parser, origin, Outcome.DROPPED, _describe(exc, "connection dropped"))
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
            _failed(rec, parser, origin, Outcome.OTHER, _describe(exc, "client error"))

    async def aclose(self) -> None:
        await self._client.aclose()


# ---- native: loadgen's own HTTP/1.1 client for the streamed requests --------------------------
# aiohttp spends several Python calls on every HTTP chunk (one per SSE event), on top of every
# socket read: most of a client's CPU per streamed token (see docs/performance.md). This transport
# does only what a streamed POST needs: keep-alive connections in a pool, the response head, and
# chunked (or sized, or until-close) bodies decoded by slicing each socket read, the bytes handed
# to StreamParser from the protocol callback itself, with the time they arrived.
_HEAD_LIMIT = 64 * 1024  # the response head, all headers together
_IDLE_REUSE_S = 4.0  # reuse a kept-alive connection idle for less: servers close at ~5 s (uvicorn)
_HEAD, _CHUNKED, _TRAILER, _SIZED, _UNTIL_CLOSE, _DONE = range(6)


class _Failure(Exception):
    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


@dataclass(frozen=True, slots=True)
class _Target:
    key: tuple[str, str, int]  # (scheme, host, port): the pool
    host: str
    port: int
    tls: bool
    head: bytes  # request line and headers, up to "Content-Length: "


def _target(url: str, headers: Mapping[str, str]) -> _Target:
    # Written onto the wire as is: a CR or LF would start a header line of the text's choosing
    # (the scenario's checks refuse them already; a ShardJob may come from elsewhere).
    problem = url_problem(url)
    if problem:
        raise ValueError(f"URL not sent: {problem}")
    for k, v in headers.items():
        problem = header_name_problem(k) or header_value_problem(v)
        if problem:
            raise ValueError(f"header {k!r} not sent: {problem}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    if port != (443 if tls else 80):
        netloc = f"{netloc}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    lines = [f"POST {path} HTTP/1.1", f"Host: {netloc}"]
    lines += [
        f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")
    ]
    head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
    return _Target((parts.scheme, host, port), host, port, tls, head)


class _Exchange:
    """One request's response, parsed as its bytes arrive (from _Connection's callbacks)."""

    __slots__ = (
        "_buf", "_connection", "_deadline", "_error_body", "_last", "_left", "_state", "_timer",
        "done", "followed", "headers_at", "keep_alive", "parser", "read_timeout", "received",
        "request_timeout", "retry_after", "status", "then",
    )  # fmt: skip

    def __init__(
        self,
        connection: _Connection,
        parser: StreamParser,
        read_timeout: float,
        request_timeout: float | None = None,
        sent: float = 0.0,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._connection = connection
        self.parser = parser
        self.read_timeout = read_timeout
        self.request_timeout = request_timeout
        # perf_counter() at which the whole request times out (from its send, connecting included)
        self._deadline = sent + request_timeout if request_timeout else None
        self.done: asyncio.Future[float] = loop.create_future()  # the end time (perf_counter)
        self.status = 0
        self.headers_at: float | None = None
        self.retry_after: str | None = None  # a non-200 answer's Retry-After header
        self.keep_alive = False
        self.received = False  # any response byte at all
        # Called once from data_received when the response has ended (closed loop: sends the
        # stream's next request); `followed` is that request once sent on this connection.
        self.then: Callable[[], None] | None = None
        self.followed: _Ahead | None = None
        self._state = _HEAD
        self._buf = b""
        self._left = 0  # bytes still to come: of the chunk (data and CRLF), or of a sized body
        self._error_body: bytearray | None = None  # a non-200 body, up to _ERROR_BODY_LIMIT
        self._last = now = perf_counter()
        # One lazy timer for both bounds, armed at the nearer one.
        delay = read_timeout or None
        if self._deadline is not None and (delay is None or self._deadline - now < delay):
            delay = self._deadline - now
        self._timer = loop.call_later(delay, self._check_timeout) if delay is not None else None

    # ---- endings ----
    def _finish(self, t: float) -> None:
        self._state = _DONE
        self._stop_timer()
        if not self.done.done():
            self.done.set_result(t)

    @property
    def finished(self) -> bool:
        """The whole response arrived (not failed, not abandoned)."""
        return self.done.done() and not self.done.cancelled() and self.done.exception() is None

    def close(self) -> None:
        """The caller is done with it, however it ended."""
        self._stop_timer()
        self._state = _DONE
        if not self.done.done():
            self.done.cancel()

    def fail(self, outcome: Outcome, message: str) -> None:
        if self._state == _DONE:
            return
        self._state = _DONE
        self.keep_alive = False
        self._stop_timer()
        if not self.done.done():
            self.done.set_exception(_Failure(outcome, message))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timeout(self) -> None:
        """A lazy read timeout (re-armed from the last read only when it fires), and the whole
        request's deadline."""
        now = perf_counter()
        deadline = self._deadline
        if deadline is not None and now >= deadline:
            self._timer = None
            self.fail(Outcome.TIMEOUT, _request_timeout_text(self.request_timeout))
            self._connection.abort()
            return
        idle = now - self._last
        if self.read_timeout and idle >= self.read_timeout:
            self._timer = None
            self.fail(Outcome.TIMEOUT, f"timed out: no data for {self.read_timeout:g} s")
            self._connection.abort()
            return
        delay = self.read_timeout - idle if self.read_timeout else None
        if deadline is not None and (delay is None or deadline - now < delay):
            delay = deadline - now
        if delay is not None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._check_timeout)

    def eof(self, t: float) -> None:
        """The server closed the connection."""
        if self._state == _UNTIL_CLOSE:
            self._finish(t)
        elif self._state != _DONE:
            what = "the response ended" if self.received else "any response"
            self.fail(Outcome.DROPPED, f"connection dropped: server closed it before {what}")

    # ---- bytes ----
    def feed(self, data: bytes, t: float) -> None:
        self._last = t
        self.received = True
        buf = self._buf + data if self._buf else data
        self._buf = b""
        state = self._state
        pos = 0
        if state == _HEAD:
            pos = self._head(buf, t)
            if pos < 0:
                return
            state = self._state
        if state == _CHUNKED:
            self._chunked(buf, pos, t)
        elif state == _SIZED:
            self._sized(buf, pos, t)
        elif state == _UNTIL_CLOSE:
            self._body(buf[pos:] if pos else buf, t)
        elif state == _TRAILER:
            self._trailer(buf, pos, t)
        elif pos < len(buf):  # _DONE, with bytes after the response: not reusable
            self.keep_alive = False

    def _head(self, buf: bytes, t: float) -> int:
        """Parse the response head; the offset of the body, or -1 (incomplete or failed)."""
        pos = 0
        while True:
            start = buf[pos : pos + 5]
            if start != b"HTTP/"[: len(start)]:  # bytes that are not an HTTP response
                self.fail(Outcome.MALFORMED, f"bad HTTP response: {buf[pos : pos + 60]!r}")
                return -1
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(buf) - pos > _HEAD_LIMIT:
                    self.fail(Outcome.MALFORMED, "bad HTTP response: head over 64 KB")
                else:
                    self._buf = buf[pos:]
                return -1
            lines = buf[pos:end].decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if (
                not version.startswith("HTTP/1.")
                or not code.isdigit()
                or rest[3:4] not in ("", " ")
            ):
                self.fail(Outcome.MALFORMED, f"bad HTTP response: {lines[0][:100]!r}")
                return -1
            status = int(code)
            pos = end + 4
            if 100 <= status < 200 and status != 101:
                continue  # an interim response (103 Early Hints...): the real one follows
            break
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        self.status = status
        self.headers_at = t
        if status == 101:
            self.fail(Outcome.MALFORMED, "bad HTTP response: 101 Switching Protocols")
            return -1
        connection = headers.get("connection", "").lower()
        self.keep_alive = (
            "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        )
        if status != 200:
            self._error_body = bytearray()
            self.retry_after = headers.get("retry-after")
        coding = headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        if coding:
            if coding.rsplit(",", 1)[-1].strip() != "chunked":
                self.keep_alive = False
                self._state = _UNTIL_CLOSE
            else:
                self._state = _CHUNKED
        elif length is not None:
            if not length.isdigit():
                self.fail(Outcome.MALFORMED, f"bad HTTP response: Content-Length {length!r}")
                return -1
            self._left = int(length)
            self._state = _SIZED
            if not self._left:
                self._finish(t)
        else:
            self.keep_alive = False
            self._state = _UNTIL_CLOSE
        return pos

    def _body(self, data: bytes, t: float) -> None:
        if self._error_body is None:
            self.parser.feed(data, t)
            return
        self._error_body += data[: _ERROR_BODY_LIMIT - len(self._error_body)]
        if len(self._error_body) >= _ERROR_BODY_LIMIT:  # enough to say what went wrong
            self.keep_alive = False
            self._finish(t)

    def _sized(self, buf: bytes, pos: int, t: float) -> None:
        data = buf[pos : pos + self._left] if pos or len(buf) > self._left else buf
        self._left -= len(data)
        if pos + len(data) < len(buf):
            self.keep_alive = False  # bytes after the body
        if data:
            self._body(data, t)
        if not self._left and self._state != _DONE:
            self._finish(t)

    def _chunked(self, buf: bytes, pos: int, t: float) -> None:
        """Decode what `buf` holds of a chunked body; hand the data over in one piece."""
        n = len(buf)
        find = buf.find
        left = self._left  # of the current chunk's data and its CRLF (0: at a size line)
        # At a size line of a long read: the plain whole chunks in one go, the rest (the last
        # chunk, one cut by the end of the read, anything unusual) one by one below.
        if left or n - pos < SPLIT_BYTES:
            out: list[bytes] = []
        else:
            out, pos = whole_chunks(buf, pos)
        while True:
            if left:
                if n - pos >= left:  # the rest of the chunk is here
                    if left > 2:
                        out.append(buf[pos : pos + left - 2])
                    if buf[pos + left - 2 : pos + left] != b"\r\n":  # left >= 2 (see below)
                        self._bad_chunk("no CRLF after a chunk")
                        return
                    pos += left
                    left = 0
                else:
                    take = min(n - pos, left - 2)
                    if take > 0:
                        out.append(buf[pos : pos + take])
                        pos += take
                        left -= take
                    self._buf = buf[pos:]  # at most the CR: a CRLF is never split, left stays >= 2
                    break
            i = find(b"\r\n", pos)
            if i < 0:
                if n - pos > 1024:
                    self._bad_chunk("chunk size line over 1 KB")
                    return
                self._buf = buf[pos:]
                break
            try:
                size = int(buf[pos:i], 16)
            except ValueError:  # a chunk extension (";name=value"), or garbage
                try:
                    size = int(buf[pos:i].split(b";", 1)[0], 16)
                except ValueError:
                    self._bad_chunk(f"bad chunk size {buf[pos:i][:40]!r}")
                    return
            if size < 0:
                self._bad_chunk(f"bad chunk size {buf[pos:i][:40]!r}")
                return
            pos = i + 2
            if size == 0:
                self._left = 0
                self._state = _TRAILER
                if out:
                    self._body(out[0] if len(out) == 1 else b"".join(out), t)
                if self._state == _TRAILER:
                    self._trailer(buf, pos, t)
                return
            end = pos + size
            if end + 2 <= n and buf[end] == 13 and buf[end + 1] == 10:  # the whole chunk is here
                out.append(buf[pos:end])
                pos = end + 2
            else:
                left = size + 2
        self._left = left
        if out:
            self._body(out[0] if len(out) == 1 else b"".join(out), t)

    def _bad_chunk(self, what: str) -> None:
        self.fail(Outcome.MALFORMED, f"bad HTTP response: {what}")
        self._connection.abort()

    def _trailer(self, buf: bytes, pos: int, t: float) -> None:
        if buf.startswith(b"\r\n", pos):  # no trailer fields: the usual end
            end = pos + 2
        else:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(buf) - pos > _HEAD_LIMIT:
                    self._bad_chunk("trailer over 64 KB")
                else:
                    self._buf = buf[pos:]
                return
            end += 4
        if end < len(buf):
            self.keep_alive = False  # bytes after the response
        self._finish(t)

    def error_text(self) -> str:
        return http_error_text(self.status, bytes(self._error_body or b""))


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection; one exchange at a time.

    Raw asyncio rather than anyio streams: a protocol's `data_received` hands each read to the
    parser with its arrival time and no task switch, which anyio's stream API would add per chunk
    (the hot path; docs/performance.md)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        t = perf_counter()  # the bytes' arrival, before any parsing
        exchange = self.exchange
        if exchange is None:  # nothing asked: the connection's state is unknown
            self.abort()
            return
        exchange.feed(data, t)
        if exchange.then is not None and exchange.done.done():
            then, exchange.then = exchange.then, None
            then()

    def eof_received(self) -> bool:
        self.closed = True
        if self.exchange is not None:
            self.exchange.eof(perf_counter())
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.exchange is not None:
            self.exchange.eof(perf_counter())

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


@dataclass(slots=True)
class _Ahead:
    """A closed-loop stream's request sent from the I/O callback, waiting for its task."""

    rec: RequestRecord
    target: _Target
    conn: _Connection
    exchange: _Exchange
    parser: StreamParser


def _head_into(rec: RequestRecord, exchange: _Exchange | None, origin: float) -> None:
    """What the response head said, when one had arrived."""
    if exchange is not None and exchange.headers_at is not None:
        rec.headers_at = exchange.headers_at - origin
        rec.status = exchange.status


class NativeTransport:
    """Streamed POSTs over loadgen's own HTTP/1.1 client (http and https, no proxies)."""

    def __init__(self, settings: ClientSettings) -> None:
        self._settings = settings
        self._parser = endpoint_named(settings.api).parser
        self._headers = request_headers(settings)
        self._targets: dict[str, _Target] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._slots = _pool_slots(settings)
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        self._ahead: dict[int, _Ahead] = {}  # id(rec) -> a request sent ahead (see _follow)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = _ssl_context(self._settings.verify_tls)
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    async def _connect(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._settings.connect_timeout or None):
                _, conn = await loop.create_connection(
                    _Connection,
                    target.host,
                    target.port,
                    ssl=self._ssl_context() if target.tls else None,
                    server_hostname=target.host if target.tls else None,
                )
        except TimeoutError as exc:
            raise _Failure(Outcome.TIMEOUT, "timed out: connecting") from exc
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise _Failure(Outcome.TLS, _describe(exc, "TLS failure")) from exc
        except OSError as exc:
            raise _Failure(Outcome.CONNECT, _describe(exc, "cannot connect")) from exc
        return conn

    def _take_idle(self, target: _Target) -> _Connection | None:
        idle = self._idle.get(target.key)
        now = perf_counter()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < _IDLE_REUSE_S:
                return conn
            conn.abort()
        return None

    def _release(self, target: _Target, conn: _Connection, reusable: bool) -> None:
        if reusable and not conn.closed and not self._closed:
            conn.exchange = None
            conn.idle_since = perf_counter()
            self._idle.setdefault(target.key, []).append(conn)
        else:
            conn.abort()

    def _start(
        self, conn: _Connection, target: _Target, parser: StreamParser, body: bytes, sent: float
    ) -> _Exchange:
        settings = self._settings
        exchange = conn.exchange = _Exchange(
            conn, parser, settings.read_timeout, settings.request_timeout, sent
        )
        assert conn.transport is not None
        conn.transport.writelines((target.head, b"%d\r\n\r\n" % len(body), body))
        return exchange

    def _follow(
        self,
        follow: Follow,
        url: str,
        origin: float,
        target: _Target,
        conn: _Connection,
        exchange: _Exchange,
    ) -> None:
        """The response has just ended (we are in data_received): send the stream's next request
        on this connection now. Waiting for the stream's task would put the send behind every
        other connection's reads of this turn of the event loop (they run before any woken
        task): at saturation that gap was as long as a request, and about half of the streams
        were idle at any moment. The finished request's own bookkeeping follows in its task."""
        if (
            not exchange.finished
            or exchange.status != 200  # an HTTP error: the stream's task decides (a backoff)
            or not exchange.keep_alive
            or conn.closed
            or self._closed
            or conn.transport is None
            or conn.transport.is_closing()
        ):
            return
        try:
            nxt = follow.next_request(url)
        except Exception:  # the stream's task meets it again, where it can be reported
            return
        if nxt is None:
            return
        rec, body = nxt
        parser = self._parser(origin, rec)
        sent = perf_counter()  # the pool slot and the connection are held already
        rec.sent = sent - origin
        ahead = self._start(conn, target, parser, body, sent)
        ahead.then = lambda: self._follow(follow, url, origin, target, conn, ahead)
        exchange.followed = self._ahead[id(rec)] = _Ahead(rec, target, conn, ahead, parser)

    def _drop_ahead(self, ahead: _Ahead | None, origin: float) -> None:
        """Requests sent ahead (one after another on one connection, when each ended before
        the stream's task took it over) whose stream was cancelled before taking them over."""
        conn = None
        while ahead is not None:
            self._ahead.pop(id(ahead.rec), None)
            _cancelled(ahead.rec, ahead.parser, origin)
            _head_into(ahead.rec, ahead.exchange, origin)
            ahead.exchange.close()
            conn = ahead.conn
            ahead = ahead.exchange.followed
        if conn is not None:  # the chain held one connection and one pool slot
            conn.abort()
            if self._slots is not None:
                self._slots.release()

    async def send(
        self,
        rec: RequestRecord,
        url: str,
        body: bytes,
        origin: float,
        follow: Follow | None = None,
    ) -> None:
        sent_ahead = self._ahead.pop(id(rec), None) if self._ahead else None
        slots = self._slots
        slot = False
        target: _Target | None = None
        conn: _Connection | None = None
        exchange: _Exchange | None = None
        if sent_ahead is not None:  # by _follow: its connection and pool slot are now ours
            parser = sent_ahead.parser
            target, conn, exchange = sent_ahead.target, sent_ahead.conn, sent_ahead.exchange
            slot = True
        else:
            parser = self._parser(origin, rec)
        try:
            if exchange is None:
                if slots is not None:
                    await slots.acquire()  # waiting for a connection is schedule lag, not latency
                    slot = True
                sent = perf_counter()
                rec.sent = sent - origin
                target = self._targets.get(url)
                if target is None:
                    target = self._targets[url] = _target(url, self._headers)
                conn = self._take_idle(target) or await self._connect(target)
                exchange = self._start(conn, target, parser, body, sent)
                if follow is not None:
                    ex, tg, cn = exchange, target, conn
                    exchange.then = lambda: self._follow(follow, url, origin, tg, cn, ex)
            end = await exchange.done
            if exchange.headers_at is not None:
                rec.headers_at = exchange.headers_at - origin
            rec.status = exchange.status
            rec.end = end - origin
            if exchange.status != 200:
                rec.outcome = outcome_for_status(exchange.status)
                rec.error = exchange.error_text()
                rec.retry_after = retry_after_seconds(exchange.retry_after, time())
                return
            parser.close(end)
            parser.fill(rec)
        except asyncio.CancelledError:
            _cancelled(rec, parser, origin)
            _head_into(rec, exchange, origin)
            if exchange is not None and exchange.followed is not None:
                self._drop_ahead(exchange.followed, origin)
            raise
        except _Failure as f:
            _failed(rec, parser, origin, f.outcome, f.message)
            _head_into(rec, exchange, origin)
        except (ValueError, OSError) as exc:
            _failed(rec, parser, origin, Outcome.OTHER, _describe(exc, "client error"))
        finally:
            _redacted(rec, self._settings.api_key)
            if exchange is not None and exchange.followed is not None:
                pass  # the connection and the pool slot went on to the stream's next request
            else:
                reusable = exchange is not None and exchange.finished and exchange.keep_alive
                if exchange is not None:
                    exchange.close()
                if conn is not None and target is not None:
                    self._release(target, conn, reusable)
                if slot and slots is not None:
                    slots.release()

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()


def make_transport(name: TransportName, settings: ClientSettings) -> Transport:
    if name == "httpx":
        return HttpxTransport(settings)
    if name == "native":
        return NativeTransport(settings)
    return AiohttpTransport(settings)


def _redacted(rec: RequestRecord, secret: str | None) -> None:
    """The API key out of the record's error text, wherever that text came from (an error
    body, an error event in the stream, a library's exception): before it is stored."""
    if secret and rec.error is not None:
        rec.error = redact(rec.error, secret)


def _describe(exc: BaseException, what: str) -> str:
    detail = str(exc).strip()
    return (
        f"{what}: {type(exc).__name__}: {detail}"[:300]
        if detail
        else f"{what}: {type(exc).__name__}"
    )


def _request_timeout_text(limit: float | None) -> str:
    return f"timed out: the whole request took over request_timeout ({limit:g} s)"


def _http_error(
    rec: RequestRecord, status: int, body: bytes, origin: float, retry_after: str | None
) -> None:
    rec.end = perf_counter() - origin
    rec.outcome = outcome_for_status(status)
    rec.error = http_error_text(status, body)
    rec.retry_after = retry_after_seconds(retry_after, time())


def _stream_ended(rec: RequestRecord, parser: StreamParser, origin: float) -> None:
    """EOF of a 200 stream: flush the parser and fill the record from it."""
    now = perf_counter()
    parser.close(now)
    rec.end = now - origin
    parser.fill(rec)


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
