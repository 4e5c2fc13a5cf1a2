"""Strict framing of one HTTP/1.1 request head, for the fast path.

``HeadParser.parse`` frames only the plainest form of request: an origin-form target of
visible ASCII (no fragment), ``HTTP/1.1``, token header names, visible-ASCII values, at
most one all-digits ``Content-Length`` (none: no body, as RFC 9112 says for a request), and
none of the headers that change framing or the connection (``Transfer-Encoding``,
``Expect``, ``Upgrade``). Anything else returns ``None`` and the connection goes to aiohttp
for good, which answers it as it always has (including its 400/431 refusals). Being strict
here is what keeps the two parsers from disagreeing on where a request ends: the fast path
frames a request only when its length is stated once, unambiguously, and hands over every
byte from the start of any request it does not frame.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# aiohttp's own limits (``max_line_size`` / ``max_field_size`` 8190): a longer head is
# handed over so that aiohttp refuses it exactly as before.
MAX_HEAD_BYTES = 8190
MAX_HEADERS = 100
MAX_CONTENT_LENGTH_DIGITS = 15

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHOD = re.compile(rb"[A-Z]{1,20}")
# Visible ASCII, space, tab and the line ends (RFC 9110 field values without obs-text);
# a CR or LF that is not part of a CRLF is refused separately. Checked by deleting them
# (``bytes.translate``): anything left is refused. A regex over the head cost ~10 us.
_HEAD_BYTES = bytes(range(0x20, 0x7F)) + b"\t\r\n"
_DIGITS = re.compile(rb"[0-9]{1,%d}" % MAX_CONTENT_LENGTH_DIGITS)
# Headers whose presence means the request is not a plain fixed-length one.
_HANDED_OVER = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
# Distinct header names remembered as valid (a client sends the same few every time).
MAX_KNOWN_NAMES = 512


class RequestHead(NamedTuple):
    """A request head the fast path frames: its target, headers (name, value) as text,
    the body length, and whether the client asked to close the connection after it.
    (A named tuple: one per request, built in C; a frozen dataclass costs ~5 us here.)"""

    method: str
    target: bytes
    headers: tuple[tuple[str, str], ...]
    content_length: int
    close: bool


class HeadParser:
    """Parses request heads; remembers which header names it has already checked
    (bounded), since every request of a client repeats them."""

    def __init__(self) -> None:
        self._names: dict[bytes, bytes] = {}  # a valid name -> its lower case

    def parse(self, head: bytes) -> RequestHead | None:
        """``head`` is the request line and header lines, without the final blank line."""
        crlf = head.count(b"\r\n")
        if (
            head.count(b"\r") != crlf
            or head.count(b"\n") != crlf
            or crlf > MAX_HEADERS
            or head.translate(None, _HEAD_BYTES)
        ):
            return None
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1" or _METHOD.fullmatch(parts[0]) is None:
            return None
        method, target = parts[0], parts[1]
        if not target.startswith(b"/") or b"#" in target:
            return None
        headers: list[tuple[str, str]] = []
        content_length: int | None = None
        close = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            lowered = self._lowered(name) if colon else None
            if lowered is None:
                return None  # also an obs-fold continuation line (starts with SP or HT)
            value = value.strip(b" \t")
            if lowered in _HANDED_OVER:
                return None
            if lowered == b"content-length":
                if content_length is not None or _DIGITS.fullmatch(value) is None:
                    return None
                content_length = int(value)
            elif lowered == b"connection":
                tokens = {token.strip(b" \t").lower() for token in value.split(b",")}
                if b"upgrade" in tokens:
                    return None
                close = b"close" in tokens
            headers.append((name.decode("ascii"), value.decode("ascii")))
        return RequestHead(
            method.decode("ascii"), target, tuple(headers), content_length or 0, close
        )

    def _lowered(self, name: bytes) -> bytes | None:
        lowered = self._names.get(name)
        if lowered is not None:
            return lowered
        if _TOKEN.fullmatch(name) is None:
            return None
        lowered = name.lower()
        if len(self._names) < MAX_KNOWN_NAMES:
            self._names[name] = lowered
        return lowered
