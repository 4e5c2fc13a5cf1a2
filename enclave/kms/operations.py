"""Cryptographic operations: encrypt, decrypt, data keys, re-encrypt, sign, verify, public
keys (the seed's Regular Operation: authenticate, verify permission, retrieve the key,
execute, log).

Ciphertexts are the EKC1 envelope of ``enclave.keys.material``: they name their key and
version, and the encryption context (canonical JSON of string pairs) is bound as AAD. Every
way a decryption can fail on the data (wrong context, tampered bytes, another key's
ciphertext, a malformed envelope) ends in one opaque ``DecryptionFailed``. A version that is
disabled, pending deletion or destroyed is refused (``KeyUnusable``) before any attempt.

Must never: return a plaintext from ``re_encrypt``, log or audit a plaintext or a context
(contexts go to the audit log as an HMAC only), or produce output with a version that is not
active.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from enclave.auth.principals import Principal
from enclave.keys.entropy import EntropySource
from enclave.keys.errors import (
    CiphertextFormatError,
    SignatureInvalid,
    WrongWrappingKey,
)
from enclave.keys.errors import DecryptionFailed as KeysDecryptionFailed
from enclave.keys.hierarchy import KeyHierarchy
from enclave.keys.material import MAX_CIPHERTEXT_BYTES, Ciphertext
from enclave.keys.metadata import Algorithm, KeyMetadata, KeyVersion, Purpose
from enclave.kms.context import InvalidContext, canonical_context
from enclave.kms.errors import DecryptionFailed, InvalidRequest, KeyUnusable
from enclave.kms.guard import AuditNote, Guard
from enclave.kms.keys import KeyRepository, check_key_id, key_errors

MAX_PLAINTEXT_BYTES = 1024 * 1024
MAX_MESSAGE_BYTES = 1024 * 1024
DATA_KEY_BYTES = (16, 24, 32)

Context = Mapping[str, str] | None
UseHook = Callable[[KeyMetadata, str], None]


@dataclass(frozen=True)
class DataKey:
    """A fresh data key: ``wrapped`` is an EKC1 ciphertext of it under the named key (open
    it with ``decrypt`` and the same context); ``plaintext`` is None when not asked for."""

    key_id: str
    version: int
    wrapped: bytes
    plaintext: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Signature:
    key_id: str
    version: int
    algorithm: Algorithm
    signature: bytes


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    version: int
    algorithm: Algorithm
    spki_der: bytes


def _context(context: Context, note: AuditNote) -> bytes:
    try:
        encoded = canonical_context(context)
    except InvalidContext as exc:
        raise InvalidRequest(str(exc)) from None
    if encoded:
        note.sensitive["context"] = encoded
    return encoded


def _bytes(value: object, name: str, limit: int) -> bytes:
    if not isinstance(value, bytes) or len(value) > limit:
        raise InvalidRequest(f"{name} is bytes of at most {limit}")
    return value


def _envelope(ciphertext: object) -> Ciphertext:
    """The parsed envelope (parsed once per request: it names the key and the version)."""
    if not isinstance(ciphertext, bytes) or len(ciphertext) > MAX_CIPHERTEXT_BYTES:
        raise DecryptionFailed()
    try:
        return Ciphertext.from_bytes(ciphertext)
    except CiphertextFormatError:
        raise DecryptionFailed() from None


class CryptoService:
    def __init__(
        self,
        repo: KeyRepository,
        hierarchy: KeyHierarchy,
        guard: Guard,
        clock: Callable[[], datetime],
        *,
        entropy: EntropySource | None = None,
        on_use: UseHook | None = None,
    ) -> None:
        self._repo = repo
        self._hierarchy = hierarchy
        self._guard = guard
        self._clock = clock
        self._entropy = entropy or EntropySource()
        self._on_use = on_use

    # -- helpers -----------------------------------------------------------------------
    def _producer(self, metadata: KeyMetadata, purpose: Purpose) -> KeyVersion:
        if not _serves(metadata, purpose):
            raise InvalidRequest(f"{metadata.key_id} is a {metadata.purpose.value} key")
        # The clock is read only for a key that can expire (it is a datetime per request).
        if metadata.expires_at is not None and metadata.is_expired(self._clock()):
            raise KeyUnusable(f"{metadata.key_id} has expired")
        primary = metadata.primary
        if primary is None or not primary.can_produce():
            raise KeyUnusable(f"{metadata.key_id} has no active version")
        return primary

    def _consumer(self, metadata: KeyMetadata, number: int) -> KeyVersion:
        if not 1 <= number <= len(metadata.versions):
            raise DecryptionFailed()
        version = metadata.version(number)
        if not version.can_consume():
            raise KeyUnusable(f"{version.cache_id} is {version.state.value}")
        return version

    def _used(self, metadata: KeyMetadata, operation: str) -> None:
        if self._on_use is not None:
            self._on_use(metadata, operation)

    async def _open(self, metadata: KeyMetadata, envelope: Ciphertext, context: bytes) -> bytes:
        if not _serves(metadata, Purpose.ENCRYPT):
            raise DecryptionFailed()
        version = self._consumer(metadata, envelope.version)
        try:
            return await self._hierarchy.open(
                metadata, self._repo.kek_for(version), envelope, context
            )
        except (KeysDecryptionFailed, CiphertextFormatError, WrongWrappingKey):
            raise DecryptionFailed() from None

    async def _seal_with(self, version: KeyVersion, plaintext: bytes, context: bytes) -> bytes:
        """AES-256-GCM under ``version`` (the one ``_producer`` chose for this request)."""
        with key_errors():
            return await self._hierarchy.encrypt(
                version, self._repo.kek_for(version), plaintext, context
            )

    # -- operations --------------------------------------------------------------------
    async def encrypt(
        self, caller: Principal, key_id: str, plaintext: bytes, context: Context = None
    ) -> bytes:
        """AES-256-GCM under the key's active version; the ciphertext names key and version."""
        checked: dict[str, Any] = {}

        def validate(note: AuditNote) -> None:
            check_key_id(key_id)
            _bytes(plaintext, "plaintext", MAX_PLAINTEXT_BYTES)
            checked["context"] = _context(context, note)

        async def body(note: AuditNote) -> bytes:
            metadata = self._repo.require(key_id)
            self._used(metadata, "encrypt")
            version = self._producer(metadata, Purpose.ENCRYPT)
            note.key_version = version.version
            return await self._seal_with(version, plaintext, checked["context"])

        return await self._guard.run("keys.encrypt", caller, body, key_id=key_id,
                                     validate=validate)  # fmt: skip

    async def decrypt(
        self,
        caller: Principal,
        ciphertext: bytes,
        context: Context = None,
        *,
        key_id: str | None = None,
    ) -> bytes:
        """Open a ciphertext with the version it names (active or decrypt-only)."""
        checked: dict[str, Any] = {}

        def validate(note: AuditNote) -> str:
            envelope = checked["envelope"] = _envelope(ciphertext)
            if key_id is not None and key_id != envelope.key_id:
                raise DecryptionFailed()
            note.key_version = envelope.version
            checked["context"] = _context(context, note)
            return envelope.key_id

        async def body(note: AuditNote) -> bytes:
            assert note.key_id is not None
            metadata = self._repo.require(note.key_id)
            self._used(metadata, "decrypt")
            return await self._open(metadata, checked["envelope"], checked["context"])

        return await self._guard.run("keys.decrypt", caller, body, validate=validate)

    async def generate_data_key(
        self,
        caller: Principal,
        key_id: str,
        context: Context = None,
        *,
        include_plaintext: bool = True,
        length: int = 32,
    ) -> DataKey:
        """A fresh random data key, wrapped under ``key_id`` (and in clear if asked)."""
        checked: dict[str, Any] = {}

        def validate(note: AuditNote) -> None:
            check_key_id(key_id)
            if length not in DATA_KEY_BYTES:
                raise InvalidRequest("a data key is 16, 24 or 32 bytes")
            checked["context"] = _context(context, note)
            note.details.update(length=length, include_plaintext=include_plaintext)

        async def body(note: AuditNote) -> DataKey:
            metadata = self._repo.require(key_id)
            self._used(metadata, "generate_data_key")
            version = self._producer(metadata, Purpose.ENCRYPT)
            note.key_version = version.version
            secret = self._entropy.random_bytes(length)
            wrapped = await self._seal_with(version, secret, checked["context"])
            return DataKey(key_id, version.version, wrapped,
                           secret if include_plaintext else None)  # fmt: skip

        return await self._guard.run("keys.generate_data_key", caller, body, key_id=key_id,
                                     validate=validate)  # fmt: skip

    async def re_encrypt(
        self,
        caller: Principal,
        ciphertext: bytes,
        context: Context = None,
        *,
        destination_key_id: str | None = None,
        destination_context: Context | None = None,
    ) -> bytes:
        """Decrypt and encrypt again inside the enclave, under the destination key's (by
        default: the same key's) active version; the plaintext never leaves. Needs use on
        the source key and on the destination key."""
        checked: dict[str, Any] = {}

        def validate(note: AuditNote) -> str:
            envelope = checked["envelope"] = _envelope(ciphertext)
            named = envelope.key_id
            checked["source_context"] = _context(context, note)
            if destination_key_id is not None:
                check_key_id(destination_key_id)
            destination = destination_key_id or named
            target_context = context if destination_context is None else destination_context
            try:
                checked["destination_context"] = canonical_context(target_context)
            except InvalidContext as exc:
                raise InvalidRequest(str(exc)) from None
            checked["destination"] = destination
            note.details["destination_key_id"] = destination
            return named

        async def body(note: AuditNote) -> bytes:
            assert note.key_id is not None
            self._guard.require(caller, "keys.re_encrypt", checked["destination"])
            source = self._repo.require(note.key_id)
            target = (
                source if checked["destination"] == source.key_id
                else self._repo.require(checked["destination"])
            )  # fmt: skip
            destination = self._producer(target, Purpose.ENCRYPT)
            note.details["destination_version"] = destination.version
            self._used(source, "decrypt")
            plaintext = await self._open(source, checked["envelope"], checked["source_context"])
            self._used(target, "encrypt")
            return await self._seal_with(destination, plaintext, checked["destination_context"])

        return await self._guard.run("keys.re_encrypt", caller, body, validate=validate)

    async def sign(self, caller: Principal, key_id: str, message: bytes) -> Signature:
        """RSA-PSS-SHA256 (4096) in the HSM, or Ed25519, with the active version."""

        def validate(note: AuditNote) -> None:
            check_key_id(key_id)
            _bytes(message, "message", MAX_MESSAGE_BYTES)

        async def body(note: AuditNote) -> Signature:
            metadata = self._repo.require(key_id)
            version = self._producer(metadata, Purpose.SIGN)
            note.key_version = version.version
            with key_errors():
                signature = await self._hierarchy.sign(
                    version, self._repo.kek_for(version), message
                )
            return Signature(key_id, version.version, version.algorithm, signature)

        return await self._guard.run("keys.sign", caller, body, key_id=key_id,
                                     validate=validate)  # fmt: skip

    async def verify(
        self,
        caller: Principal,
        key_id: str,
        message: bytes,
        signature: bytes,
        *,
        version: int | None = None,
    ) -> bool:
        """Whether ``signature`` is valid under the version (default: the active one);
        decrypt-only versions still verify during their grace period."""

        def validate(note: AuditNote) -> None:
            check_key_id(key_id)
            _bytes(message, "message", MAX_MESSAGE_BYTES)
            _bytes(signature, "signature", 4096)

        async def body(note: AuditNote) -> bool:
            metadata = self._repo.require(key_id)
            if metadata.purpose is not Purpose.SIGN:
                raise InvalidRequest(f"{key_id} is a {metadata.purpose.value} key")
            if version is None:
                primary = metadata.primary
                if primary is None:
                    raise KeyUnusable(f"{key_id} has no active version")
                target = primary
            else:
                if not 1 <= version <= len(metadata.versions):
                    raise InvalidRequest(f"{key_id} has no version {version}")
                target = self._consumer(metadata, version)
            note.key_version = target.version
            try:
                with key_errors():
                    self._hierarchy.verify(target, message, signature)
            except SignatureInvalid:
                note.details["valid"] = False
                return False
            note.details["valid"] = True
            return True

        return await self._guard.run("keys.verify", caller, body, key_id=key_id,
                                     validate=validate)  # fmt: skip

    async def get_public_key(
        self, caller: Principal, key_id: str, version: int | None = None
    ) -> PublicKey:
        """The SubjectPublicKeyInfo (DER) of a signing or HPKE key version."""

        def validate(note: AuditNote) -> None:
            check_key_id(key_id)

        async def body(note: AuditNote) -> PublicKey:
            metadata = self._repo.require(key_id)
            if metadata.purpose not in (Purpose.SIGN, Purpose.HPKE):
                raise InvalidRequest(f"{key_id} is a {metadata.purpose.value} key")
            if version is None:
                target = metadata.primary
                if target is None:
                    raise KeyUnusable(f"{key_id} has no active version")
            else:
                if not 1 <= version <= len(metadata.versions):
                    raise InvalidRequest(f"{key_id} has no version {version}")
                target = self._consumer(metadata, version)
            assert target.public_key is not None
            note.key_version = target.version
            return PublicKey(key_id, target.version, target.algorithm, target.public_key)

        return await self._guard.run("keys.get_public_key", caller, body, key_id=key_id,
                                     validate=validate)  # fmt: skip


def _serves(metadata: KeyMetadata, purpose: Purpose) -> bool:
    """Whether a key can be used for ``purpose``. Wrap keys (AES-256-GCM key-wrapping keys)
    serve the symmetric operations too: a data key, or key material, sealed under them."""
    if metadata.purpose is purpose:
        return True
    return (
        purpose is Purpose.ENCRYPT
        and metadata.purpose is Purpose.WRAP
        and metadata.algorithm is Algorithm.AES_256_GCM
    )
