"""The versioned sealed-blob format (canonical CBOR) and the launch binding it carries.

A sealed blob is one canonical CBOR map (RFC 8949 section 4.2.3 ordering, as cbor2's
``canonical=True`` writes it)::

    {"version": 1, "algorithm": "AES-256-GCM",
     "binding": {"platform": tstr, "measurement": bstr .size 48, "config_hash": bstr .size 32},
     "counter": uint, "nonce": bstr .size 12, "ciphertext": bstr}

The canonical encoding of the same map without ``ciphertext`` (the header) is the AEAD's
associated data, so no header field can change without the tag failing. Parsing is strict:
exact key set, exact types and sizes, no CBOR tags, and the bytes must be the canonical
encoding of what they decode to (no second encoding of the same blob exists).

This module only parses and encodes; it never holds a key and never decrypts.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import cbor2

from enclave.attestation.launch import LaunchIdentity

FORMAT_VERSION = 1
ALGORITHM = "AES-256-GCM"
NONCE_BYTES = 12
TAG_BYTES = 16
MEASUREMENT_BYTES = 48
CONFIG_HASH_BYTES = 32
MAX_SEALED_BYTES = 16 * 1024 * 1024
MAX_COUNTER = 2**64 - 1

_PLATFORM_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_HEADER_KEYS = frozenset({"version", "algorithm", "binding", "counter", "nonce"})
_BLOB_KEYS = _HEADER_KEYS | {"ciphertext"}
_BINDING_KEYS = frozenset({"platform", "measurement", "config_hash"})


class MalformedBlob(ValueError):
    """The bytes are not a sealed blob of this version. Internal: ``Sealer`` turns every
    failure into the opaque ``UnsealError``."""


@dataclass(frozen=True)
class Binding:
    """What a sealed blob is bound to: the platform, the launch measurement and the
    SHA-256 of the launch configuration (admin keys, quorum threshold, policy)."""

    platform: str
    measurement: bytes
    config_hash: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.platform, str) or not _PLATFORM_RE.fullmatch(self.platform):
            raise ValueError("platform must match [a-z0-9][a-z0-9-]{0,31}")
        if not isinstance(self.measurement, bytes) or len(self.measurement) != MEASUREMENT_BYTES:
            raise ValueError(f"measurement must be {MEASUREMENT_BYTES} bytes")
        if not isinstance(self.config_hash, bytes) or len(self.config_hash) != CONFIG_HASH_BYTES:
            raise ValueError(f"config_hash must be {CONFIG_HASH_BYTES} bytes")

    @classmethod
    def for_launch(cls, platform: str, launch: LaunchIdentity) -> Binding:
        return cls(platform, launch.measurement, hashlib.sha256(launch.config).digest())

    def to_cbor_value(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "measurement": self.measurement,
            "config_hash": self.config_hash,
        }

    def encode(self) -> bytes:
        """Canonical CBOR of the binding: the KDF context every provider mixes in."""
        return cbor2.dumps(self.to_cbor_value(), canonical=True)

    @classmethod
    def from_cbor_value(cls, value: object) -> Binding:
        if not isinstance(value, dict) or set(value) != _BINDING_KEYS:
            raise MalformedBlob("binding")
        try:
            return cls(value["platform"], value["measurement"], value["config_hash"])
        except ValueError:
            raise MalformedBlob("binding") from None


@dataclass(frozen=True)
class SealedBlob:
    """A parsed sealed blob. Holds ciphertext only, never plaintext or keys."""

    binding: Binding
    counter: int
    nonce: bytes
    ciphertext: bytes
    version: int = FORMAT_VERSION
    algorithm: str = ALGORITHM

    def __post_init__(self) -> None:
        if self.version != FORMAT_VERSION or self.algorithm != ALGORITHM:
            raise MalformedBlob("version or algorithm")
        if type(self.counter) is not int or not 0 <= self.counter <= MAX_COUNTER:
            raise MalformedBlob("counter")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_BYTES:
            raise MalformedBlob("nonce")
        if not isinstance(self.ciphertext, bytes) or len(self.ciphertext) < TAG_BYTES:
            raise MalformedBlob("ciphertext")

    def _header_value(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "algorithm": self.algorithm,
            "binding": self.binding.to_cbor_value(),
            "counter": self.counter,
            "nonce": self.nonce,
        }

    def header_bytes(self) -> bytes:
        """The canonical encoding of everything but the ciphertext: the AEAD's AAD."""
        return cbor2.dumps(self._header_value(), canonical=True)

    def to_bytes(self) -> bytes:
        return cbor2.dumps({**self._header_value(), "ciphertext": self.ciphertext}, canonical=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedBlob:
        if not isinstance(data, bytes) or not 0 < len(data) <= MAX_SEALED_BYTES:
            raise MalformedBlob("size")
        try:
            value = cbor2.loads(data, tag_hook=_reject_tag)
        except Exception:  # cbor2 raises several types on garbage; all mean "not a blob"
            raise MalformedBlob("cbor") from None
        if not isinstance(value, dict) or set(value) != _BLOB_KEYS:
            raise MalformedBlob("keys")
        if type(value["version"]) is not int or value["version"] != FORMAT_VERSION:
            raise MalformedBlob("version")
        if not isinstance(value["algorithm"], str):
            raise MalformedBlob("algorithm")
        blob = cls(
            binding=Binding.from_cbor_value(value["binding"]),
            counter=value["counter"],
            nonce=value["nonce"],
            ciphertext=value["ciphertext"],
            version=value["version"],
            algorithm=value["algorithm"],
        )
        # One blob, one encoding: a non-canonical re-encoding of a valid blob is refused.
        if blob.to_bytes() != data:
            raise MalformedBlob("not canonical")
        return blob


def _reject_tag(_decoder: object, _tag: object) -> object:
    raise MalformedBlob("tags are not allowed")
