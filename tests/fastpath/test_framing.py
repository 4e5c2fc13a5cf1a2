"""The fast path frames only plain requests; everything else goes to aiohttp (None)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave.fastpath.framing import MAX_HEADERS, MAX_KNOWN_NAMES, HeadParser

PLAIN = (
    b"POST /v1/encrypt HTTP/1.1\r\nHost: kms\r\nAuthorization: Bearer a.b.c\r\n"
    b"Content-Type: application/json\r\nContent-Length: 12"
)


def parse(head: bytes) -> object:
    return HeadParser().parse(head)


def test_a_plain_request_is_framed() -> None:
    head = HeadParser().parse(PLAIN)
    assert head is not None
    assert (head.method, head.target, head.content_length, head.close) == (
        "POST", b"/v1/encrypt", 12, False,
    )  # fmt: skip
    assert ("Authorization", "Bearer a.b.c") in head.headers
    assert len(head.headers) == 4


@pytest.mark.parametrize(
    ("head", "method", "target", "length"),
    [
        (b"GET /v1/keys?limit=5 HTTP/1.1\r\nHost: kms", "GET", b"/v1/keys?limit=5", 0),
        (b"DELETE /v1/grants/p/%2A HTTP/1.1\r\nHost: kms", "DELETE", b"/v1/grants/p/%2A", 0),
        (b"POST /v1/keys HTTP/1.1\r\nContent-Length: 0", "POST", b"/v1/keys", 0),
    ],
)
def test_other_plain_requests_are_framed_for_aiohttp_to_answer(
    head: bytes, method: str, target: bytes, length: int
) -> None:
    framed = HeadParser().parse(head)
    assert framed is not None
    assert (framed.method, framed.target, framed.content_length) == (method, target, length)


def test_connection_close_is_honoured() -> None:
    head = HeadParser().parse(PLAIN + b"\r\nConnection: keep-alive, close")
    assert head is not None and head.close


@pytest.mark.parametrize(
    "head",
    [
        # not the plain form of a request
        PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0"),
        PLAIN.replace(b"POST", b"post"),
        PLAIN.replace(b"POST", b"PO\tST"),
        PLAIN.replace(b"/v1/encrypt", b"http://kms/v1/encrypt"),
        PLAIN.replace(b"/v1/encrypt", b"*"),
        PLAIN.replace(b"/v1/encrypt", b"/v1/encrypt#f"),
        PLAIN.replace(b"POST /v1", b"POST  /v1"),
        # framing that is not one plain Content-Length (request smuggling shapes)
        PLAIN + b"\r\nContent-Length: 12",
        PLAIN + b"\r\nContent-Length: 13",
        PLAIN + b"\r\nTransfer-Encoding: chunked",
        PLAIN.replace(b"Content-Length: 12", b"Transfer-Encoding: chunked"),
        PLAIN.replace(b"Content-Length: 12", b"Content-Length: +12"),
        PLAIN.replace(b"Content-Length: 12", b"Content-Length: 1 2"),
        PLAIN.replace(b"Content-Length: 12", b"Content-Length: 0x0c"),
        PLAIN.replace(b"Content-Length: 12", b"Content-Length: 1234567890123456"),
        PLAIN.replace(b"Content-Length: 12", b"Content-Length : 12"),
        PLAIN.replace(b"Content-Length: 12", b"Content-Length:\r\n 12"),
        PLAIN + b"\r\nExpect: 100-continue",
        PLAIN + b"\r\nUpgrade: websocket",
        PLAIN + b"\r\nConnection: Upgrade",
        # malformed lines and bytes
        PLAIN.replace(b"\r\nHost", b"\nHost"),
        PLAIN.replace(b"\r\nHost", b"\rHost"),
        PLAIN + b"\r\nX-Folded: a\r\n b",
        PLAIN + b"\r\nX-Nul: a\x00b",
        PLAIN + b"\r\nX-Latin: caf\xe9",
        PLAIN + b"\r\nNo colon here",
        PLAIN + b"\r\n: empty name",
        PLAIN + b"\r\nBad Name: x",
        PLAIN + b"".join(b"\r\nX-%d: y" % i for i in range(MAX_HEADERS)),
    ],
)
def test_anything_else_is_handed_to_aiohttp(head: bytes) -> None:
    assert parse(head) is None


def test_the_remembered_header_names_are_bounded() -> None:
    parser = HeadParser()
    for start in range(0, 3 * MAX_KNOWN_NAMES, 50):
        extra = b"".join(b"\r\nX-N%d: v" % i for i in range(start, start + 50))
        assert parser.parse(PLAIN + extra) is not None
    assert len(parser._names) == MAX_KNOWN_NAMES
    # a name seen before is still checked the same way when it is malformed
    assert parser.parse(PLAIN + b"\r\nBad Name: x") is None


@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = parse(data)
    assert result is None or result.content_length >= 0


@given(st.binary(max_size=60))
def test_arbitrary_header_lines_never_raise(line: bytes) -> None:
    result = parse(PLAIN + b"\r\n" + line)
    if result is not None:  # then the line was a well-formed, harmless header
        assert all("\r" not in v and "\n" not in v for _, v in result.headers)
