"""RFC 9458 (Oblivious HTTP) message encapsulation, as the K/V service uses it.

Request (section 4.3)::

    hdr = key_id (1) || kem_id (2) || kdf_id (2) || aead_id (2)
    info = request_label || 0x00 || hdr
    enc, sctxt = SetupBaseS(pkR, info); ct = sctxt.Seal("", request)
    encapsulated_request = hdr || enc || ct

Response (section 4.4)::

    secret = context.Export(response_label, max(Nn, Nk))
    response_nonce = random(max(Nn, Nk))
    salt = enc || response_nonce
    prk = Extract(salt, secret)
    aead_key = Expand(prk, "key", Nk); aead_nonce = Expand(prk, "nonce", Nn)
    encapsulated_response = response_nonce || Seal(aead_key, aead_nonce, "", response)

with the K/V labels ``message/ad-auction-trusted-signals-request`` / ``-response`` and the
suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM. HPKE with secret export comes
from pyhpke (pyca/cryptography's HPKE has no exporter). Every decryption failure is the one
opaque ``OhttpError``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

REQUEST_LABEL = b"message/ad-auction-trusted-signals-request"
RESPONSE_LABEL = b"message/ad-auction-trusted-signals-response"
KEM_ID, KDF_ID, AEAD_ID = 0x0020, 0x0001, 0x0002
NK, NN, NENC = 32, 12, 32
HEADER_BYTES = 7
RESPONSE_NONCE_BYTES = max(NN, NK)

_SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM)


class OhttpError(Exception):
    """An encapsulated message does not decrypt or is malformed (deliberately opaque)."""


def header(key_id: int) -> bytes:
    if not 0 <= key_id <= 255:
        raise ValueError("an OHTTP key id is one byte")
    return struct.pack(">BHHH", key_id, KEM_ID, KDF_ID, AEAD_ID)


def _info(label: bytes, hdr: bytes) -> bytes:
    return label + b"\x00" + hdr


@dataclass(frozen=True)
class _ResponseKeys:
    secret: bytes = field(repr=False)
    enc: bytes

    def keys(self, response_nonce: bytes) -> tuple[bytes, bytes]:
        prk = hmac.new(self.enc + response_nonce, self.secret, hashlib.sha256).digest()
        key = HKDFExpand(hashes.SHA256(), NK, b"key").derive(prk)
        nonce = HKDFExpand(hashes.SHA256(), NN, b"nonce").derive(prk)
        return key, nonce


@dataclass(frozen=True)
class ClientContext:
    """What the client keeps to read the response to one request."""

    _keys: _ResponseKeys = field(repr=False)
    response_label: bytes = RESPONSE_LABEL

    def decapsulate_response(self, encapsulated: bytes) -> bytes:
        if len(encapsulated) < RESPONSE_NONCE_BYTES + 16:
            raise OhttpError("the response does not decrypt")
        nonce_in, ct = encapsulated[:RESPONSE_NONCE_BYTES], encapsulated[RESPONSE_NONCE_BYTES:]
        key, nonce = self._keys.keys(nonce_in)
        try:
            return AESGCM(key).decrypt(nonce, ct, b"")
        except Exception:
            raise OhttpError("the response does not decrypt") from None


def encapsulate_request(
    public_key: bytes,
    key_id: int,
    request: bytes,
    *,
    request_label: bytes = REQUEST_LABEL,
    response_label: bytes = RESPONSE_LABEL,
) -> tuple[bytes, ClientContext]:
    """Encrypt ``request`` to the gateway key (raw X25519) named by the 1-byte ``key_id``."""
    hdr = header(key_id)
    recipient = KEMKey.from_pyca_cryptography_key(X25519PublicKey.from_public_bytes(public_key))
    enc, context = _SUITE.create_sender_context(recipient, info=_info(request_label, hdr))
    ct = context.seal(request, aad=b"")
    secret = context.export(response_label, RESPONSE_NONCE_BYTES)
    return hdr + enc + ct, ClientContext(_ResponseKeys(secret, enc), response_label)


@dataclass(frozen=True)
class ServerContext:
    """What the gateway keeps to encrypt the response to one request."""

    key_id: int
    _keys: _ResponseKeys = field(repr=False)

    def encapsulate_response(self, response: bytes) -> bytes:
        response_nonce = os.urandom(RESPONSE_NONCE_BYTES)
        key, nonce = self._keys.keys(response_nonce)
        return response_nonce + AESGCM(key).encrypt(nonce, response, b"")


def decapsulate_request(
    encapsulated: bytes,
    private_key_for: Callable[[int], X25519PrivateKey | None],
    *,
    request_label: bytes = REQUEST_LABEL,
    response_label: bytes = RESPONSE_LABEL,
) -> tuple[bytes, ServerContext]:
    """Decrypt a request with the private key its key id names."""
    if len(encapsulated) < HEADER_BYTES + NENC + 16:
        raise OhttpError("the request does not decrypt")
    key_id, kem, kdf, aead = struct.unpack(">BHHH", encapsulated[:HEADER_BYTES])
    private = private_key_for(key_id)
    if (kem, kdf, aead) != (KEM_ID, KDF_ID, AEAD_ID) or private is None:
        raise OhttpError("the request does not decrypt")
    hdr = encapsulated[:HEADER_BYTES]
    enc = encapsulated[HEADER_BYTES : HEADER_BYTES + NENC]
    ct = encapsulated[HEADER_BYTES + NENC :]
    try:
        context = _SUITE.create_recipient_context(
            enc, KEMKey.from_pyca_cryptography_key(private), info=_info(request_label, hdr)
        )
        request = context.open(ct, aad=b"")
        secret = context.export(response_label, RESPONSE_NONCE_BYTES)
    except Exception:
        raise OhttpError("the request does not decrypt") from None
    return request, ServerContext(key_id, _ResponseKeys(secret, enc))
