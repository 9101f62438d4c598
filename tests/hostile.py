"""A hostile OpenAI-compatible server for security tests: a scripted raw-socket HTTP server on
127.0.0.1 (threads, so in-process runs and `loadgen` subprocesses can both use it) that records
the raw bytes of every request, echoes the Authorization header back in its error texts and
puts markup and terminal escape sequences in everything it says (model id, errors, /metrics
labels)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson

# Markup a report must escape, and terminal controls a console must not pass through.
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
ANSI = "\x1b[31m\x1b]0;pwned\x07\x1b[2J"
PAYLOAD = f"{SCRIPT}{IMG}{ANSI}"
MODEL = f"m{PAYLOAD}"


def _chunk(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _usage_stream(n: int = 2) -> bytes:
    out = [_chunk({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
    for k in range(1, n + 1):
        out.append(
            _chunk(
                {
                    "choices": [{"index": 0, "delta": {"content": "w"}, "finish_reason": None}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": k, "total_tokens": 3 + k},
                }
            )
        )
    out.append(
        _chunk({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n}})
        + b"data: [DONE]\n\n"
    )
    return b"".join(out)


@dataclass
class Hostile:
    """What the server saw; `answers` picks the kinds of answer to POSTs, in turn."""

    port: int = 0
    received: list[bytes] = field(default_factory=list)
    answers: tuple[str, ...] = (
        "echo401",
        "echo_long400",
        "stream_error",
        "malformed",
        "malformed_cut",
        "ok",
    )
    posts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def response(self, head: bytes, body: bytes) -> bytes:
        line = head.split(b"\r\n", 1)[0]
        auth = b""
        for h in head.split(b"\r\n")[1:]:
            if h.lower().startswith(b"authorization:"):
                auth = h.split(b":", 1)[1].strip()
        if line.startswith(b"GET") and b"/v1/models" in line:
            return _answer(200, orjson.dumps({"data": [{"id": MODEL}]}), "application/json")
        if line.startswith(b"GET") and b"/metrics" in line:
            reason, model = (_label(PAYLOAD), _label(MODEL))
            text = (
                f'vllm:request_success_total{{finished_reason="{reason}",'
                f'model_name="{model}"}} 3\n'
                f'vllm:num_requests_running{{model_name="{model}"}} 1\n'
            )
            return _answer(200, text.encode(), "text/plain")
        if line.startswith(b"GET"):
            return _answer(200, b"ok", "text/plain")
        with self.lock:
            kind = self.answers[self.posts % len(self.answers)]
            self.posts += 1
        echo = auth.decode("latin-1")
        if kind == "echo401":  # the key echoed back, as some gateways do
            doc = {"error": {"message": f"invalid credentials {echo} {PAYLOAD}", "code": 401}}
            return _answer(401, orjson.dumps(doc), "application/json")
        if kind == "echo_long400":  # the key where an error text is cut at 300 characters
            text = ("x" * 280 + echo + PAYLOAD).encode()
            return _answer(400, text, "text/plain")
        if kind == "stream_error":  # an error object inside a 200 stream
            doc = {"error": {"message": f"engine died for {echo} {PAYLOAD}"}}
            stream = _chunk({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            return _answer(200, stream + _chunk(doc) + b"data: [DONE]\n\n", "text/event-stream")
        if kind == "malformed":  # a data line that is not JSON
            stream = f"data: not json {echo} {PAYLOAD}\n\ndata: [DONE]\n\n".encode()
            return _answer(200, stream, "text/event-stream")
        if kind == "malformed_cut":  # the record quotes the line's first bytes: cut in the key
            stream = f"data: not json {'y' * 45}{echo} {PAYLOAD}\n\ndata: [DONE]\n\n".encode()
            return _answer(200, stream, "text/event-stream")
        if kind == "error500":
            doc = {"error": {"message": f"boom {PAYLOAD}", "code": 500}}
            return _answer(500, orjson.dumps(doc), "application/json")
        return _answer(200, _usage_stream(), "text/event-stream")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _answer(status: int, body: bytes, ctype: str) -> bytes:
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


@contextmanager
def hostile_server(**kwargs: object) -> Iterator[Hostile]:
    """A Hostile server on a free 127.0.0.1 port, one answer per connection."""
    state = Hostile(**kwargs)  # type: ignore[arg-type]

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn: socket.socket = self.request
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    part = conn.recv(65536)
                    if not part:
                        return
                    data += part
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for h in head.split(b"\r\n")[1:]:
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":", 1)[1])
                while len(body) < length:
                    part = conn.recv(65536)
                    if not part:
                        break
                    body += part
                with state.lock:
                    state.received.append(head + b"\r\n\r\n" + body)
                conn.sendall(state.response(head, body))
            except OSError:
                return

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
