"""HTTP/1.1 chunked bodies: the run of plain whole chunks at the start of a read, in one go.

A streamed response is one HTTP chunk per SSE event; a short answer read at once is dozens of
them. Decoding them one by one is a handful of Python steps each (find the size line, parse it,
check the CRLF after the data, slice): for image requests, whose answers are short and read
whole, that was about a tenth of the client's work per request. Here the read is split on CRLF
once and the sizes checked against the pieces' lengths in C loops (`map`, list comparison).

A chunk is taken only if it is `size CRLF data CRLF` with a size the one-by-one decoder
(`loadgen.client._Exchange._chunked`) reads the same way (`int(line, 16)`, no extension) and
data without a CRLF of its own: exactly the chunks that decoder takes whole, with the same bytes.
The first that is not (the last chunk, one cut by the end of the read, an extension, data
holding a CRLF, a bad size) is left to that decoder, from where this stopped.
"""

from __future__ import annotations

from itertools import repeat
from operator import ne

MANY = 8  # chunks (of the first one's size) a read must hold to be split
SPLIT_BYTES = 4096  # nor is a shorter read worth the call


def whole_chunks(buf: bytes, pos: int) -> tuple[list[bytes], int]:
    """The data of the plain whole chunks of `buf` from `pos` (the start of a size line) on, and
    the offset just past them (`pos` when there is none)."""
    # Worth it only for a read of many chunks (at the first chunk's size, MANY or more): the
    # split and its lists cost about as much as a handful of chunks one by one, so a few
    # chunks a read (long answers as they stream) or one long chunk stay with the decoder.
    n = len(buf)
    i = buf.find(b"\r\n", pos, pos + 1024)
    if i < 0:
        return [], pos
    try:
        first = int(buf[pos:i], 16)
    except ValueError:
        return [], pos
    if first <= 0 or n - i < MANY * (first + 8):
        return [], pos
    parts = (buf[pos:] if pos else buf).split(b"\r\n")
    # parts: size, data, size, data, ..., then what follows the last CRLF; a pair is whole
    # when its data is followed by a CRLF.
    pairs = (len(parts) - 1) // 2
    if not pairs:
        return [], pos
    lines = parts[0 : 2 * pairs : 2]
    data = parts[1 : 2 * pairs : 2]
    try:
        sizes = list(map(int, lines, repeat(16)))
    except ValueError:  # an extension or garbage: the sizes before it
        sizes = _leading_sizes(lines)
        pairs = len(sizes)
        del data[pairs:]
    lengths = list(map(len, data))
    if sizes != lengths:
        pairs = list(map(ne, sizes, lengths)).index(True)
    if 0 in sizes:  # the last chunk (size 0) ends the body: it and what follows are not data
        pairs = min(pairs, sizes.index(0))
    if not pairs:
        return [], pos
    if pairs < len(data):
        del data[pairs:], lengths[pairs:]
    return data, pos + sum(lengths) + sum(map(len, lines[:pairs])) + 4 * pairs


def _leading_sizes(lines: list[bytes]) -> list[int]:
    sizes = []
    for line in lines:
        try:
            sizes.append(int(line, 16))
        except ValueError:
            break
    return sizes
