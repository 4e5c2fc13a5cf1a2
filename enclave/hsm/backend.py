"""HSM operations through PKCS#11, behind an async facade over one worker thread.

Owns: the session on the token, the master key (AES-256, generated in the HSM, token
object, sensitive, never extractable, wrap/unwrap only), KEKs wrapped under it with
CKM_AES_KEY_WRAP_PAD (RFC 5649), keys wrapped under KEKs, RSA-4096 signing in the HSM, the
HSM RNG, and caches of unwrapped session objects (KEKs, RSA private keys, AES-GCM keys)
which live on the worker thread only.

Where each key is made and used (SoftHSM2 2.6 measured; see ``KeyOrigin``):
- AES-256 KEKs and DEKs/data keys: generated in the HSM (C_GenerateKey), wrapped with
  AES-KWP. A data key meant for enclave memory is unwrapped into a non-sensitive session
  object, read once and destroyed.
- RSA-4096: generated in the HSM as a sensitive, extractable session key pair; the private
  half is wrapped (PKCS#8 inside AES-KWP) and destroyed; signing unwraps it into the HSM.
- Ed25519 and X25519: SoftHSM2 refuses to wrap CKK_EC_EDWARDS private keys
  (CKR_KEY_NOT_WRAPPABLE) and has no X25519 key generation, so these are generated in the
  enclave from the ``EntropySource`` (enclave.keys) and their 32 raw private bytes are
  wrapped in the HSM by ``wrap_bytes``: imported as a CKK_GENERIC_SECRET session object and
  wrapped with AES-KWP, so every wrapped blob in the KMS has one format.

Must never: call PKCS#11 off the worker thread, let a PKCS#11 object escape the worker,
put key material or PINs into errors, logs or reprs, or read the master key.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any, TypeVar

import pkcs11
from pkcs11 import MGF, Attribute, GCMParams, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.constants import DEFAULT
from pkcs11.exceptions import PinIncorrect, PinLenRange, PKCS11Error

from enclave.hsm.config import HsmConfig, HsmPin
from enclave.hsm.errors import (
    HsmAuthenticationError,
    HsmClosed,
    HsmConfigError,
    HsmError,
    HsmKeyNotFound,
    HsmOperationError,
    HsmPolicyError,
    HsmUnavailable,
    HsmUnwrapError,
)
from enclave.hsm.stats import HsmStats
from enclave.hsm.worker import Pkcs11Worker

T = TypeVar("T")

WRAP_MECHANISM = Mechanism.AES_KEY_WRAP_PAD
WRAP_MECHANISM_NAME = "CKM_AES_KEY_WRAP_PAD"
AES_KEY_BITS = 256
RSA_KEY_BITS = 4096
RSA_PSS_PARAMS = (Mechanism.SHA256, MGF.SHA256, 32)
GCM_IV_BYTES = 12
GCM_TAG_BITS = 128
MAX_RANDOM_BYTES = 1 << 16
MAX_WRAPPED_BYTES = 1 << 14

# Capability attributes python-pkcs11 adds to every template; each template below states
# every one it needs and drops the rest (DEFAULT), since tokens reject ENCRYPT on a
# private key and the like.
_NO_CAPS: dict[Attribute, Any] = {
    Attribute.ENCRYPT: DEFAULT,
    Attribute.DECRYPT: DEFAULT,
    Attribute.WRAP: DEFAULT,
    Attribute.UNWRAP: DEFAULT,
    Attribute.SIGN: DEFAULT,
    Attribute.VERIFY: DEFAULT,
    Attribute.DERIVE: DEFAULT,
}
_AES_WRAP_ONLY: dict[Attribute, Any] = {
    **_NO_CAPS,
    Attribute.WRAP: True,
    Attribute.UNWRAP: True,
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}
_AES_NO_USE: dict[Attribute, Any] = {
    **_AES_WRAP_ONLY,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
}
_AES_GCM_ONLY: dict[Attribute, Any] = {
    **_AES_NO_USE,
    Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True,
}


class KeyOrigin(Enum):
    """Where a key's secret was generated; recorded in the key version's metadata."""

    HSM = "hsm"  # C_GenerateKey / C_GenerateKeyPair inside the HSM
    ENCLAVE = "enclave"  # in enclave memory from the EntropySource, then wrapped in the HSM


@dataclass(frozen=True)
class KekRef:
    """What the backend needs to use a KEK: its id (cache key) and its blob under the master."""

    kek_id: str
    wrapped: bytes = field(repr=False)


@dataclass(frozen=True)
class GeneratedSecret:
    """An AES-256 key generated in the HSM, wrapped by a KEK; plaintext only when asked for."""

    wrapped: bytes = field(repr=False)
    plaintext: bytes | None = field(repr=False, default=None)


@dataclass(frozen=True)
class GeneratedKeyPair:
    """A key pair whose private half is wrapped by a KEK; public half as SPKI DER."""

    public_key_der: bytes
    wrapped_private: bytes = field(repr=False)
    origin: KeyOrigin


@dataclass(frozen=True)
class MasterKeyStatus:
    label: str
    created: bool


class _ProcessLibraryClaim:
    """The PKCS#11 library is process-wide state (one C_Initialize, one SoftHSM config per
    process), so a second open backend in the same process would share, then finalize, the
    first one's library and crash it. This claim turns that into ``HsmConfigError``. It is
    the one piece of module state here, and it mirrors state the C library already has."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: str | None = None

    def acquire(self, holder: str) -> None:
        with self._lock:
            if self._holder is not None:
                raise HsmConfigError(
                    "a PKCS#11 backend is already open in this process; "
                    "use one backend (one token dir) per process"
                )
            self._holder = holder

    def release(self) -> None:
        with self._lock:
            self._holder = None


