"""Key material in use, and the ciphertext envelope that names its key.

``Ciphertext`` is ``b"EKC1" | u8 len(key_id) | key_id | u32 version | 12-byte nonce |
AES-256-GCM ciphertext+tag``. The header (magic, key id, version) is authenticated as part
of the AAD, followed by the caller's encryption context, so a ciphertext cannot be moved
to another key or version, nor opened under another context.

The plaintext holders here (``SymmetricKey``, ``Ed25519Signer``, ``X25519KeyPair``) live in
enclave memory only (the enclave is trusted memory); their reprs never show secrets.

Must never: put key bytes in repr, str, errors or logs; accept an envelope beyond
``MAX_CIPHERTEXT_BYTES``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cached_property

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.keys.errors import CiphertextFormatError, DecryptionFailed, SignatureInvalid
from enclave.keys.metadata import KEY_ID_PATTERN

MAGIC = b"EKC1"
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_CIPHERTEXT_BYTES = 64 * 1024 * 1024
MAX_AAD_BYTES = 64 * 1024
RSA_PSS_SALT_BYTES = 32


@dataclass(frozen=True)
class Ciphertext:
    key_id: str
    version: int
    nonce: bytes
    sealed: bytes  # ciphertext || tag

    def __post_init__(self) -> None:
        _check_envelope(self.key_id, self.version, self.nonce, self.sealed)

    def header(self) -> bytes:
        return _header(self.key_id, self.version)

    def to_bytes(self) -> bytes:
        return self.header() + self.nonce + self.sealed

    @classmethod
    def from_bytes(cls, blob: bytes) -> Ciphertext:
        if len(blob) > MAX_CIPHERTEXT_BYTES:
            raise CiphertextFormatError("ciphertext too large")
        if len(blob) < len(MAGIC) + 1 or blob[: len(MAGIC)] != MAGIC:
            raise CiphertextFormatError("not an EKC1 ciphertext")
        id_len = blob[len(MAGIC)]
        start = len(MAGIC) + 1
        end = start + id_len
        if len(blob) < end + 4 + NONCE_BYTES + TAG_BYTES:
            raise CiphertextFormatError("ciphertext is truncated")
        try:
            key_id = blob[start:end].decode("ascii")
        except UnicodeDecodeError:
            raise CiphertextFormatError("ciphertext names no valid key version") from None
        (version,) = struct.unpack_from(">I", blob, end)
        nonce = blob[end + 4 : end + 4 + NONCE_BYTES]
        sealed = blob[end + 4 + NONCE_BYTES :]
        _check_envelope(key_id, version, nonce, sealed)
        # Every decrypt parses one: the checks of ``__post_init__`` just ran, and the four
        # fields go into the instance dict at once instead of through the frozen
        # dataclass ``__init__``'s object.__setattr__ per field (an equal instance).
        envelope = object.__new__(cls)
        envelope.__dict__.update(key_id=key_id, version=version, nonce=nonce, sealed=sealed)
        return envelope

    @staticmethod
    def named_key_version(blob: bytes) -> tuple[str, int]:
        """The key id and version in the header of an envelope already known to be well
        formed (one this service just made, or one ``from_bytes`` accepted), read without
        building the envelope again."""
        end = len(MAGIC) + 1 + blob[len(MAGIC)]
        (version,) = struct.unpack_from(">I", blob, end)
        return blob[len(MAGIC) + 1 : end].decode("ascii"), version

    def aad(self, context: bytes) -> bytes:
        """Header and caller context, length-prefixed so the split is unambiguous."""
        return _aad_prefix(self.header()) + context


def _check_envelope(key_id: str, version: int, nonce: bytes, sealed: bytes) -> None:
    if not KEY_ID_PATTERN.match(key_id) or not 1 <= version < 2**32:
        raise CiphertextFormatError("ciphertext names no valid key version")
    if len(nonce) != NONCE_BYTES or len(sealed) < TAG_BYTES:
        raise CiphertextFormatError("ciphertext is truncated")


def _header(key_id: str, version: int) -> bytes:
    key = key_id.encode("ascii")
    return MAGIC + bytes([len(key)]) + key + struct.pack(">I", version)


def _aad_prefix(header: bytes) -> bytes:
    return struct.pack(">I", len(header)) + header


@dataclass(frozen=True)
class SymmetricKey:
    """An unwrapped AES-256 key in enclave memory."""

    key_id: str
    version: int
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("AES-256 keys are 32 bytes")

    @cached_property
    def _aead(self) -> AESGCM:
        # Made once per unwrapped key (the unwrap cache keeps this object): the key
        # schedule is not rebuilt on every request. Same lifetime as ``secret``.
        return AESGCM(self.secret)

    @cached_property
    def _header(self) -> bytes:
        # The envelope header (and the AAD prefix below) depend on the key version only:
        # made once per unwrapped key, not per request. Checked as a Ciphertext would be.
        if not KEY_ID_PATTERN.match(self.key_id) or not 1 <= self.version < 2**32:
            raise CiphertextFormatError("ciphertext names no valid key version")
        return _header(self.key_id, self.version)

    @cached_property
    def _aad_prefix(self) -> bytes:
        return _aad_prefix(self._header)

    def encrypt(self, plaintext: bytes, context: bytes, nonce: bytes) -> Ciphertext:
        return Ciphertext(self.key_id, self.version, nonce, self._sealed(plaintext, context, nonce))

    def seal(self, plaintext: bytes, context: bytes, nonce: bytes) -> bytes:
        """``encrypt(...).to_bytes()``: the EKC1 envelope, built as bytes directly (the
        crypto API's hot path answers bytes; no envelope object is needed to make them)."""
        return self._header + nonce + self._sealed(plaintext, context, nonce)

    def _sealed(self, plaintext: bytes, context: bytes, nonce: bytes) -> bytes:
        if len(context) > MAX_AAD_BYTES:
            raise ValueError("encryption context too large")
        if len(nonce) != NONCE_BYTES:
            raise CiphertextFormatError("ciphertext is truncated")
        return self._aead.encrypt(nonce, plaintext, self._aad_prefix + context)

    def decrypt(self, ciphertext: Ciphertext, context: bytes) -> bytes:
        if (ciphertext.key_id, ciphertext.version) != (self.key_id, self.version):
            raise CiphertextFormatError("ciphertext names another key version")
        try:
            # Same key id and version: ``ciphertext.aad(context)``, from the cached prefix.
            return self._aead.decrypt(ciphertext.nonce, ciphertext.sealed,
                                      self._aad_prefix + context)  # fmt: skip
        except InvalidTag:
            raise DecryptionFailed() from None


@dataclass(frozen=True)
class Ed25519Signer:
    """An unwrapped Ed25519 private key (32-byte seed) in enclave memory."""

    seed: bytes = field(repr=False)

    def sign(self, message: bytes) -> bytes:
        return ed25519.Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)

    def public_key_der(self) -> bytes:
        return public_der(ed25519.Ed25519PrivateKey.from_private_bytes(self.seed).public_key())


@dataclass(frozen=True)
class X25519KeyPair:
    """An unwrapped X25519 HPKE private key (32 raw bytes) in enclave memory."""

    private_bytes: bytes = field(repr=False)

    def private_key(self) -> x25519.X25519PrivateKey:
        return x25519.X25519PrivateKey.from_private_bytes(self.private_bytes)

    def public_key_der(self) -> bytes:
        return public_der(self.private_key().public_key())


def public_der(
    key: ed25519.Ed25519PublicKey | x25519.X25519PublicKey | rsa.RSAPublicKey,
) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify_signature(public_key_der: bytes, message: bytes, signature: bytes) -> None:
    """Verify Ed25519 or RSA-PSS-SHA256 (salt 32) in enclave memory; opaque on failure."""
    key = serialization.load_der_public_key(public_key_der)
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(
                signature,
                message,
                padding.PSS(padding.MGF1(hashes.SHA256()), RSA_PSS_SALT_BYTES),
                hashes.SHA256(),
            )
        else:
            raise SignatureInvalid()
    except InvalidSignature:
        raise SignatureInvalid() from None
