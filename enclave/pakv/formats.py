"""Wire formats: the coordinators' public-key list and EncryptionKey JSON, and ours.

- Public keys (``GET /.well-known/protected-auction/v1/public-keys``):
  ``{"keys":[{"id":"<16 hex>","key":"<standard base64 of the raw 32-byte X25519 key>"}]}``.
- EncryptionKey (the coordinators' ``encryption_key.proto`` in proto3 JSON): ``name`` =
  ``encryptionKeys/<id>``, ``encryptionKeyType``, ``publicKeysetHandle`` (a Tink JSON
  keyset holding the HpkePublicKey), ``publicKeyMaterial`` (base64 raw key),
  ``creationTime``/``activationTime``/``expirationTime`` as decimal strings of epoch
  milliseconds (proto3 JSON writes int64 as strings), and ``keyData`` entries with
  ``publicKeySignature``, ``keyEncryptionKeyUri`` and ``keyMaterial``.
- The signed public-key document (ours, not the coordinators'): the exact body bytes of the
  public-key answer, the key set, a timestamp, and an Ed25519 signature by the KMS identity.

Parsing (``*.from_json``) is strict: unknown fields and wrong types are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from enclave.pakv.keyids import check_key_id

# RFC 9180 identifiers of the suite the K/V service uses.
KEM_X25519_HKDF_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_256_GCM = 0x0002
X25519_KEY_BYTES = 32

PUBLIC_KEYS_PATH = "/.well-known/protected-auction/v1/public-keys"
PUBLIC_KEYS_ALIAS_PATH = "/v1alpha/publicKeys"
SIGNED_PUBLIC_KEYS_PATH = "/.well-known/protected-auction/v1/public-keys.signed"
RECENT_KEYS_PATH = "/v1alpha/encryptionKeys:recent"
KEY_BY_ID_PREFIX = "/v1alpha/encryptionKeys/"
CHALLENGE_PATH = "/v1alpha/attestation:challenge"
SESSION_PATH = "/v1alpha/attestation:session"

MAX_PUBLIC_KEYS_BODY = 2048
MAX_CACHE_SECONDS = 604_800  # 7 days: the most a public-key answer may be cached
SERVER_KEY_WINDOW_SECONDS = 45 * 86_400  # how far back K/V servers fetch (maxAgeSeconds)

SIGNED_FORMAT = "enclave-kms/pakv-public-keys/v1"
SIGNATURE_LABEL = b"enclave-kms/pakv-public-keys-signature/v1"

EncryptionKeyType = Literal["SINGLE_PARTY_HYBRID_KEY", "MULTI_PARTY_HYBRID_EVEN_KEYSPLIT"]
SINGLE_PARTY: EncryptionKeyType = "SINGLE_PARTY_HYBRID_KEY"
MULTI_PARTY: EncryptionKeyType = "MULTI_PARTY_HYBRID_EVEN_KEYSPLIT"

# Tink's HPKE enums (proto/hpke.proto): DHKEM_X25519_HKDF_SHA256 = 1, HKDF_SHA256 = 1,
# AES_256_GCM = 2.
_TINK_HPKE_PUBLIC_KEY_URL = "type.googleapis.com/google.crypto.tink.HpkePublicKey"
_TINK_KEM_X25519, _TINK_KDF_SHA256, _TINK_AEAD_AES256GCM = 1, 1, 2


class FormatError(ValueError):
    """A document does not have the expected shape (the remote side is at fault)."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, name: str) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"{name} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{name} is not standard base64") from None


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode()


def _object(value: object, name: str, fields: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"{name} must be a JSON object")
    unknown = set(value) - fields
    if unknown:
        raise FormatError(f"{name} has unknown field(s) {sorted(unknown)}")
    missing = required - set(value)
    if missing:
        raise FormatError(f"{name} lacks field(s) {sorted(missing)}")
    return value


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{name} must be a string")
    return value


def _millis(value: object, name: str) -> int:
    if not isinstance(value, str) or not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise FormatError(f"{name} must be a decimal string of milliseconds")
    return int(value)


def _x25519(data: bytes, name: str) -> bytes:
    if len(data) != X25519_KEY_BYTES:
        raise FormatError(f"{name} must be a 32-byte X25519 public key")
    return data


