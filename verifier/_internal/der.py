"""A minimal, strict DER reader: just enough ASN.1 for certificates, CRLs and signatures.

We parse certificates ourselves rather than through ``cryptography.x509`` because AMD's
VCEK and VLEK certificates carry serial number 0, which ``cryptography`` already warns about
and says it will refuse. Definite lengths only (DER), every read bounded by its container.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_UTF8_STRING = 0x0C
TAG_PRINTABLE_STRING = 0x13
TAG_IA5_STRING = 0x16
TAG_UTC_TIME = 0x17
TAG_GENERALIZED_TIME = 0x18
TAG_SEQUENCE = 0x30
TAG_SET = 0x31


class DerError(ValueError):
    """The bytes are not the DER structure that was expected."""


@dataclass(frozen=True)
class Element:
    """One TLV: its tag, its content and the whole encoding (tag + length + content)."""

    tag: int
    content: bytes
    encoded: bytes

    def children(self) -> list[Element]:
        if not self.tag & 0x20:
            raise DerError(f"tag 0x{self.tag:02x} is not constructed")
        return read_all(self.content)


def read_element(data: bytes, offset: int = 0) -> tuple[Element, int]:
    """Read the TLV at ``offset``; return it and the offset just after it."""
    if offset + 2 > len(data):
        raise DerError("truncated TLV header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte tags are not supported")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > 4 or pos + count > len(data):
            raise DerError("bad length field")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise DerError("non-minimal length encoding")
        pos += count
    end = pos + length
    if end > len(data):
        raise DerError("content runs past the end of its container")
    return Element(tag, data[pos:end], data[offset:end]), end


def read_single(data: bytes) -> Element:
    element, end = read_element(data, 0)
    if end != len(data):
        raise DerError("trailing bytes after the DER structure")
    return element


def read_all(data: bytes) -> list[Element]:
    out: list[Element] = []
    offset = 0
    while offset < len(data):
        element, offset = read_element(data, offset)
        out.append(element)
    return out


def expect(element: Element, tag: int, what: str) -> Element:
    if element.tag != tag:
        raise DerError(f"{what}: expected tag 0x{tag:02x}, found 0x{element.tag:02x}")
    return element


def decode_oid(element: Element) -> str:
    expect(element, TAG_OID, "object identifier")
    raw = element.content
    if not raw:
        raise DerError("empty OID")
    arcs: list[int] = []
    value = 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if raw[-1] & 0x80:
        raise DerError("truncated OID")
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


def decode_integer(element: Element) -> int:
    expect(element, TAG_INTEGER, "integer")
    if not element.content:
        raise DerError("empty INTEGER")
    return int.from_bytes(element.content, "big", signed=True)


def decode_bit_string(element: Element) -> bytes:
    expect(element, TAG_BIT_STRING, "bit string")
    if not element.content or element.content[0] != 0:
        raise DerError("bit strings with unused bits are not supported here")
    return element.content[1:]


def decode_time(element: Element) -> datetime:
    text = element.content.decode("ascii", errors="strict")
    if element.tag == TAG_UTC_TIME:
        if len(text) != 13 or not text.endswith("Z"):
            raise DerError("UTCTime must be YYMMDDHHMMSSZ")
        year = int(text[0:2])
        year += 2000 if year < 50 else 1900
        rest = text[2:12]
    elif element.tag == TAG_GENERALIZED_TIME:
        if len(text) != 15 or not text.endswith("Z"):
            raise DerError("GeneralizedTime must be YYYYMMDDHHMMSSZ")
        year = int(text[0:4])
        rest = text[4:14]
    else:
        raise DerError(f"tag 0x{element.tag:02x} is not a time")
    if not rest.isdigit():
        raise DerError("time has non-digit characters")
    return datetime(
        year,
        int(rest[0:2]),
        int(rest[2:4]),
        int(rest[4:6]),
        int(rest[6:8]),
        int(rest[8:10]),
        tzinfo=UTC,
    )


def encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def encode_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(content)) + content
