"""Decoding of evidence given as raw binary, hex or base64 text.

Hex may be upper or lower case, may carry a ``0x`` prefix and may be wrapped over lines;
base64 may be standard or URL-safe, padded or not, and wrapped. Raw binary is returned as is.
"""

from __future__ import annotations

import base64
import binascii
import re

from verifier.errors import MalformedEvidence

MAX_EVIDENCE_BYTES = 1 << 20
_HEX_TEXT = re.compile(rb"\A(?:0[xX])?[0-9a-fA-F\s]+\Z")
_BASE64_TEXT = re.compile(rb"\A[A-Za-z0-9+/=_\-\s]+\Z")


def decode_evidence(data: bytes) -> bytes:
    """Return the evidence bytes carried by ``data`` (raw, hex or base64)."""
    if len(data) > MAX_EVIDENCE_BYTES * 2:
        raise MalformedEvidence(f"evidence is larger than {MAX_EVIDENCE_BYTES * 2} bytes")
    if not data:
        raise MalformedEvidence("evidence is empty")
    stripped = data.strip()
    if _looks_like_text(stripped):
        decoded = _decode_hex(stripped)
        if decoded is None:
            decoded = _decode_base64(stripped)
        if decoded is not None and decoded:
            return decoded
    return data


def _looks_like_text(data: bytes) -> bool:
    return bool(data) and (
        _HEX_TEXT.match(data) is not None or _BASE64_TEXT.match(data) is not None
    )


def _decode_hex(text: bytes) -> bytes | None:
    if _HEX_TEXT.match(text) is None:
        return None
    if text[:2] in (b"0x", b"0X"):
        text = text[2:]
    compact = re.sub(rb"\s+", b"", text)
    if len(compact) % 2:
        return None
    try:
        return binascii.unhexlify(compact)
    except binascii.Error:
        return None


def _decode_base64(text: bytes) -> bytes | None:
    compact = re.sub(rb"\s+", b"", text)
    compact = compact.rstrip(b"=")
    padded = compact + b"=" * (-len(compact) % 4)
    try:
        if b"-" in padded or b"_" in padded:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
