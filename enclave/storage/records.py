"""Record protection: per-record AEAD, the keyed multiset digest of the state, the MAC'd head.

Every record value is AES-256-GCM-encrypted under a key derived from the caller's storage
key, with ``(kind, id, version)`` as associated data, so a ciphertext moved to another
record or another version fails to decrypt.

The state digest is an incrementally maintained multiset hash (Clarke et al., "Incremental
Multiset Hash Functions", MSet-Add-Hash): the sum modulo 2**256 of
HMAC-SHA256(k_digest, element) over every record's element ``(kind, id, version,
SHA-256(ciphertext))``. A put adds the new element and subtracts the old one, so a commit
costs O(records written) while the open-time check recomputes it over all rows. The hash is
keyed: without the key nobody can look for a set of other elements with the same sum
(the generalised birthday attack that an unkeyed additive hash would allow).

The head ``{counter, digest, count}`` is MAC'd (HMAC-SHA256 under its own derived key):
the stored state is exactly the state that head describes, and the head is one that this
storage key wrote at that counter value.

Random 96-bit nonces: keep under 2**32 record writes per storage key (rotate the key by
re-encrypting into a new store well before that).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field

import cbor2
from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave.storage.errors import InvalidRecord, StateTampered

STORAGE_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_KIND_CHARS = 32
MAX_ID_BYTES = 256
MAX_VALUE_BYTES = 1024 * 1024
DIGEST_MODULUS = 2**256
HEAD_FORMAT_VERSION = 1
MAC_BYTES = 32

KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_HKDF_SALT = b"enclave-kms/storage/v1"
_RECORD_AAD_LABEL = "enclave-kms/record/v1"
_ELEMENT_LABEL = "enclave-kms/record-element/v1"
_HEAD_MAC_LABEL = b"enclave-kms/store-head/v1"


def check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not KIND_RE.fullmatch(kind):
        raise InvalidRecord("a record kind matches [a-z][a-z0-9_]{0,31}")
    return kind


def check_id(record_id: str) -> str:
    if not isinstance(record_id, str) or not record_id:
        raise InvalidRecord("a record id is a non-empty string")
    try:
        encoded = record_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecord("a record id is valid UTF-8 text") from None
    if len(encoded) > MAX_ID_BYTES or "\x00" in record_id:
        raise InvalidRecord(f"a record id is at most {MAX_ID_BYTES} UTF-8 bytes, without NUL")
    return record_id


def check_value(value: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) > MAX_VALUE_BYTES:
        raise InvalidRecord(f"a record value is bytes of at most {MAX_VALUE_BYTES}")
    return value


@dataclass(frozen=True)
class RecordRef:
    """A record's address and version, without its value."""

    kind: str
    id: str
    version: int


@dataclass(frozen=True)
class Record:
    """A record with its decrypted value (the value never appears in a repr)."""

    kind: str
    id: str
    version: int
    value: bytes = field(repr=False)

    @property
    def ref(self) -> RecordRef:
        return RecordRef(self.kind, self.id, self.version)


@dataclass(frozen=True)
class Head:
    """The authenticated summary of the whole state at one counter value."""

    counter: int
    digest: int
    count: int

    def body(self) -> bytes:
        return cbor2.dumps(
            {
                "v": HEAD_FORMAT_VERSION,
                "counter": self.counter,
                "digest": self.digest.to_bytes(32, "big"),
                "count": self.count,
            },
            canonical=True,
        )

    @classmethod
    def from_body(cls, body: bytes) -> Head:
        try:
            value = cbor2.loads(body)
            if not isinstance(value, dict) or set(value) != {"v", "counter", "digest", "count"}:
                raise ValueError
            counter, digest, count = value["counter"], value["digest"], value["count"]
            if value["v"] != HEAD_FORMAT_VERSION or type(counter) is not int:
                raise ValueError
            if type(count) is not int or not isinstance(digest, bytes) or len(digest) != 32:
                raise ValueError
        except Exception:
            raise StateTampered("the head row is malformed") from None
        return cls(counter, int.from_bytes(digest, "big"), count)


class StorageKey:
    """The caller's 32-byte storage key (from sealing) and the subkeys derived from it."""

    __slots__ = ("_aead", "_element_key", "_head_key")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != STORAGE_KEY_BYTES:
            raise ValueError(f"a storage key is {STORAGE_KEY_BYTES} bytes")
        self._aead = AESGCM(_subkey(key, b"record-aead"))
        self._element_key = _subkey(key, b"state-digest")
        self._head_key = _subkey(key, b"head-mac")

    def __repr__(self) -> str:
        return "StorageKey(<secret>)"

    def encrypt_record(self, kind: str, record_id: str, version: int, value: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        aad = _record_aad(kind, record_id, version)
        return nonce + self._aead.encrypt(nonce, value, aad)

    def decrypt_record(self, kind: str, record_id: str, version: int, blob: bytes) -> bytes:
        result = None
        if len(blob) >= NONCE_BYTES + TAG_BYTES:
            try:
                aad = _record_aad(kind, record_id, version)
                result = self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
            except Exception:
                result = None
        if result is None:
            raise StateTampered(
                f"record ({kind!r}, {record_id!r}) version {version} does not decrypt: "
                "altered, or moved from another record or version"
            )
        return result

    def element_hash(self, kind: str, record_id: str, version: int, ciphertext: bytes) -> int:
        element = cbor2.dumps(
            [_ELEMENT_LABEL, kind, record_id, version, hashlib.sha256(ciphertext).digest()]
        )
        return int.from_bytes(hmac.new(self._element_key, element, hashlib.sha256).digest(), "big")

    def head_mac(self, head: Head) -> bytes:
        return hmac.new(self._head_key, _HEAD_MAC_LABEL + head.body(), hashlib.sha256).digest()

    def verify_head(self, body: bytes, mac: bytes) -> Head:
        expected = hmac.new(self._head_key, _HEAD_MAC_LABEL + body, hashlib.sha256).digest()
        if not isinstance(mac, bytes) or not constant_time.bytes_eq(expected, mac):
            raise StateTampered(
                "the head's MAC does not verify: the head was altered, or written under "
                "another storage key"
            )
        return Head.from_body(body)


def _subkey(key: bytes, purpose: bytes) -> bytes:
    return HKDF(hashes.SHA256(), length=32, salt=_HKDF_SALT, info=purpose).derive(key)


def _record_aad(kind: str, record_id: str, version: int) -> bytes:
    return cbor2.dumps([_RECORD_AAD_LABEL, kind, record_id, version])
