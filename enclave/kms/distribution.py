"""Key distribution to attested clients (the seed's Key Distribution activity) and
cross-platform sharing keys.

Release: the client asks for a single-use challenge (``release_challenge``), makes an
ephemeral X25519 key pair inside its enclave, and sends evidence whose report_data is
``release_report_data(public key, challenge)``. The KMS verifies the evidence (the
``Verifier``: genuine, at the KMS clock's time), appraises it against the key's release
policy (kind ``release_policies``: reference measurements, debug off, minimum TCB...),
checks the binding, and returns the key's active version HPKE-wrapped to that public key
with a release id; never a plaintext. ``confirm_receipt`` checks the client's proof (an
HMAC only a holder of the unwrapped key can compute) and records the distribution (kind
``releases``).

Sharing: ``create_sharing_key`` makes a temporary AES-256-GCM key between the caller and a
verified target principal, with a TTL (the key's expiry) and usage monitoring: every use is
counted (kind ``sharing``) and audited, and every use after expiry is refused, decrypt
included.

Must never: release a key without verified evidence meeting its release policy and bound
to the wrapping key and a fresh challenge; release an HSM-resident (RSA) key or a KEK;
return key material other than HPKE-wrapped; let a sharing key work after its TTL.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from enclave.auth.access import AccessDenied
from enclave.auth.principals import Level, Principal
from enclave.keys.hierarchy import KeyHierarchy
from enclave.keys.material import Ed25519Signer, SymmetricKey, X25519KeyPair
from enclave.keys.metadata import Algorithm, KeyMetadata, KeyVersion, Purpose
from enclave.kms import persist
from enclave.kms.challenges import CHALLENGE_BYTES, ChallengeBook
from enclave.kms.errors import (
    ChallengeInvalid,
    InvalidRequest,
    KeyUnusable,
    NotFound,
    ReleaseRefused,
    SharingExpired,
)
from enclave.kms.guard import AuditNote, Guard
from enclave.kms.keys import KeyRepository, KeyService, check_key_id, key_errors
from enclave.kms.principals import PrincipalStore
from enclave.kms.release import (
    X25519_KEY_SIZE,
    ReleaseError,
    check_receipt,
    release_report_data,
    wrap_for_client,
)
from enclave.storage.store import Transaction
from verifier.claims import PLATFORMS, Platform
from verifier.errors import InvalidPolicy, VerificationError
from verifier.policy import Policy
from verifier.verify import Verifier

MAX_EVIDENCE_BYTES = 64 * 1024
MAX_CERTS = 8
MAX_SHARING_TTL = timedelta(days=30)
MIN_SHARING_TTL = timedelta(seconds=1)


@dataclass(frozen=True)
class Release:
    """A key version HPKE-wrapped to the client's attested public key."""

    release_id: str
    key_id: str
    version: int
    algorithm: Algorithm
    wrapped: bytes


@dataclass(frozen=True)
class ReleaseRecord:
    release_id: str
    key_id: str
    version: int
    principal_id: str
    platform: str
    measurement: str
    released_at: datetime
    confirmed_at: datetime | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReleaseRecord:
        return cls(
            d["release_id"], d["key_id"], int(d["version"]), d["principal_id"], d["platform"],
            d["measurement"], datetime.fromisoformat(d["released_at"]),
            None if d["confirmed_at"] is None else datetime.fromisoformat(d["confirmed_at"]),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "release_id": self.release_id, "key_id": self.key_id, "version": self.version,
            "principal_id": self.principal_id, "platform": self.platform,
            "measurement": self.measurement, "released_at": self.released_at.isoformat(),
            "confirmed_at": None if self.confirmed_at is None else self.confirmed_at.isoformat(),
        }  # fmt: skip


@dataclass(frozen=True)
class SharingKey:
    key_id: str
    source: str
    target: str
    created_at: datetime
    expires_at: datetime
    uses: int

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "source": self.source, "target": self.target,
                "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat(), "uses": self.uses}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SharingKey:
        return cls(d["key_id"], d["source"], d["target"], datetime.fromisoformat(d["created_at"]),
                   datetime.fromisoformat(d["expires_at"]), int(d["uses"]))  # fmt: skip


