"""Text that crosses a trust boundary: what loadgen sends, stores, shows and uses as a path.

Pure functions, no I/O. Four rules, each applied where such text is made or leaves loadgen:
- on the wire: a header name is an HTTP token, a header value, the API key, a URL and the
  endpoint hold no control character (a CR or LF would end the line and start a header of the
  value's choosing), checked when a scenario is loaded or a key read, and again by the native
  transport before it writes a request head;
- the API key is cut out of every error text stored or printed (`redact`): servers and
  gateways echo the Authorization header back in error bodies, and client libraries quote the
  headers they refuse;
- on the terminal, text a server supplied (model ids, error messages, metric labels) goes out
  with its escape sequences removed and its other control characters spelled out
  (`for_terminal`), so it can neither rewrite the screen nor the window title;
- names that become folder or file names (the scenario's, its phases') are one safe path
  component (`PATH_NAME`, `path_name`).
"""

from __future__ import annotations

import re

# An HTTP header name (RFC 9110 token).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Anything but visible ASCII, space and tab is refused in header values: control characters
# would split the line, and non-ASCII is encoded differently by each HTTP library.
_BAD_HEADER_VALUE = re.compile(r"[^\t\x20-\x7e]")
# A URL or an endpoint path: visible ASCII only (no blank, which would split the request line).
_BAD_URL = re.compile(r"[^\x21-\x7e]")

# Terminal escape sequences (ECMA-48, 7-bit): CSI ... final byte, OSC/DCS/APC/PM/SOS strings
# up to BEL or ST, other ESC sequences and a lone ESC. Their 8-bit introducers are C1
# controls, spelled out below, which leaves what follows them plain text.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"  # CSI
    r"|\x1b[\]PX^_][^\x07\x1b\n]*(?:\x07|\x1b\\)?"  # strings
    r"|\x1b[ -/]*[0-~]?"  # other ESC sequences, or a lone ESC
)
# Control characters left after that, and the Unicode controls that reorder or hide text.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_LINE_ENDS = re.compile(r"[\n\r\t]")

REDACTED = "[redacted]"
# The shortest start of the key that `redact` removes (where a text was cut in the key).
_MIN_CUT_PREFIX = 6
_NOT_VISIBLE = re.compile(r"[^\x20-\x7e]+")

# One path component: letters, digits, dot, dash, underscore; not starting with a dot.
PATH_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,99}")
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")
PATH_NAME_RULE = "1 to 100 letters, digits, '.', '-' or '_', not starting with '.'"


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot be an HTTP header name, or None."""
    if not _TOKEN.fullmatch(name):
        return f"not a valid header name {name!r} (letters, digits and !#$%&'*+-.^_`|~ only)"
    return None


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot be sent as a header value, or None."""
    bad = _BAD_HEADER_VALUE.search(value)
    if bad:
        return f"header values are printable ASCII only; found {bad.group()!r} at {bad.start()}"
    return None


def url_problem(url: str) -> str | None:
    """Why `url` (or an endpoint path) cannot go into a request line, or None."""
    bad = _BAD_URL.search(url)
    if bad:
        return f"found {bad.group()!r} at {bad.start()}: control characters, blanks and non-ASCII are not allowed"
    return None


def key_problem(key: str) -> str | None:
    """Why `key` cannot be sent as a Bearer token, or None. Never quotes the key."""
    bad = _BAD_HEADER_VALUE.search(key)
    if bad is None:
        return None
    if bad.group() in "\r\n":
        return "it holds more than one line"
    return (
        f"it holds a character that cannot be sent in a header ({bad.group()!r} at {bad.start()})"
    )


def redact(text: str, secret: str | None) -> str:
    """`text` without `secret`, nor any start of it of 6 characters or more: an error text
    cut short (or a library's quote of one) may end in the middle of the key. A secret with
    control characters (refused when a key is read; here for safety) is also removed line by
    line, as a library quoting it with `repr` shows it."""
    if not secret or not text:
        return text
    for part in (secret, *_NOT_VISIBLE.split(secret)):
        if len(part) >= _MIN_CUT_PREFIX or part == secret:
            text = _cut(text, part)
    return text


def _cut(text: str, secret: str) -> str:
    start = secret[: min(len(secret), _MIN_CUT_PREFIX)]
    out: list[str] = []
    pos = 0
    while (i := text.find(start, pos)) >= 0:
        end = i + len(start)  # as far as the text goes on spelling the secret
        while end < len(text) and end - i < len(secret) and text[end] == secret[end - i]:
            end += 1
        out += (text[pos:i], REDACTED)
        pos = end
    return "".join(out) + text[pos:] if out else text


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _spell(m: re.Match[str]) -> str:
    c = m.group()
    if c in _SHORT:
        return _SHORT[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def for_terminal(text: str, *, lines: bool = True) -> str:
    """`text` made safe to print: escape sequences removed, other control characters spelled
    out (`\\x07`). `lines`: newlines and tabs are kept (a multi-line message of loadgen's own);
    otherwise they are spelled out too (one value inside a line)."""
    if text.isascii() and text.isprintable():  # the usual case: nothing to do
        return text
    text = _ESCAPES.sub("", text)
    text = _CONTROLS.sub(_spell, text)
    return text if lines else _LINE_ENDS.sub(_spell, text)


def path_name(name: str) -> str:
    """`name` as one safe path component: kept when it is one (up to 200 characters, room for
    a phase name and a file suffix), otherwise other characters become '_' and it never starts
    with a dot (so never '..') nor is empty."""
    if len(name) <= 200 and _PATH_COMPONENT.fullmatch(name):
        return name
    safe = re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("_")[:200].lstrip(".")
    return safe or "run"