def _parse_json(body: bytes | str, limit: int) -> Any:
    if len(body) > limit:
        raise FormatError(f"document is larger than {limit} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FormatError("document is not JSON") from None


# -- public keys ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PublicKeyEntry:
    id: str
    key: bytes

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "key": b64(self.key)}

    @classmethod
    def from_json(cls, value: object) -> PublicKeyEntry:
        doc = _object(value, "a public key", {"id", "key"}, {"id", "key"})
        try:
            key_id = check_key_id(_str(doc["id"], "id"))
        except ValueError as exc:
            raise FormatError(str(exc)) from None
        return cls(key_id, _x25519(unb64(doc["key"], "key"), "key"))


@dataclass(frozen=True)
class PublicKeySet:
    keys: tuple[PublicKeyEntry, ...]

    def to_body(self) -> bytes:
        return canonical_json({"keys": [k.to_json() for k in self.keys]})

    @classmethod
    def from_body(cls, body: bytes) -> PublicKeySet:
        doc = _object(_parse_json(body, MAX_PUBLIC_KEYS_BODY), "the key list", {"keys"}, {"keys"})
        if not isinstance(doc["keys"], list):
            raise FormatError("keys must be a list")
        return cls(tuple(PublicKeyEntry.from_json(k) for k in doc["keys"]))


# -- the Tink public keyset handle ----------------------------------------------------------
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    tag = _varint((number << 3) | wire)
    if wire == 0:
        assert isinstance(payload, int)
        return tag + _varint(payload)
    assert isinstance(payload, bytes)
    return tag + _varint(len(payload)) + payload


def tink_public_keyset(public_key: bytes, key_id: str) -> str:
    """A Tink JSON keyset with one HpkePublicKey (version 0, X25519/SHA-256/AES-256-GCM)."""
    params = (
        _field(1, 0, _TINK_KEM_X25519)
        + _field(2, 0, _TINK_KDF_SHA256)
        + _field(3, 0, _TINK_AEAD_AES256GCM)
    )
    key_proto = _field(2, 2, params) + _field(3, 2, _x25519(public_key, "public key"))
    tink_id = int(key_id[:8], 16)  # a uint32 id for the keyset; Tink only needs uniqueness
    keyset = {
        "primaryKeyId": tink_id,
        "key": [
            {
                "keyData": {
                    "typeUrl": _TINK_HPKE_PUBLIC_KEY_URL,
                    "value": b64(key_proto),
                    "keyMaterialType": "ASYMMETRIC_PUBLIC",
                },
                "status": "ENABLED",
                "keyId": tink_id,
                "outputPrefixType": "RAW",
            }
        ],
    }
    return json.dumps(keyset, separators=(",", ":"))


# -- EncryptionKey -------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyData:
    public_key_signature: str
    key_encryption_key_uri: str
    key_material: str

    def to_json(self) -> dict[str, str]:
        return {
            "publicKeySignature": self.public_key_signature,
            "keyEncryptionKeyUri": self.key_encryption_key_uri,
            "keyMaterial": self.key_material,
        }

    @classmethod
    def from_json(cls, value: object) -> KeyData:
        names = {"publicKeySignature", "keyEncryptionKeyUri", "keyMaterial"}
        doc = _object(value, "keyData", names, names)
        return cls(
            _str(doc["publicKeySignature"], "publicKeySignature"),
            _str(doc["keyEncryptionKeyUri"], "keyEncryptionKeyUri"),
            _str(doc["keyMaterial"], "keyMaterial"),
        )


_EK_FIELDS = {
    "name",
    "encryptionKeyType",
    "publicKeysetHandle",
    "publicKeyMaterial",
    "creationTime",
    "activationTime",
    "expirationTime",
    "keyData",
}


@dataclass(frozen=True)
class EncryptionKey:
    key_id: str
    key_type: EncryptionKeyType
    public_keyset_handle: str
    public_key: bytes
    creation_ms: int
    activation_ms: int
    expiration_ms: int
    key_data: tuple[KeyData, ...]

    @property
    def name(self) -> str:
        return f"encryptionKeys/{self.key_id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "encryptionKeyType": self.key_type,
            "publicKeysetHandle": self.public_keyset_handle,
            "publicKeyMaterial": b64(self.public_key),
            "creationTime": str(self.creation_ms),
            "activationTime": str(self.activation_ms),
            "expirationTime": str(self.expiration_ms),
            "keyData": [d.to_json() for d in self.key_data],
        }

    @classmethod
    def from_json(cls, value: object) -> EncryptionKey:
        doc = _object(value, "an EncryptionKey", _EK_FIELDS, _EK_FIELDS)
        name = _str(doc["name"], "name")
        if not name.startswith("encryptionKeys/"):
            raise FormatError("name must be encryptionKeys/<id>")
        try:
            key_id = check_key_id(name.removeprefix("encryptionKeys/"))
        except ValueError as exc:
            raise FormatError(str(exc)) from None
        key_type = doc["encryptionKeyType"]
        if key_type not in (SINGLE_PARTY, MULTI_PARTY):
            raise FormatError("unknown encryptionKeyType")
        if not isinstance(doc["keyData"], list) or not doc["keyData"]:
            raise FormatError("keyData must be a non-empty list")
        return cls(
            key_id=key_id,
            key_type=key_type,
            public_keyset_handle=_str(doc["publicKeysetHandle"], "publicKeysetHandle"),
            public_key=_x25519(unb64(doc["publicKeyMaterial"], "publicKeyMaterial"), "key"),
            creation_ms=_millis(doc["creationTime"], "creationTime"),
            activation_ms=_millis(doc["activationTime"], "activationTime"),
            expiration_ms=_millis(doc["expirationTime"], "expirationTime"),
            key_data=tuple(KeyData.from_json(d) for d in doc["keyData"]),
        )


