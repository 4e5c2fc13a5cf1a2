"""The ciphertext format: it names its key and version, and binds the encryption context.

Layout (all lengths fixed or prefixed)::

    b"EKMS" | format 0x01 | len(key_id) u8 | key_id ASCII | version u32 BE | nonce 12 | ct||tag

The AEAD is AES-256-GCM under the key version's material; its associated data is the header
(everything before the nonce) followed by the canonical encoding of the encryption context,
so a ciphertext moved to another key, version or context fails to decrypt. Every decryption
failure is the same opaque ``InvalidCiphertext`` (no oracle on which check failed).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"EKMS"
FORMAT = 1
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_KEY_ID = 64
MAX_CONTEXT_BYTES = 8192
_VERSION = struct.Struct(">I")


class InvalidCiphertext(Exception):
    """The ciphertext is malformed, or does not decrypt under this key and context."""

    type = "invalid-ciphertext"

    def __init__(self) -> None:
        super().__init__("ciphertext is invalid for this key and encryption context")


class InvalidContext(ValueError):
    type = "invalid-context"


@dataclass(frozen=True)
class CiphertextHeader:
    key_id: str
    version: int

    def encode(self) -> bytes:
        raw_id = self.key_id.encode("ascii")
        return MAGIC + bytes([FORMAT, len(raw_id)]) + raw_id + _VERSION.pack(self.version)


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    if not context:
        return b""
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidContext("encryption context keys and values must be strings")
    encoded = json.dumps(dict(sorted(context.items())), separators=(",", ":")).encode()
    if len(encoded) > MAX_CONTEXT_BYTES:
        raise InvalidContext("encryption context is too large")
    return encoded


def parse_header(ciphertext: bytes) -> tuple[CiphertextHeader, int]:
    """The header and the offset of the nonce; InvalidCiphertext when malformed."""
    if len(ciphertext) < len(MAGIC) + 2 or not ciphertext.startswith(MAGIC):
        raise InvalidCiphertext
    if ciphertext[4] != FORMAT:
        raise InvalidCiphertext
    id_length = ciphertext[5]
    end = 6 + id_length
    if (
        id_length == 0
        or id_length > MAX_KEY_ID
        or len(ciphertext) < end + 4 + NONCE_SIZE + TAG_SIZE
    ):
        raise InvalidCiphertext
    try:
        key_id = ciphertext[6:end].decode("ascii")
    except UnicodeDecodeError:
        raise InvalidCiphertext from None
    (version,) = _VERSION.unpack_from(ciphertext, end)
    return CiphertextHeader(key_id, version), end + 4


def seal(
    material: bytes,
    header: CiphertextHeader,
    plaintext: bytes,
    context: Mapping[str, str] | None = None,
) -> bytes:
    head = header.encode()
    nonce = os.urandom(NONCE_SIZE)
    body = AESGCM(material).encrypt(nonce, plaintext, head + canonical_context(context))
    return head + nonce + body


def open_(material: bytes, ciphertext: bytes, context: Mapping[str, str] | None = None) -> bytes:
    header, offset = parse_header(ciphertext)
    head = ciphertext[:offset]
    nonce = ciphertext[offset : offset + NONCE_SIZE]
    try:
        aad = head + canonical_context(context)
        return AESGCM(material).decrypt(nonce, ciphertext[offset + NONCE_SIZE :], aad)
    except (InvalidTag, InvalidContext, ValueError):
        raise InvalidCiphertext from None
    finally:
        del header
