"""The KMS's system identity: its Ed25519 signing key, certificate and ``kms_id``.

The identity is made once, at the first boot (bootstrap step 5, "system identity
establishment"), and kept in the store: the private half wrapped by the initial KEK, the
public half in a self-signed X.509 certificate. ``kms_id`` is derived from the public key
(``kms_`` + the first 16 bytes of SHA-256 over the SubjectPublicKeyInfo DER, in hex), so
anyone holding the certificate can recompute it, and two KMS instances never share one.

The same step makes the audit keys: an Ed25519 key that signs audit checkpoints and an
AES-256 key from which the audit HMAC key is derived (HKDF, so the stored key is used for
nothing else). All three are ordinary keys of the hierarchy (``KeyMetadata``), wrapped by
the KEK; ``IdentityRecord`` names them.

Must never: put a private key, a seed or the HMAC key in a repr, a log or an error.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from enclave.keys.material import Ed25519Signer, SymmetricKey

KMS_ID_PREFIX = "kms_"
KMS_ID_DIGEST_BYTES = 16
CERTIFICATE_YEARS = 10
IDENTITY_RECORD_VERSION = 1
AUDIT_HMAC_INFO = b"enclave-kms/audit-hmac/v1"
_IDENTITY_FIELDS = {
    "version",
    "kms_id",
    "signing_key_id",
    "audit_signing_key_id",
    "audit_hmac_key_id",
    "certificate",
    "created_at",
}


_SIGNING_ONLY = x509.KeyUsage(
    digital_signature=True, content_commitment=True, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False,
    crl_sign=False, encipher_only=False, decipher_only=False,
)  # fmt: skip


class IdentityError(ValueError):
    """A stored identity record is malformed or does not match its keys."""


def kms_id_for(public_key_der: bytes) -> str:
    """``kms_`` + hex(SHA-256(SPKI DER)[:16]): the id every KMS derives from its key."""
    return KMS_ID_PREFIX + hashlib.sha256(public_key_der).digest()[:KMS_ID_DIGEST_BYTES].hex()


def audit_hmac_key(key: SymmetricKey) -> bytes:
    """The audit HMAC key, derived from the stored audit key (never used directly)."""
    hkdf = HKDF(hashes.SHA256(), length=32, salt=None, info=AUDIT_HMAC_INFO)
    return hkdf.derive(key.secret)


def raw_ed25519_public(public_key_der: bytes) -> bytes:
    key = serialization.load_der_public_key(public_key_der)
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise IdentityError("the key is not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def self_signed_certificate(
    signer: Ed25519Signer, kms_id: str, platform: str, now: datetime.datetime
) -> bytes:
    """A self-signed certificate (DER) for the identity key, CN = ``kms_id``."""
    private = ed25519.Ed25519PrivateKey.from_private_bytes(signer.seed)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Enclave KMS"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, platform),
            x509.NameAttribute(NameOID.COMMON_NAME, kms_id),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(kms_id.encode()).digest()[:16], "big") >> 1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * CERTIFICATE_YEARS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_SIGNING_ONLY, critical=True)
        .sign(private, None)
    )
    return certificate.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class IdentityRecord:
    """What the store keeps under ``system/identity``: the ids of the identity's keys and
    the certificate. Public data only."""

    kms_id: str
    signing_key_id: str
    audit_signing_key_id: str
    audit_hmac_key_id: str
    certificate_der: bytes
    created_at: datetime.datetime

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "version": IDENTITY_RECORD_VERSION,
                "kms_id": self.kms_id,
                "signing_key_id": self.signing_key_id,
                "audit_signing_key_id": self.audit_signing_key_id,
                "audit_hmac_key_id": self.audit_hmac_key_id,
                "certificate": base64.b64encode(self.certificate_der).decode(),
                "created_at": self.created_at.isoformat(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> IdentityRecord:
        try:
            document: Any = json.loads(data)
            if not isinstance(document, dict) or set(document) != _IDENTITY_FIELDS:
                raise ValueError("unexpected fields")
            if document["version"] != IDENTITY_RECORD_VERSION:
                raise ValueError("unknown version")
            created = datetime.datetime.fromisoformat(document["created_at"])
            return cls(
                kms_id=str(document["kms_id"]),
                signing_key_id=str(document["signing_key_id"]),
                audit_signing_key_id=str(document["audit_signing_key_id"]),
                audit_hmac_key_id=str(document["audit_hmac_key_id"]),
                certificate_der=base64.b64decode(document["certificate"], validate=True),
                created_at=created,
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise IdentityError(f"the stored system identity is malformed: {exc}") from None


@dataclass(frozen=True)
class SystemIdentity:
    """The running KMS's identity, with its unwrapped signing keys (enclave memory only).

    ``sign`` signs with the service key; ``sign_audit`` is the audit log's checkpoint
    signer. ``document()`` is the public description a handler may serve.
    """

    record: IdentityRecord
    public_key_der: bytes
    audit_public_key_der: bytes
    _signer: Ed25519Signer = field(repr=False)
    _audit_signer: Ed25519Signer = field(repr=False)
    _audit_hmac_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if kms_id_for(self.public_key_der) != self.record.kms_id:
            raise IdentityError("the stored kms_id does not match the identity key")
        if self._signer.public_key_der() != self.public_key_der:
            raise IdentityError("the identity key does not match its public half")
        if self._audit_signer.public_key_der() != self.audit_public_key_der:
            raise IdentityError("the audit signing key does not match its public half")
        certificate = x509.load_der_x509_certificate(self.record.certificate_der)
        spki = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if spki != self.public_key_der:
            raise IdentityError("the identity certificate is not for the identity key")

    @property
    def kms_id(self) -> str:
        return self.record.kms_id

    @property
    def certificate_der(self) -> bytes:
        return self.record.certificate_der

    @property
    def certificate_pem(self) -> bytes:
        certificate = x509.load_der_x509_certificate(self.record.certificate_der)
        return certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def audit_public_key(self) -> bytes:
        """The raw 32-byte Ed25519 audit public key (as the audit export header carries)."""
        return raw_ed25519_public(self.audit_public_key_der)

    @property
    def audit_hmac_key(self) -> bytes:
        return self._audit_hmac_key

    def sign(self, message: bytes) -> bytes:
        return self._signer.sign(message)

    def sign_audit(self, message: bytes) -> bytes:
        return self._audit_signer.sign(message)

    def document(self) -> dict[str, str]:
        """Public: kms_id, the identity and audit public keys and the certificate."""
        return {
            "kms_id": self.kms_id,
            "public_key": base64.b64encode(self.public_key_der).decode(),
            "audit_public_key": base64.b64encode(self.audit_public_key).decode(),
            "certificate": self.certificate_pem.decode(),
            "created_at": self.record.created_at.isoformat(),
        }