_LIBRARY_CLAIM = _ProcessLibraryClaim()


class _LruHandles:
    """Unwrapped session objects by cache key, bounded; evicted objects are destroyed."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, tuple[bytes, Any]] = OrderedDict()

    def get(self, key: str, digest: bytes) -> Any | None:
        item = self._items.get(key)
        if item is None or item[0] != digest:
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: str, digest: bytes, obj: Any) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            _destroy_quietly(old[1])
        self._items[key] = (digest, obj)
        while len(self._items) > self._capacity:
            _, (_, evicted) = self._items.popitem(last=False)
            _destroy_quietly(evicted)

    def drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            _destroy_quietly(item[1])

    def clear(self) -> None:
        for _, obj in self._items.values():
            _destroy_quietly(obj)
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _destroy_quietly(obj: Any) -> None:
    with contextlib.suppress(PKCS11Error):  # session objects vanish with the session anyway
        obj.destroy()


def _digest(blob: bytes) -> bytes:
    return hashlib.sha256(blob).digest()


class TokenSession:
    """Everything PKCS#11 of one open backend. Lives on, and is touched only by, the worker."""

    def __init__(self, config: HsmConfig, pin: HsmPin) -> None:
        previous = os.environ.get("SOFTHSM2_CONF")
        if config.softhsm_conf is not None:
            os.environ["SOFTHSM2_CONF"] = str(config.softhsm_conf)
        try:
            self.lib = pkcs11.lib(str(config.library_path))
        except PKCS11Error as exc:
            raise HsmUnavailable(f"cannot load PKCS#11 library ({type(exc).__name__})") from None
        finally:
            # SoftHSM read the variable in C_Initialize; do not leak it to child processes.
            if config.softhsm_conf is not None:
                if previous is None:
                    os.environ.pop("SOFTHSM2_CONF", None)
                else:
                    os.environ["SOFTHSM2_CONF"] = previous
        self.token: Any = None
        self.session: Any = None
        try:
            self.token = self.lib.get_token(token_label=config.token_label)
            self.session = self.token.open(rw=True, user_pin=pin.text())
        except (PinIncorrect, PinLenRange):
            self.finalize()
            raise HsmAuthenticationError("the token refused the PIN") from None
        except PKCS11Error as exc:
            self.finalize()
            raise HsmUnavailable(f"token not available ({type(exc).__name__})") from None
        self.config = config
        self.master: Any | None = None
        self.keks = _LruHandles(config.kek_cache_size)
        self.private_keys = _LruHandles(config.private_key_cache_size)
        self.secret_keys = _LruHandles(config.secret_key_cache_size)

    def finalize(self) -> None:
        """Destroy cached session objects, close the session, C_Finalize. Worker only."""
        for cache_name in ("keks", "private_keys", "secret_keys"):
            cache = getattr(self, cache_name, None)
            if cache is not None:
                cache.clear()
        session = getattr(self, "session", None)
        if session is not None:
            with contextlib.suppress(PKCS11Error):
                session.close()
        # Every python-pkcs11 object keeps the function list; drop them all before the
        # library goes, or their deallocation calls into a finalized library (segfault).
        self.master = None
        self.session = None
        self.token = None
        gc.collect()
        with contextlib.suppress(PKCS11Error):
            self.lib.finalize()

    # -- keys -----------------------------------------------------------------------------

    def master_key(self) -> Any:
        if self.master is None:
            found = self._find_master()
            if found is None:
                raise HsmKeyNotFound("the master key is not on the token")
            self.master = found
        return self.master

    def _find_master(self) -> Any | None:
        found = list(
            self.session.get_objects(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.LABEL: self.config.master_key_label,
                }
            )
        )
        if len(found) > 1:
            raise HsmPolicyError("several master keys carry the master label")
        if not found:
            return None
        key = found[0]
        attrs = key.get_attributes(
            [
                Attribute.KEY_TYPE,
                Attribute.VALUE_LEN,
                Attribute.TOKEN,
                Attribute.SENSITIVE,
                Attribute.EXTRACTABLE,
                Attribute.NEVER_EXTRACTABLE,
                Attribute.ALWAYS_SENSITIVE,
                Attribute.LOCAL,
            ]
        )
        expected = {
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE_LEN: AES_KEY_BITS // 8,
            Attribute.TOKEN: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.NEVER_EXTRACTABLE: True,
            Attribute.ALWAYS_SENSITIVE: True,
            Attribute.LOCAL: True,
        }
        wrong = sorted(a.name for a, v in expected.items() if attrs.get(a) != v)
        if wrong:
            raise HsmPolicyError(f"the master key has unsafe attributes: {', '.join(wrong)}")
        return key

    def ensure_master(self) -> bool:
        if self._find_master() is not None:
            self.master_key()
            return False
        self.master = self.session.generate_key(
            KeyType.AES,
            AES_KEY_BITS,
            label=self.config.master_key_label,
            store=True,
            template={
                **_AES_WRAP_ONLY,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.MODIFIABLE: False,
            },
        )
        return True

    def kek(self, ref: KekRef) -> Any:
        digest = _digest(ref.wrapped)
        cached = self.keks.get(ref.kek_id, digest)
        if cached is not None:
            return cached
        key = self._unwrap(
            self.master_key(),
            ObjectClass.SECRET_KEY,
            KeyType.AES,
            ref.wrapped,
            {**_AES_WRAP_ONLY, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
        self.keks.put(ref.kek_id, digest, key)
        return key

    def _unwrap(
        self,
        wrapping_key: Any,
        object_class: ObjectClass,
        key_type: KeyType,
        blob: bytes,
        template: dict[Attribute, Any],
    ) -> Any:
        if not 16 <= len(blob) <= MAX_WRAPPED_BYTES:
            raise HsmUnwrapError()
        try:
            return wrapping_key.unwrap_key(
                object_class,
                key_type,
                blob,
                mechanism=WRAP_MECHANISM,
                store=False,
                template={Attribute.TOKEN: False, **template},
            )
        except PKCS11Error:
            raise HsmUnwrapError() from None

    def generate_aes(self, template: dict[Attribute, Any]) -> Any:
        return self.session.generate_key(
            KeyType.AES, AES_KEY_BITS, store=False, template={Attribute.TOKEN: False, **template}
        )

    def wrap_and_destroy(self, wrapping_key: Any, key: Any) -> bytes:
        try:
            return bytes(wrapping_key.wrap_key(key, mechanism=WRAP_MECHANISM))
        finally:
            _destroy_quietly(key)

    def read_and_destroy(self, key: Any) -> bytes:
        try:
            return bytes(key[Attribute.VALUE])
        finally:
            _destroy_quietly(key)


def _spki_from_rsa(modulus: bytes, exponent: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.RSAPublicNumbers(int.from_bytes(exponent, "big"), int.from_bytes(modulus, "big"))
    return numbers.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class HsmBackend:
    """Async facade: every method hops to the single PKCS#11 worker thread and back.

    Open with ``await HsmBackend.open(config, pin)``; close with ``await backend.close()``
    or use ``async with``. One open backend per process (see ``_ProcessLibraryClaim``).
    """

    def __init__(self, worker: Pkcs11Worker, state: TokenSession, config: HsmConfig) -> None:
        self._worker = worker
        self._state: TokenSession | None = state
        self._config = config
        self.stats = HsmStats()

    def __repr__(self) -> str:
        return f"HsmBackend(token={self._config.token_label!r}, open={self._state is not None})"

    @classmethod
    async def open(cls, config: HsmConfig, pin: HsmPin | str | bytes) -> HsmBackend:
        the_pin = HsmPin.of(pin)
        _LIBRARY_CLAIM.acquire(config.token_label)
        worker = Pkcs11Worker()
        try:
            state = await worker.run(TokenSession, config, the_pin)
        except BaseException:
            worker.shutdown()
            _LIBRARY_CLAIM.release()
            raise
        return cls(worker, state, config)

    @classmethod
    def open_blocking(cls, config: HsmConfig, pin: HsmPin | str | bytes) -> HsmBackend:
        """For synchronous callers (tools, the storage layer's start-up)."""
        the_pin = HsmPin.of(pin)
        _LIBRARY_CLAIM.acquire(config.token_label)
        worker = Pkcs11Worker()
        try:
            state = worker.run_blocking(TokenSession, config, the_pin)
        except BaseException:
            worker.shutdown()
            _LIBRARY_CLAIM.release()
            raise
        return cls(worker, state, config)

    async def __aenter__(self) -> HsmBackend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.to_thread(self.close_blocking)

    def close_blocking(self) -> None:
        state, self._state = self._state, None
        if state is None:
            return
        try:
            self._worker.shutdown(state.finalize)
        finally:
            _LIBRARY_CLAIM.release()

    @property
    def worker(self) -> Pkcs11Worker:
        return self._worker

    @property
    def config(self) -> HsmConfig:
        return self._config

    # -- plumbing --------------------------------------------------------------------------

    def _timed(self, operation: str, fn: Callable[[TokenSession], T], queued: float) -> T:
        """Runs on the worker: the call itself, error mapping, stats."""
        started = time.perf_counter()
        ok = False
        try:
            state = self._state
            if state is None:
                raise HsmClosed("the HSM backend is closed")
            result = fn(state)
            ok = True
            return result
        except HsmError:
            raise
        except (PinIncorrect, PinLenRange):
            raise HsmAuthenticationError("the token refused the PIN") from None
        except PKCS11Error as exc:
            raise HsmOperationError(operation, type(exc).__name__) from None
        finally:
            done = time.perf_counter()
            self.stats.record(operation, done - queued, done - started, ok)

    async def run_on_token(self, operation: str, fn: Callable[[TokenSession], T]) -> T:
        """Run ``fn(token_session)`` on the worker thread, timed under ``operation``.

        For modules of ``enclave.hsm`` (the counter), tests and the bench's raw baseline.
        ``fn`` must not keep any PKCS#11 object beyond its return.
        """
        if self._state is None:
            raise HsmClosed("the HSM backend is closed")
        return await self._worker.run(self._timed, operation, fn, time.perf_counter())

    def run_on_token_blocking(self, operation: str, fn: Callable[[TokenSession], T]) -> T:
        """``run_on_token`` for synchronous callers; waits at most the configured timeout."""
        if self._state is None:
            raise HsmClosed("the HSM backend is closed")
        result: T = self._worker.run_blocking(
            self._timed,
            operation,
            fn,
            time.perf_counter(),
            timeout=self._config.call_timeout_seconds,
        )
        return result

    # -- master key and KEKs ---------------------------------------------------------------

    async def ensure_master_key(self) -> MasterKeyStatus:
        """Find the master key, or generate it in the HSM. Idempotent."""
        created = await self.run_on_token("master.ensure", TokenSession.ensure_master)
        return MasterKeyStatus(self._config.master_key_label, created)

    async def generate_kek(self) -> bytes:
        """A new AES-256 KEK generated in the HSM, returned wrapped under the master key."""

        def op(st: TokenSession) -> bytes:
            kek = st.generate_aes(
                {**_AES_WRAP_ONLY, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True}
            )
            return st.wrap_and_destroy(st.master_key(), kek)

        return await self.run_on_token("kek.generate", op)

    async def load_kek(self, kek: KekRef) -> None:
        """Unwrap the KEK under the master key into the worker's cache (done lazily anyway)."""
        await self.run_on_token("kek.unwrap", lambda st: st.kek(kek) and None)

    async def unwrap_kek_uncached(self, kek: KekRef) -> None:
        """Unwrap the KEK under the master key afresh, then drop it (measures the unwrap)."""

        def op(st: TokenSession) -> None:
            st.keks.drop(kek.kek_id)
            st.kek(kek)

        await self.run_on_token("kek.unwrap", op)

    async def forget(self, cache_id: str) -> None:
        """Destroy cached session objects under ``cache_id`` (KEK, private or secret key)."""

        def op(st: TokenSession) -> None:
            st.keks.drop(cache_id)
            st.private_keys.drop(cache_id)
            st.secret_keys.drop(cache_id)

        await self.run_on_token("cache.forget", op)

    # -- AES data keys ----------------------------------------------------------------------

    async def generate_data_key(self, kek: KekRef, *, with_plaintext: bool) -> GeneratedSecret:
        """An AES-256 key generated in the HSM, wrapped by ``kek``.

        With ``with_plaintext`` the key is generated non-sensitive and its value returned too
        (a data key for enclave memory or for the caller); otherwise it never leaves the HSM
        unwrapped.
        """

        def op(st: TokenSession) -> GeneratedSecret:
            key = st.generate_aes(
                {
                    **_AES_NO_USE,
                    Attribute.SENSITIVE: not with_plaintext,
                    Attribute.EXTRACTABLE: True,
                }
            )
            try:
                plaintext = bytes(key[Attribute.VALUE]) if with_plaintext else None
                wrapped = bytes(st.kek(kek).wrap_key(key, mechanism=WRAP_MECHANISM))
            finally:
                _destroy_quietly(key)
            return GeneratedSecret(wrapped, plaintext)

        return await self.run_on_token("dek.generate", op)

    async def unwrap_data_key(self, kek: KekRef, wrapped: bytes) -> bytes:
        """The plaintext AES-256 key inside ``wrapped`` (for use in enclave memory)."""

        def op(st: TokenSession) -> bytes:
            key = st._unwrap(
                st.kek(kek),
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                wrapped,
                {**_AES_NO_USE, Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
            )
            return st.read_and_destroy(key)

        return await self.run_on_token("dek.unwrap", op)

    async def rewrap_data_key(self, old: KekRef, new: KekRef, wrapped: bytes) -> bytes:
        """Move a key from one KEK to another without it leaving the HSM (KEK rotation)."""

        def op(st: TokenSession) -> bytes:
            key = st._unwrap(
                st.kek(old),
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                wrapped,
                {**_AES_NO_USE, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True},
            )
            return st.wrap_and_destroy(st.kek(new), key)

        return await self.run_on_token("dek.rewrap", op)

    async def gcm_encrypt_in_hsm(
        self, kek: KekRef, cache_id: str, wrapped: bytes, plaintext: bytes, aad: bytes
    ) -> bytes:
        """AES-256-GCM in the HSM on a cached session copy of the key: iv || ct || tag.

        Kept to measure against AES-GCM in enclave memory (``KeyHierarchy`` picks the
        faster; see bench/bench_hsm.py). The IV comes from the HSM RNG.
        """

        def op(st: TokenSession) -> bytes:
            key = self._gcm_key(st, kek, cache_id, wrapped)
            iv = bytes(st.session.generate_random(GCM_IV_BYTES * 8))
            params = GCMParams(iv, aad, GCM_TAG_BITS)
            sealed = key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            return iv + bytes(sealed)

        return await self.run_on_token("gcm.encrypt", op)

    async def gcm_decrypt_in_hsm(
        self, kek: KekRef, cache_id: str, wrapped: bytes, blob: bytes, aad: bytes
    ) -> bytes:
        def op(st: TokenSession) -> bytes:
            key = self._gcm_key(st, kek, cache_id, wrapped)
            if len(blob) < GCM_IV_BYTES + GCM_TAG_BITS // 8:
                raise HsmUnwrapError()
            params = GCMParams(blob[:GCM_IV_BYTES], aad, GCM_TAG_BITS)
            try:
                opened = key.decrypt(
                    blob[GCM_IV_BYTES:], mechanism=Mechanism.AES_GCM, mechanism_param=params
                )
                return bytes(opened)
            except PKCS11Error:
                raise HsmUnwrapError() from None

        return await self.run_on_token("gcm.decrypt", op)

    @staticmethod
    def _gcm_key(st: TokenSession, kek: KekRef, cache_id: str, wrapped: bytes) -> Any:
        digest = _digest(wrapped)
        key = st.secret_keys.get(cache_id, digest)
        if key is None:
            key = st._unwrap(
                st.kek(kek),
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                wrapped,
                {**_AES_GCM_ONLY, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            )
            st.secret_keys.put(cache_id, digest, key)
        return key

    # -- raw secret bytes (Ed25519 / X25519 private halves) ---------------------------------

    async def wrap_bytes(self, kek: KekRef, secret: bytes) -> bytes:
        """Wrap raw secret bytes (16..512) by ``kek`` with AES-KWP, in the HSM."""
        if not 16 <= len(secret) <= 512:
            raise ValueError("secret must be 16..512 bytes")

        def op(st: TokenSession) -> bytes:
            obj = st.session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                    Attribute.TOKEN: False,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: True,
                    Attribute.VALUE: secret,
                }
            )
            return st.wrap_and_destroy(st.kek(kek), obj)

        return await self.run_on_token("bytes.wrap", op)

    async def unwrap_bytes(self, kek: KekRef, wrapped: bytes) -> bytes:
        def op(st: TokenSession) -> bytes:
            obj = st._unwrap(
                st.kek(kek),
                ObjectClass.SECRET_KEY,
                KeyType.GENERIC_SECRET,
                wrapped,
                {Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
            )
            return st.read_and_destroy(obj)

        return await self.run_on_token("bytes.unwrap", op)

    # -- RSA-4096 signing -------------------------------------------------------------------

    async def generate_rsa_signing_key(
        self, kek: KekRef, bits: int = RSA_KEY_BITS
    ) -> GeneratedKeyPair:
        """An RSA key pair generated in the HSM; private half wrapped by ``kek``."""
        if bits not in (2048, 3072, 4096):
            raise ValueError("RSA key size must be 2048, 3072 or 4096")

        def op(st: TokenSession) -> GeneratedKeyPair:
            public, private = st.session.generate_keypair(
                KeyType.RSA,
                bits,
                store=False,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={
                    **_NO_CAPS,
                    Attribute.TOKEN: False,
                    Attribute.VERIFY: True,
                    Attribute.ENCRYPT: False,
                    Attribute.WRAP: False,
                },
                private_template={
                    **_NO_CAPS,
                    Attribute.TOKEN: False,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: True,
                    Attribute.SIGN: True,
                    Attribute.DECRYPT: False,
                    Attribute.UNWRAP: False,
                },
            )
            try:
                spki = _spki_from_rsa(public[Attribute.MODULUS], public[Attribute.PUBLIC_EXPONENT])
            finally:
                _destroy_quietly(public)
            wrapped = st.wrap_and_destroy(st.kek(kek), private)
            return GeneratedKeyPair(spki, wrapped, KeyOrigin.HSM)

        return await self.run_on_token("rsa.generate", op)

    async def sign_rsa_pss(
        self, kek: KekRef, cache_id: str, wrapped_private: bytes, message: bytes
    ) -> bytes:
        """RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt, in the HSM."""

        def op(st: TokenSession) -> bytes:
            digest = _digest(wrapped_private)
            key = st.private_keys.get(cache_id, digest)
            if key is None:
                key = st._unwrap(
                    st.kek(kek),
                    ObjectClass.PRIVATE_KEY,
                    KeyType.RSA,
                    wrapped_private,
                    {
                        **_NO_CAPS,
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.SIGN: True,
                    },
                )
                st.private_keys.put(cache_id, digest, key)
            return bytes(
                key.sign(
                    message,
                    mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                    mechanism_param=RSA_PSS_PARAMS,
                )
            )

        return await self.run_on_token("rsa.sign", op)

    # -- randomness -------------------------------------------------------------------------

    async def generate_random(self, length: int) -> bytes:
        """``length`` bytes from the HSM RNG (C_GenerateRandom)."""
        if not 1 <= length <= MAX_RANDOM_BYTES:
            raise ValueError(f"length must be 1..{MAX_RANDOM_BYTES}")
        return await self.run_on_token(
            "random", lambda st: bytes(st.session.generate_random(length * 8))
        )

    def generate_random_blocking(self, length: int) -> bytes:
        if not 1 <= length <= MAX_RANDOM_BYTES:
            raise ValueError(f"length must be 1..{MAX_RANDOM_BYTES}")
        return self.run_on_token_blocking(
            "random", lambda st: bytes(st.session.generate_random(length * 8))
        )

    # -- KEK export / import under a backup transport key (backup and restore) --------------

    async def export_kek(self, kek: KekRef, transport_key: bytes) -> bytes:
        """The KEK re-wrapped under ``transport_key`` (AES-256, CKM_AES_KEY_WRAP_PAD).

        The KEK is unwrapped under the master key into an extractable, sensitive session
        copy, wrapped with the transport key (imported into the HSM as a wrap-only session
        object), and both session objects are destroyed: the KEK never leaves the HSM in
        the clear. A backup carries this blob, so a restore into another token (whose
        master key is another) can import it with ``import_kek``.
        """
        _check_transport_key(transport_key)

        def op(st: TokenSession) -> bytes:
            transport = _transport_object(st, transport_key)
            try:
                copy = st._unwrap(
                    st.master_key(),
                    ObjectClass.SECRET_KEY,
                    KeyType.AES,
                    kek.wrapped,
                    {**_AES_WRAP_ONLY, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True},
                )
                return st.wrap_and_destroy(transport, copy)
            finally:
                _destroy_quietly(transport)

        return await self.run_on_token("kek.export", op)

    async def import_kek(self, transport_key: bytes, wrapped: bytes) -> bytes:
        """A KEK exported by ``export_kek`` (on any token), re-wrapped under this token's
        master key: the blob a ``KekRef`` of this token carries. Raises ``HsmUnwrapError``
        when ``wrapped`` does not open under ``transport_key``."""
        _check_transport_key(transport_key)

        def op(st: TokenSession) -> bytes:
            transport = _transport_object(st, transport_key)
            try:
                copy = st._unwrap(
                    transport,
                    ObjectClass.SECRET_KEY,
                    KeyType.AES,
                    wrapped,
                    {**_AES_WRAP_ONLY, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True},
                )
                return st.wrap_and_destroy(st.master_key(), copy)
            finally:
                _destroy_quietly(transport)

        return await self.run_on_token("kek.import", op)


def _check_transport_key(transport_key: bytes) -> None:
    if not isinstance(transport_key, bytes) or len(transport_key) != AES_KEY_BITS // 8:
        raise ValueError("a backup transport key is 32 bytes (AES-256)")


def _transport_object(st: TokenSession, transport_key: bytes) -> Any:
    """The backup transport key as a wrap/unwrap-only, sensitive AES session object."""
    return st.session.create_object(
        {
            **{k: v for k, v in _AES_WRAP_ONLY.items() if v is not DEFAULT},
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.TOKEN: False,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.VALUE: transport_key,
        }
    )
