"""The key hierarchy: master key (in the HSM) -> KEKs -> DEKs, signing and HPKE keys.

``KeyHierarchy`` turns ``HsmBackend`` operations into keys with metadata. It is stateless
about storage: it returns ``KeyMetadata``/``KeyVersion`` records for the storage layer to
persist, and takes the KEK version a key was wrapped by as an argument (the caller looks it
up by ``version.wrapped_by``).

Where each key's secret comes from, and where it is used:

- KEK (AES-256-KWP): generated in the HSM (entropy "hsm"), wrapped by the master key,
  used only inside the HSM.
- DEK (AES-256-GCM): generated in the HSM ("hsm"), wrapped by a KEK with AES-KWP in the
  HSM, used in enclave memory.
- RSA-4096-PSS-SHA256: generated in the HSM ("hsm"), private half wrapped (PKCS#8 in
  AES-KWP), signs in the HSM (CKM_SHA256_RSA_PKCS_PSS).
- Ed25519, X25519 (HPKE): generated in the enclave from the EntropySource ("os-csprng" or
  "os-csprng+nsm"), the 32 private bytes wrapped with AES-KWP in the HSM, used in enclave
  memory.

AES-256-GCM runs in enclave memory with ``cryptography`` on the unwrapped DEK, not in the
HSM with CKM_AES_GCM: bench/bench_hsm.py measures both on SoftHSM2 and the in-memory path
is one to two orders of magnitude faster (no hop to the single PKCS#11 thread, no C_Encrypt
round trip), and the enclave is trusted memory. Unwrapped DEKs are cached per version in a
bounded LRU; ``forget`` drops them when a version changes state.

Ed25519 and X25519 are generated in the enclave because SoftHSM2 cannot wrap an
CKK_EC_EDWARDS private key (CKR_KEY_NOT_WRAPPABLE) and cannot generate X25519 keys.

Must never: hand out a KEK or the master key, produce output with a version that is not
active (or is compromised), or open a ciphertext with a version that is neither active nor
decrypt-only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from enclave.hsm.backend import HsmBackend, KekRef, MasterKeyStatus
from enclave.hsm.errors import HsmUnwrapError
from enclave.keys.entropy import EntropyKind, EntropySource
from enclave.keys.errors import (
    DecryptionFailed,
    KeyPurposeError,
    KeyStateError,
    WrongWrappingKey,
)
from enclave.keys.material import (
    NONCE_BYTES,
    Ciphertext,
    Ed25519Signer,
    SymmetricKey,
    X25519KeyPair,
    public_der,
    verify_signature,
)
from enclave.keys.metadata import (
    MASTER_KEY_REF,
    PURPOSE_ALGORITHMS,
    Algorithm,
    KeyMetadata,
    KeyPolicy,
    KeyVersion,
    Purpose,
    RotationSchedule,
    SecurityLevel,
    VersionState,
    WrappingRef,
    new_key_id,
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _ref(kek: KeyVersion) -> KekRef:
    """What the HSM needs to use ``kek`` (made only when the HSM is called)."""
    return KekRef(kek.cache_id, kek.wrapped)


@dataclass(frozen=True)
class HsmResidentKey:
    """An RSA private key: it is unwrapped only into the HSM; sign through the hierarchy."""

    key_id: str
    version: int


UsableKey = SymmetricKey | Ed25519Signer | X25519KeyPair | HsmResidentKey


class KeyHierarchy:
    def __init__(
        self,
        backend: HsmBackend,
        entropy: EntropySource | None = None,
        clock: Callable[[], datetime] = _utc_now,
        data_key_cache_size: int = 1024,
    ) -> None:
        if data_key_cache_size < 1:
            raise ValueError("data_key_cache_size must be >= 1")
        self._backend = backend
        self._entropy = entropy or EntropySource()
        self._clock = clock
        self._cache_size = data_key_cache_size
        self._data_keys: OrderedDict[str, tuple[bytes, SymmetricKey]] = OrderedDict()

    def __repr__(self) -> str:
        return f"KeyHierarchy(backend={self._backend!r}, entropy={self._entropy.kind.value})"

    async def bootstrap(self) -> MasterKeyStatus:
        """Find or generate the master key in the HSM (first step of the system bootstrap)."""
        return await self._backend.ensure_master_key()

    # -- creation and rotation --------------------------------------------------------------

    async def create_kek(
        self,
        owner: str,
        *,
        security_level: SecurityLevel = SecurityLevel.L4,
        rotation: RotationSchedule | None = None,
        expires_at: datetime | None = None,
        description: str = "",
    ) -> KeyMetadata:
        """A new KEK: AES-256 generated in the HSM, wrapped by the master key, active."""
        key_id = new_key_id()
        version = await self._new_version(key_id, 1, Algorithm.AES_256_KWP, None)
        return KeyMetadata(
            key_id=key_id,
            created_at=version.created_at,
            algorithm=Algorithm.AES_256_KWP,
            purpose=Purpose.WRAP,
            owner=owner,
            security_level=security_level,
            versions=(version,),
            expires_at=expires_at,
            rotation=rotation or RotationSchedule.quarterly(),
            description=description,
        )

    async def create_key(
        self,
        purpose: Purpose,
        algorithm: Algorithm,
        *,
        kek: KeyVersion,
        owner: str,
        security_level: SecurityLevel = SecurityLevel.L3,
        expires_at: datetime | None = None,
        rotation: RotationSchedule | None = None,
        policy: KeyPolicy | None = None,
        description: str = "",
    ) -> tuple[KeyMetadata, KeyVersion]:
        """A new key with one active version whose secret is wrapped by ``kek``."""
        if algorithm is Algorithm.AES_256_KWP:
            raise KeyPurposeError("KEKs are made by create_kek (wrapped by the master key)")
        if algorithm not in PURPOSE_ALGORITHMS[purpose]:
            raise KeyPurposeError(f"{algorithm.value} does not serve purpose {purpose.value}")
        key_id = new_key_id()
        version = await self._new_version(key_id, 1, algorithm, kek)
        metadata = KeyMetadata(
            key_id=key_id,
            created_at=version.created_at,
            algorithm=algorithm,
            purpose=purpose,
            owner=owner,
            security_level=security_level,
            versions=(version,),
            expires_at=expires_at,
            rotation=rotation or RotationSchedule.monthly(),
            policy=policy or KeyPolicy(),
            description=description,
        )
        return metadata, version

    async def rotate(self, metadata: KeyMetadata, kek: KeyVersion | None) -> KeyMetadata:
        """Add a new active version; the previous active one becomes decrypt-only."""
        if metadata.is_kek:  # wrapped by the master key
            kek = None
        elif kek is None:
            raise WrongWrappingKey("rotating a key needs the KEK to wrap its new version")
        now = self._clock()
        number = len(metadata.versions) + 1
        new = await self._new_version(metadata.key_id, number, metadata.algorithm, kek)
        rotated = metadata
        if metadata.primary is not None:
            old = metadata.primary.transition(VersionState.DECRYPT_ONLY, now)
            rotated = rotated.with_version(old)
        return rotated.with_version(new)

    async def _new_version(
        self, key_id: str, number: int, algorithm: Algorithm, kek: KeyVersion | None
    ) -> KeyVersion:
        now = self._clock()
        public: bytes | None = None
        entropy = EntropyKind.HSM
        if algorithm is Algorithm.AES_256_KWP:
            wrapped = await self._backend.generate_kek()
            wrapped_by = WrappingRef(MASTER_KEY_REF)
        else:
            if kek is None:
                raise WrongWrappingKey("this key needs a KEK")
            ref = self._kek_ref(kek, producing=True)
            wrapped_by = kek.ref
            if algorithm is Algorithm.AES_256_GCM:
                generated = await self._backend.generate_data_key(ref, with_plaintext=False)
                wrapped = generated.wrapped
            elif algorithm is Algorithm.RSA_4096_PSS_SHA256:
                pair = await self._backend.generate_rsa_signing_key(ref, 4096)
                wrapped, public = pair.wrapped_private, pair.public_key_der
            elif algorithm is Algorithm.ED25519:
                seed = self._entropy.random_bytes(32)
                public = public_der(ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key())
                wrapped = await self._backend.wrap_bytes(ref, seed)
                entropy = self._entropy.kind
            elif algorithm is Algorithm.X25519_HPKE:
                raw = self._entropy.random_bytes(32)
                public = public_der(x25519.X25519PrivateKey.from_private_bytes(raw).public_key())
                wrapped = await self._backend.wrap_bytes(ref, raw)
                entropy = self._entropy.kind
            else:  # pragma: no cover - the enum is closed
                raise KeyPurposeError(f"unsupported algorithm {algorithm.value}")
        return KeyVersion(
            key_id=key_id,
            version=number,
            algorithm=algorithm,
            state=VersionState.ACTIVE,
            created_at=now,
            state_changed_at=now,
            entropy=entropy,
            wrapped_by=wrapped_by,
            wrapped=wrapped,
            public_key=public,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def transition(
        self,
        metadata: KeyMetadata,
        number: int,
        state: VersionState,
        *,
        deletion_window: timedelta | None = None,
    ) -> KeyMetadata:
        """Move one version to ``state`` (checked), and drop its unwrapped copies."""
        version = metadata.version(number)
        if state is VersionState.ACTIVE and metadata.primary not in (None, version):
            raise KeyStateError(f"{metadata.key_id} already has an active version")
        changed = version.transition(state, self._clock(), deletion_window=deletion_window)
        await self.forget(version)
        return metadata.with_version(changed)

    async def mark_compromised(self, metadata: KeyMetadata, number: int) -> KeyMetadata:
        version = metadata.version(number)
        await self.forget(version)
        return metadata.with_version(version.mark_compromised())

    async def forget(self, version: KeyVersion) -> None:
        """Drop every unwrapped copy of ``version`` (enclave cache and HSM session objects)."""
        self._data_keys.pop(version.cache_id, None)
        await self._backend.forget(version.cache_id)

    # -- use ---------------------------------------------------------------------------------

    async def unwrap_for_use(self, version: KeyVersion, kek: KeyVersion) -> UsableKey:
        """The version's secret, ready to use (RSA: loaded into the HSM, not returned)."""
        ref = self._usable_ref(version, kek)
        try:
            if version.algorithm is Algorithm.AES_256_GCM:
                return await self._data_key(version, ref)
            if version.algorithm is Algorithm.ED25519:
                return Ed25519Signer(await self._backend.unwrap_bytes(ref, version.wrapped))
            if version.algorithm is Algorithm.X25519_HPKE:
                return X25519KeyPair(await self._backend.unwrap_bytes(ref, version.wrapped))
        except HsmUnwrapError:
            raise DecryptionFailed() from None
        if version.algorithm is Algorithm.RSA_4096_PSS_SHA256:
            return HsmResidentKey(version.key_id, version.version)
        raise KeyPurposeError(f"{version.algorithm.value} keys are not unwrapped for use")

    def _usable_ref(self, version: KeyVersion, kek: KeyVersion) -> KekRef:
        """The checks before a version's secret is used, and the KEK that unwraps it."""
        self._check_usable(version, kek)
        return _ref(kek)

    def _check_usable(self, version: KeyVersion, kek: KeyVersion) -> None:
        if not version.can_consume():
            raise KeyStateError(f"{version.cache_id} is {version.state.value}")
        self._check_kek_for(version, kek)

    async def _unwrapped_data_key(self, version: KeyVersion, kek: KeyVersion) -> SymmetricKey:
        """``unwrap_for_use`` of an AES-256-GCM version, once its checks passed."""
        try:
            return await self._data_key(version, _ref(kek))
        except HsmUnwrapError:
            raise DecryptionFailed() from None

    def _cached_data_key(self, version: KeyVersion) -> SymmetricKey | None:
        cached = self._data_keys.get(version.cache_id)
        if cached is not None and cached[0] == version.wrapped:
            self._data_keys.move_to_end(version.cache_id)
            return cached[1]
        return None

    async def _data_key(self, version: KeyVersion, ref: KekRef) -> SymmetricKey:
        cached = self._cached_data_key(version)
        if cached is not None:
            return cached
        secret = await self._backend.unwrap_data_key(ref, version.wrapped)
        key = SymmetricKey(version.key_id, version.version, secret)
        self._data_keys[version.cache_id] = (version.wrapped, key)
        while len(self._data_keys) > self._cache_size:
            self._data_keys.popitem(last=False)
        return key

    async def encrypt(
        self, version: KeyVersion, kek: KeyVersion, plaintext: bytes, context: bytes = b""
    ) -> bytes:
        """AES-256-GCM with an active version; returns the EKC1 envelope naming the version."""
        if version.algorithm is not Algorithm.AES_256_GCM:
            raise KeyPurposeError("only AES-256-GCM keys encrypt")
        if not version.can_produce():
            raise KeyStateError(f"{version.cache_id} cannot encrypt")
        # ``unwrap_for_use``, with its usual case (the key is in the cache) answered here
        # without a coroutine (nor the HSM's KEK reference): same checks, same key.
        self._check_usable(version, kek)
        key = self._cached_data_key(version)
        if key is None:
            key = await self._unwrapped_data_key(version, kek)
        nonce = self._entropy.random_bytes(NONCE_BYTES)
        return key.seal(plaintext, context, nonce)

    async def decrypt(
        self, metadata: KeyMetadata, kek: KeyVersion, blob: bytes, context: bytes = b""
    ) -> bytes:
        """Open an envelope with the version it names (active or decrypt-only)."""
        return await self.open(metadata, kek, Ciphertext.from_bytes(blob), context)

    async def open(
        self, metadata: KeyMetadata, kek: KeyVersion, ciphertext: Ciphertext, context: bytes = b""
    ) -> bytes:
        """``decrypt`` of an envelope already parsed (the service parses it once to learn
        which key it names)."""
        if ciphertext.key_id != metadata.key_id:
            raise DecryptionFailed()
        version = metadata.version(ciphertext.version)
        if version.algorithm is not Algorithm.AES_256_GCM:
            raise KeyPurposeError("only AES-256-GCM keys decrypt")
        self._check_usable(version, kek)  # ``unwrap_for_use``, as in ``encrypt``
        key = self._cached_data_key(version)
        if key is None:
            key = await self._unwrapped_data_key(version, kek)
        return key.decrypt(ciphertext, context)

    async def sign(self, version: KeyVersion, kek: KeyVersion, message: bytes) -> bytes:
        if not version.can_produce():
            raise KeyStateError(f"{version.cache_id} cannot sign")
        ref = self._kek_for(version, kek)
        if version.algorithm is Algorithm.RSA_4096_PSS_SHA256:
            try:
                return await self._backend.sign_rsa_pss(
                    ref, version.cache_id, version.wrapped, message
                )
            except HsmUnwrapError:
                raise DecryptionFailed() from None
        if version.algorithm is Algorithm.ED25519:
            signer = await self.unwrap_for_use(version, kek)
            assert isinstance(signer, Ed25519Signer)
            return signer.sign(message)
        raise KeyPurposeError(f"{version.algorithm.value} keys do not sign")

    def verify(self, version: KeyVersion, message: bytes, signature: bytes) -> None:
        """Raise ``SignatureInvalid`` unless ``signature`` is valid (active/decrypt-only)."""
        if version.algorithm not in PURPOSE_ALGORITHMS[Purpose.SIGN]:
            raise KeyPurposeError(f"{version.algorithm.value} keys do not verify")
        if not version.can_consume() or version.public_key is None:
            raise KeyStateError(f"{version.cache_id} cannot verify")
        verify_signature(version.public_key, message, signature)

    # -- helpers -----------------------------------------------------------------------------

    def _kek_for(self, version: KeyVersion, kek: KeyVersion) -> KekRef:
        self._check_kek_for(version, kek)
        return _ref(kek)

    def _check_kek_for(self, version: KeyVersion, kek: KeyVersion) -> None:
        if version.wrapped_by != kek.ref:
            raise WrongWrappingKey(f"{version.cache_id} is not wrapped by {kek.cache_id}")
        self._check_kek(kek, producing=False)

    @staticmethod
    def _kek_ref(kek: KeyVersion, *, producing: bool) -> KekRef:
        KeyHierarchy._check_kek(kek, producing=producing)
        return _ref(kek)

    @staticmethod
    def _check_kek(kek: KeyVersion, *, producing: bool) -> None:
        if kek.algorithm is not Algorithm.AES_256_KWP:
            raise KeyPurposeError(f"{kek.cache_id} is not a KEK")
        allowed = kek.can_produce() if producing else kek.can_consume()
        if not allowed:
            raise KeyStateError(f"KEK {kek.cache_id} is {kek.state.value}")

    # -- backup transport (KEK export / import) ------------------------------------------------

    async def export_kek_version(self, version: KeyVersion, transport_key: bytes) -> bytes:
        """A KEK version's key re-wrapped under a backup transport key, in the HSM."""
        if version.algorithm is not Algorithm.AES_256_KWP or not version.wrapped_by.is_master:
            raise KeyPurposeError(f"{version.cache_id} is not a KEK")
        return await self._backend.export_kek(
            KekRef(version.cache_id, version.wrapped), transport_key
        )

    async def import_kek_version(
        self, version: KeyVersion, transport_key: bytes, exported: bytes
    ) -> KeyVersion:
        """``version`` with its key taken from ``exported`` (``export_kek_version`` on any
        token) and wrapped under this HSM's master key. Raises ``DecryptionFailed`` when the
        blob does not open under the transport key."""
        if version.algorithm is not Algorithm.AES_256_KWP or not version.wrapped_by.is_master:
            raise KeyPurposeError(f"{version.cache_id} is not a KEK")
        try:
            wrapped = await self._backend.import_kek(transport_key, exported)
        except HsmUnwrapError:
            raise DecryptionFailed() from None
        await self._backend.forget(version.cache_id)
        return replace(version, wrapped=wrapped)