def _platform(name: object) -> Platform:
    for platform in PLATFORMS:
        if name == platform:
            return platform
    raise InvalidRequest(f"platform must be one of {', '.join(PLATFORMS)}")


def _material(usable: object) -> bytes:
    if isinstance(usable, SymmetricKey):
        return usable.secret
    if isinstance(usable, Ed25519Signer):
        return usable.seed
    if isinstance(usable, X25519KeyPair):
        return usable.private_bytes
    raise InvalidRequest("this key lives in the HSM and is never released")


class DistributionService:
    def __init__(
        self,
        *,
        repo: KeyRepository,
        hierarchy: KeyHierarchy,
        guard: Guard,
        verifier: Verifier,
        keys: KeyService,
        principals: PrincipalStore,
        challenges: ChallengeBook,
        clock: Callable[[], datetime],
    ) -> None:
        self._repo = repo
        self._store = repo.store
        self._hierarchy = hierarchy
        self._guard = guard
        self._verifier = verifier
        self._keys = keys
        self._principals = principals
        self._challenges = challenges
        self._clock = clock
        self._sharing_ids: set[str] | None = None

    # -- release policy ----------------------------------------------------------------
    async def set_release_policy(self, caller: Principal, key_id: str, policy: Policy) -> None:
        """Make the key releasable to attested clients whose evidence meets ``policy``."""
        document: dict[str, Any] = {}

        def validate(note: AuditNote) -> None:
            check_key_id(key_id)
            if not isinstance(policy, Policy):
                raise InvalidRequest("policy is a verifier Policy")
            document.update(policy.to_json())
            try:
                Policy.from_mapping(document)
            except InvalidPolicy as exc:
                raise InvalidRequest(f"the policy does not round-trip: {exc}") from None
            if not policy.measurements:
                raise InvalidRequest("a release policy names at least one reference measurement")
            note.details["policy"] = document

        async def body(note: AuditNote) -> None:
            async def change(m: KeyMetadata) -> KeyMetadata:
                if m.algorithm is Algorithm.RSA_4096_PSS_SHA256:
                    raise InvalidRequest("RSA keys live in the HSM and are never released")
                return replace(m, policy=replace(m.policy, exportable=True))

            def extra(tx: Transaction, old: KeyMetadata, new: KeyMetadata) -> None:
                tx.put(persist.RELEASE_POLICIES, key_id, persist.dump(document))

            await self._repo.update(key_id, change, extra=extra)

        await self._guard.run("keys.set_release_policy", caller, body, key_id=key_id,
                              validate=validate)  # fmt: skip

    def _release_policy(self, key_id: str) -> Policy | None:
        value, version = persist.read(self._store, persist.RELEASE_POLICIES, key_id)
        return Policy.from_mapping(value) if version else None

    # -- release -----------------------------------------------------------------------
    def release_challenge(self) -> bytes:
        """A single-use challenge (TTL) for one release request. Changes no stored state."""
        return self._challenges.issue()

    async def release_key(
        self,
        caller: Principal,
        key_id: str,
        *,
        platform: str,
        evidence: bytes,
        client_public_key: bytes,
        challenge: bytes,
        certs: Sequence[bytes] = (),
        collateral: Sequence[bytes] = (),
    ) -> Release:
        checked: dict[str, Any] = {}

        def validate(note: AuditNote) -> None:
            check_key_id(key_id)
            checked["platform"] = _platform(platform)
            if not isinstance(evidence, bytes) or not 0 < len(evidence) <= MAX_EVIDENCE_BYTES:
                raise InvalidRequest(f"evidence is 1..{MAX_EVIDENCE_BYTES} bytes")
            if not isinstance(client_public_key, bytes) or len(client_public_key) != 32:
                raise InvalidRequest("client_public_key is a raw 32-byte X25519 key")
            if not isinstance(challenge, bytes) or len(challenge) != CHALLENGE_BYTES:
                raise InvalidRequest(f"the challenge is {CHALLENGE_BYTES} bytes")
            if len(certs) > MAX_CERTS or len(collateral) > MAX_CERTS:
                raise InvalidRequest(f"at most {MAX_CERTS} certificates and collateral files")
            note.details["platform"] = platform

        async def body(note: AuditNote) -> Release:
            # Used up by any authorised attempt, so a challenge never serves two tries.
            if not self._challenges.consume(challenge):
                raise ChallengeInvalid("the release challenge is unknown, used or expired")
            metadata = self._repo.require(key_id)
            policy = self._release_policy(key_id)
            if not metadata.policy.exportable or policy is None:
                raise ReleaseRefused(f"{key_id} has no release policy", "not-releasable")
            if metadata.purpose is Purpose.WRAP or metadata.algorithm is (
                Algorithm.RSA_4096_PSS_SHA256
            ):
                raise ReleaseRefused(f"{key_id} is never released", "not-releasable")
            if metadata.is_expired(self._clock()):
                raise KeyUnusable(f"{key_id} has expired")
            version = metadata.primary
            if version is None or not version.can_produce():
                raise KeyUnusable(f"{key_id} has no active version")
            try:
                claims = self._verifier.verify_and_appraise(
                    checked["platform"], evidence, policy=policy, at=self._clock(),
                    certs=tuple(certs), collateral=tuple(collateral),
                    expected_report_data=release_report_data(client_public_key, challenge),
                )  # fmt: skip
            except VerificationError as exc:
                note.details["verification"] = exc.type
                raise ReleaseRefused(
                    f"the evidence does not allow release: {exc.type}", exc.type
                ) from None
            note.key_version = version.version
            note.details["measurement"] = claims.measurement.hex()
            material = await self._material(version)
            try:
                wrapped = wrap_for_client(material, client_public_key, key_id, version.version)
            except ReleaseError as exc:
                raise InvalidRequest(str(exc)) from None
            release_id = "rel_" + secrets.token_hex(16)
            record = ReleaseRecord(
                release_id, key_id, version.version, caller.id, checked["platform"],
                claims.measurement.hex(), self._clock(), None,
            )  # fmt: skip
            self._store.put(persist.RELEASES, release_id, persist.dump(record.to_dict()),
                            expected_version=0)  # fmt: skip
            note.details["release_id"] = release_id
            return Release(release_id, key_id, version.version, metadata.algorithm, wrapped)

        return await self._guard.run("keys.release", caller, body, key_id=key_id,
                                     validate=validate)  # fmt: skip

    async def _material(self, version: KeyVersion) -> bytes:
        with key_errors():
            usable = await self._hierarchy.unwrap_for_use(version, self._repo.kek_for(version))
        return _material(usable)

    async def confirm_receipt(
        self, caller: Principal, release_id: str, proof: str
    ) -> ReleaseRecord:
        """The client's acknowledgement: ``receipt_proof(material, release_id)``."""
        found: dict[str, Any] = {}

        def validate(note: AuditNote) -> str:
            if not isinstance(release_id, str) or not release_id.startswith("rel_"):
                raise InvalidRequest("release_id is rel_ followed by hex")
            if not isinstance(proof, str) or len(proof) != 64:
                raise InvalidRequest("proof is 64 hex characters")
            value, version = persist.read(self._store, persist.RELEASES, release_id)
            if not version:
                raise NotFound(f"no release {release_id}")
            record = ReleaseRecord.from_dict(value)
            found["record"] = record
            note.key_version = record.version
            note.details["release_id"] = release_id
            return record.key_id

        async def body(note: AuditNote) -> ReleaseRecord:
            record: ReleaseRecord = found["record"]
            if record.principal_id != caller.id:
                raise AccessDenied(f"{release_id} was released to another principal")
            metadata = self._repo.require(record.key_id)
            material = await self._material(metadata.version(record.version))
            if not check_receipt(material, release_id, proof):
                raise InvalidRequest("the receipt proof does not match the released key")

            def change(value: dict[str, Any]) -> dict[str, Any]:
                current = ReleaseRecord.from_dict(value)
                if current.confirmed_at is not None:
                    return value
                return replace(current, confirmed_at=self._clock()).to_dict()

            return ReleaseRecord.from_dict(
                persist.update(self._store, persist.RELEASES, release_id, change)
            )

        return await self._guard.run("keys.confirm_receipt", caller, body, validate=validate)

    # -- sharing -----------------------------------------------------------------------
    async def create_sharing_key(
        self, caller: Principal, target_id: str, ttl: timedelta
    ) -> SharingKey:
        """A temporary AES-256-GCM key for the caller and ``target_id`` (both verified:
        registered and active), usable by both until ``ttl`` has passed."""

        def validate(note: AuditNote) -> None:
            if not isinstance(ttl, timedelta) or not MIN_SHARING_TTL <= ttl <= MAX_SHARING_TTL:
                raise InvalidRequest("the sharing TTL is 1 second to 30 days")
            if target_id == caller.id:
                raise InvalidRequest("sharing needs two parties")
            note.details.update(target=target_id, ttl_seconds=int(ttl.total_seconds()))

        async def body(note: AuditNote) -> SharingKey:
            target = self._principals.get(target_id)
            if target is None or not target.active:
                raise NotFound(f"no active principal {target_id}")
            now = self._clock()
            holder: dict[str, SharingKey] = {}

            def extra(tx: Transaction, metadata: KeyMetadata) -> None:
                sharing = SharingKey(metadata.key_id, caller.id, target_id, now, now + ttl, 0)
                tx.put(persist.SHARING, metadata.key_id, persist.dump(sharing.to_dict()),
                       expected_version=0)  # fmt: skip
                holder["sharing"] = sharing

            metadata = await self._keys.new_key(
                Purpose.ENCRYPT, Algorithm.AES_256_GCM, owner=caller.id, granted_by=caller.id,
                description=f"sharing key {caller.id} -> {target_id}", expires_at=now + ttl,
                extra_grants=((target_id, Level.USE_KEY),), extra=extra,
            )  # fmt: skip
            self._known_sharing().add(metadata.key_id)
            note.key_id, note.key_version = metadata.key_id, 1
            return holder["sharing"]

        return await self._guard.run("sharing.create", caller, body, validate=validate)

    async def sharing_status(self, caller: Principal, key_id: str) -> SharingKey:
        async def body(note: AuditNote) -> SharingKey:
            value, version = persist.read(self._store, persist.SHARING, key_id)
            if not version:
                raise NotFound(f"{key_id} is not a sharing key")
            return SharingKey.from_dict(value)

        return await self._guard.run("sharing.status", caller, body, key_id=key_id)

    def _known_sharing(self) -> set[str]:
        if self._sharing_ids is None:
            self._sharing_ids = {ref.id for ref in self._store.list(persist.SHARING)}
        return self._sharing_ids

    def note_use(self, metadata: KeyMetadata, operation: str) -> None:
        """Usage monitoring for sharing keys: count each use, refuse after the TTL (the
        crypto service calls this before it uses any key). Synchronous (the store is), so
        the crypto path does not make two coroutines per request to reach the set check."""
        if metadata.key_id not in self._known_sharing():
            return
        now = self._clock()

        def change(value: dict[str, Any]) -> dict[str, Any]:
            sharing = SharingKey.from_dict(value)
            if now >= sharing.expires_at:
                raise SharingExpired(f"{metadata.key_id} expired at {sharing.expires_at}")
            return replace(sharing, uses=sharing.uses + 1).to_dict()

        persist.update(self._store, persist.SHARING, metadata.key_id, change)


__all__ = ["X25519_KEY_SIZE", "DistributionService", "Release", "ReleaseRecord", "SharingKey"]
