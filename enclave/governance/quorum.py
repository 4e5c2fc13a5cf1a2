"""The quorum: N admins (Ed25519 public keys) and the threshold M, from the attested config.

The launch configuration (the canonical JSON whose hash SNP HOST_DATA, TDX MRCONFIGID or
Nitro PCR16 attests, see ``enclave.attestation.launch``) carries the quorum::

    {"version": 1, "platform": "sev-snp",
     "quorum": {"threshold": 2,
                "admins": [{"name": "alice", "public_key": "<Ed25519 key>"}, ...]}}

An admin entry is an object ``{"name", "public_key"}`` (``"key"`` is accepted for
``"public_key"``, ``"id"`` for ``"name"``) or just the public key as a string; a key is the
raw 32-byte Ed25519 public key as hex (64 digits) or base64 / base64url (padding optional).
A nameless admin is called ``admin-<first 8 hex digits of its key id>``.

This module must never take the quorum from anything but the attested configuration (or a
quorum-approved change of it): a quorum read from the untrusted host would let the host
approve its own operations.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave.governance.errors import GovernanceConfigError

ED25519_PUBLIC_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
MIN_THRESHOLD = 1
MAX_ADMINS = 64
MAX_LAUNCH_CONFIG_BYTES = 1024 * 1024
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_KEY_ID_LABEL = b"enclave-kms/governance-admin-key-id/v1\x00"
_CONFIG_DIGEST_LABEL = b"enclave-kms/governance-quorum/v1\x00"


def admin_key_id(public_key: bytes) -> str:
    """A short stable id for an admin key (hex of 16 bytes of a domain-separated SHA-256)."""
    return hashlib.sha256(_KEY_ID_LABEL + public_key).hexdigest()[:32]


def decode_public_key(text: object) -> bytes:
    """A 32-byte Ed25519 public key from hex or (url-safe) base64 text, or raw bytes."""
    raw: bytes | None = None
    if isinstance(text, bytes):
        raw = text
    elif isinstance(text, str):
        candidate = text.strip()
        if re.fullmatch(r"[0-9a-fA-F]{64}", candidate):
            raw = bytes.fromhex(candidate)
        else:
            padded = candidate + "=" * (-len(candidate) % 4)
            try:
                raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                raw = None
    if raw is None or len(raw) != ED25519_PUBLIC_KEY_BYTES:
        raise GovernanceConfigError("an admin public key is a 32-byte Ed25519 key as hex or base64")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise GovernanceConfigError("an admin public key is not a valid Ed25519 key") from None
    return raw


@dataclass(frozen=True)
class AdminKey:
    """One admin of the quorum: a name and an Ed25519 public key (32 raw bytes)."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise GovernanceConfigError("an admin name is 1..64 of [A-Za-z0-9._@-]")
        if (
            not isinstance(self.public_key, bytes)
            or len(self.public_key) != ED25519_PUBLIC_KEY_BYTES
        ):
            raise GovernanceConfigError("an admin public key is 32 bytes (Ed25519)")

    @property
    def key_id(self) -> str:
        return admin_key_id(self.public_key)

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this admin's Ed25519 signature over ``message``."""
        if not isinstance(signature, bytes) or len(signature) != ED25519_SIGNATURE_BYTES:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "public_key": self.public_key.hex()}


