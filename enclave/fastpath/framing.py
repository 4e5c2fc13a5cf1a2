"""Strict framing of one HTTP/1.1 request head, for the fast path.

``parse_head`` accepts only the plainest form of a request the fast path serves: a known
method and an exact path (no query, no percent-encoding), ``HTTP/1.1``, token header names,
visible-ASCII values, exactly one all-digits ``Content-Length``, and none of the headers
that change framing or the connection (``Transfer-Encoding``, ``Expect``, ``Upgrade``).
Anything else returns ``None`` and the connection goes to aiohttp, which answers it as it
always has (including its 400/431 refusals). Being strict here is what keeps the two
parsers from disagreeing on where a request ends: the fast path frames a request only when
its length is stated once, unambiguously, and hands over every byte from the start of any
request it does not frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# aiohttp's own limits (``max_line_size`` / ``max_field_size`` 8190): a longer head is
# handed over so that aiohttp refuses it exactly as before.
MAX_HEAD_BYTES = 8190
MAX_HEADERS = 100
MAX_CONTENT_LENGTH_DIGITS = 15

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible ASCII, space and tab only (RFC 9110 field-value without obs-text).
_FIELD_VALUE = re.compile(rb"[\x20-\x7e\t]*")
_DIGITS = re.compile(rb"[0-9]{1,%d}" % MAX_CONTENT_LENGTH_DIGITS)
# Headers whose presence means the request is not a plain fixed-length one.
_HANDED_OVER = frozenset({b"transfer-encoding", b"expect", b"upgrade"})


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request head the fast path frames: its target, headers (name, value) as text,
    the body length, and whether the client asked to close the connection after it."""

    method: str
    target: bytes
    headers: tuple[tuple[str, str], ...]
    content_length: int
    close: bool


def parse_head(head: bytes, methods: frozenset[bytes]) -> RequestHead | None:
    """``head`` is the request line and header lines, without the final blank line."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in methods:
        return None
    method, target = parts[0], parts[1]
    if not target.startswith(b"/") or b"?" in target or b"%" in target or b"#" in target:
        return None
    if len(lines) - 1 > MAX_HEADERS:
        return None
    headers: list[tuple[str, str]] = []
    content_length: int | None = None
    close = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            return None  # also an obs-fold continuation line, which starts with SP or HT
        value = value.strip(b" \t")
        if _FIELD_VALUE.fullmatch(value) is None:
            return None
        lowered = name.lower()
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
    if content_length is None:
        return None
    return RequestHead(method.decode("ascii"), target, tuple(headers), content_length, close)
