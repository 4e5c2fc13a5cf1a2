"""Attested key release: key material wrapped with HPKE to a client's attested public key.

The client proves, with evidence, that its ephemeral X25519 public key was made inside an
attested enclave: the evidence's report_data must equal
``SHA-512("kms-key-release/v1" || 0x00 || SHA-256(public key) || challenge)`` where the
challenge is a single-use nonce the KMS issued. The key is then sealed with HPKE (RFC 9180,
base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM) to that public key,
never sent in plaintext. The client confirms receipt with an HMAC that only a holder of the
unwrapped material can compute; the KMS records it.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave.attestation.evidence import report_data_for

RELEASE_LABEL = b"kms-key-release/v1"
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
X25519_KEY_SIZE = 32


class ReleaseError(Exception):
    type = "release-refused"


def release_report_data(client_public_key: bytes, challenge: bytes) -> bytes:
    """The 64 bytes a client enclave binds into its evidence to ask for a key."""
    return report_data_for(RELEASE_LABEL, client_public_key, challenge)


def hpke_info(key_id: str, version: int) -> bytes:
    return RELEASE_LABEL + b"\x00" + key_id.encode() + b"\x00" + str(version).encode()


def wrap_for_client(material: bytes, client_public_key: bytes, key_id: str, version: int) -> bytes:
    if len(client_public_key) != X25519_KEY_SIZE:
        raise ReleaseError("the client public key must be a 32-byte X25519 key")
    try:
        public = X25519PublicKey.from_public_bytes(client_public_key)
    except ValueError:
        raise ReleaseError("the client public key is not a valid X25519 key") from None
    return SUITE.encrypt(material, public, info=hpke_info(key_id, version))


def unwrap_released(
    wrapped: bytes, client_private_key: X25519PrivateKey, key_id: str, version: int
) -> bytes:
    """The client side of a release."""
    return SUITE.decrypt(wrapped, client_private_key, info=hpke_info(key_id, version))


def receipt_proof(material: bytes, release_id: str) -> str:
    key = HKDF(SHA256(), 32, salt=None, info=b"kms-key-release-receipt/v1").derive(material)
    return hmac.new(key, release_id.encode(), hashlib.sha256).hexdigest()


def check_receipt(material: bytes, release_id: str, proof: str) -> bool:
    return hmac.compare_digest(receipt_proof(material, release_id), proof)