def encryption_keys_body(keys: Sequence[EncryptionKey]) -> bytes:
    return canonical_json({"keys": [k.to_json() for k in keys]})


def parse_encryption_keys(body: bytes, limit: int = 1 << 20) -> tuple[EncryptionKey, ...]:
    doc = _object(_parse_json(body, limit), "the key list", {"keys"}, {"keys"})
    if not isinstance(doc["keys"], list):
        raise FormatError("keys must be a list")
    return tuple(EncryptionKey.from_json(k) for k in doc["keys"])


# -- key-encryption-key URIs and signatures ------------------------------------------------
def thumbprint(public_key: bytes) -> str:
    """base64url (no padding) of SHA-256 over the raw X25519 public key."""
    digest = hashlib.sha256(public_key).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def kek_uri(kms_id: str, recipient_public_key: bytes) -> str:
    """Names the wrapping: HPKE (RFC 9180, X25519/HKDF-SHA256/AES-256-GCM) to that key."""
    return f"enclave-kms://{kms_id}/hpke/{thumbprint(recipient_public_key)}"


def public_key_signature_message(key_id: str, public_key: bytes) -> bytes:
    return b"enclave-kms/pakv-public-key/v1\x00" + key_id.encode() + b"\x00" + public_key


def signed_document_message(timestamp_ms: int, body: bytes) -> bytes:
    return SIGNATURE_LABEL + b"\x00" + str(timestamp_ms).encode() + b"\x00" + body


@dataclass(frozen=True)
class SignedPublicKeys:
    """Our signed statement of the public-key set: ``body`` is the exact answer bytes."""

    kms_id: str
    timestamp_ms: int
    body: bytes
    keys: PublicKeySet
    signature: bytes
    signing_key: bytes
    certificate: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": SIGNED_FORMAT,
            "kmsId": self.kms_id,
            "timestamp": str(self.timestamp_ms),
            "body": b64(self.body),
            "keys": [k.to_json() for k in self.keys.keys],
            "algorithm": "Ed25519",
            "signingKey": b64(self.signing_key),
            "signature": b64(self.signature),
        }
        if self.certificate is not None:
            out["certificate"] = self.certificate
        return out

    @classmethod
    def from_body(cls, body: bytes) -> SignedPublicKeys:
        names = {
            "format",
            "kmsId",
            "timestamp",
            "body",
            "keys",
            "algorithm",
            "signingKey",
            "signature",
            "certificate",
        }
        doc = _object(
            _parse_json(body, 64 * 1024), "the signed key list", names, names - {"certificate"}
        )
        if doc["format"] != SIGNED_FORMAT or doc["algorithm"] != "Ed25519":
            raise FormatError("unknown signed key list format or algorithm")
        inner = unb64(doc["body"], "body")
        keys = PublicKeySet.from_body(inner)
        listed = doc["keys"]
        if (
            not isinstance(listed, list)
            or tuple(PublicKeyEntry.from_json(k) for k in listed) != keys.keys
        ):
            raise FormatError("keys do not match the signed body")
        certificate = doc.get("certificate")
        return cls(
            kms_id=_str(doc["kmsId"], "kmsId"),
            timestamp_ms=_millis(doc["timestamp"], "timestamp"),
            body=inner,
            keys=keys,
            signature=unb64(doc["signature"], "signature"),
            signing_key=unb64(doc["signingKey"], "signingKey"),
            certificate=_str(certificate, "certificate") if certificate is not None else None,
        )


def as_mapping(value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise FormatError("expected a JSON object")
    return value