@dataclass(frozen=True)
class QuorumConfig:
    """M-of-N: ``threshold`` distinct ``admins`` must approve a privileged operation."""

    threshold: int
    admins: tuple[AdminKey, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.admins, tuple) or not all(
            isinstance(a, AdminKey) for a in self.admins
        ):
            raise GovernanceConfigError("admins is a tuple of AdminKey")
        count = len(self.admins)
        if count == 0:
            raise GovernanceConfigError(
                "the launch configuration names no admins: no privileged operation could "
                "ever be approved"
            )
        if count > MAX_ADMINS:
            raise GovernanceConfigError(f"at most {MAX_ADMINS} admins")
        if type(self.threshold) is not int or not MIN_THRESHOLD <= self.threshold <= count:
            raise GovernanceConfigError(
                f"the quorum threshold must be {MIN_THRESHOLD}..{count} (the admin count); "
                f"got {self.threshold!r}"
            )
        if len({a.name for a in self.admins}) != count:
            raise GovernanceConfigError("admin names must be distinct")
        if len({a.public_key for a in self.admins}) != count:
            raise GovernanceConfigError("admin public keys must be distinct")

    @classmethod
    def from_launch_config(cls, config: Mapping[str, Any] | bytes | str) -> QuorumConfig:
        """The quorum of a launch configuration (the mapping, or its JSON bytes/text).

        The mapping is the whole launch configuration (with a ``quorum`` object); a mapping
        that is itself the quorum object (``threshold`` and ``admins`` at the top) is
        accepted too.
        """
        mapping = _load_config(config)
        quorum = mapping.get("quorum", mapping)
        if not isinstance(quorum, Mapping):
            raise GovernanceConfigError("the launch configuration's quorum is not an object")
        unknown = sorted(set(quorum) - {"threshold", "admins"})
        if quorum is not mapping and unknown:
            raise GovernanceConfigError(f"unknown quorum field(s): {', '.join(unknown)}")
        if "threshold" not in quorum or "admins" not in quorum:
            raise GovernanceConfigError("the quorum needs a threshold and a list of admins")
        admins_value = quorum["admins"]
        if not isinstance(admins_value, list | tuple):
            raise GovernanceConfigError("quorum.admins is a list")
        admins = tuple(_admin(entry) for entry in admins_value)
        return cls(threshold=quorum["threshold"], admins=admins)

    def admin_for(self, public_key: bytes) -> AdminKey | None:
        """The admin holding ``public_key``, or None."""
        for admin in self.admins:
            if admin.public_key == public_key:
                return admin
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "admins": [a.to_dict() for a in self.admins]}

    def config_digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON of ``to_dict()``, domain-separated: names
        this exact quorum (a ``quorum.change`` proposal says which quorum it replaces)."""
        from enclave.governance.proposals import canonical_json

        return hashlib.sha256(_CONFIG_DIGEST_LABEL + canonical_json(self.to_dict())).hexdigest()


def _load_config(config: Mapping[str, Any] | bytes | str) -> Mapping[str, Any]:
    if isinstance(config, bytes | str):
        if len(config) > MAX_LAUNCH_CONFIG_BYTES:
            raise GovernanceConfigError("the launch configuration is too large")
        try:
            loaded = json.loads(config)
        except (ValueError, UnicodeDecodeError):
            raise GovernanceConfigError("the launch configuration is not JSON") from None
        config = loaded
    if not isinstance(config, Mapping):
        raise GovernanceConfigError("the launch configuration is a JSON object")
    return config


def _admin(entry: object) -> AdminKey:
    if isinstance(entry, str | bytes):
        key = decode_public_key(entry)
        return AdminKey(f"admin-{admin_key_id(key)[:8]}", key)
    if not isinstance(entry, Mapping):
        raise GovernanceConfigError("an admin is an object {name, public_key} or a key string")
    unknown = sorted(set(entry) - {"name", "id", "public_key", "key"})
    if unknown:
        raise GovernanceConfigError(f"unknown admin field(s): {', '.join(unknown)}")
    raw_key = entry.get("public_key", entry.get("key"))
    if raw_key is None:
        raise GovernanceConfigError("an admin needs a public_key")
    key = decode_public_key(raw_key)
    name = entry.get("name", entry.get("id"))
    if name is None:
        name = f"admin-{admin_key_id(key)[:8]}"
    if not isinstance(name, str):
        raise GovernanceConfigError("an admin name is a string")
    return AdminKey(name, key)
