"""Cross-region replication: release a bundle's backup key to an attested secondary KMS.

Bundles themselves travel through untrusted hosts and object stores (they are encrypted and
signed, ``enclave.backup.bundle``); what must not travel in the clear is the backup key.
The secondary gets it only by proving, with hardware evidence, that it runs reviewed code:

1. the primary issues a single-use challenge (32 random bytes, short-lived, bounded count:
   ``ReplicationPrimary.issue_challenge``);
2. the secondary makes an ephemeral X25519 key pair inside its enclave and evidence whose
   report_data is ``release_report_data(public key, challenge)`` (``enclave.kms.release``:
   SHA-512("kms-key-release/v1" || 0x00 || SHA-256(public key) || challenge)), and sends
   ``ReplicationRequest`` (``ReplicationSecondary.request``);
3. the primary consumes the challenge, verifies the evidence with the ``Verifier`` (genuine,
   bound to that key and that challenge) and appraises the claims against the reference
   ``Policy`` (measurements as reviewed data; simulated roots only when the policy names
   them); only then it HPKE-wraps the backup key to the attested public key
   (``wrap_for_client``, info naming the primary and the backup id);
4. the secondary unwraps it inside its enclave (``ReplicationSecondary.unwrap``) and opens
   the bundle with ``decrypt_bundle``.

Every step is audited (``replication.release``: allowed, or denied with the reason).
A secondary with another measurement gets ``MeasurementRefused``; bad evidence
``AttestationInvalid``; a replayed, unknown or stale challenge ``ChallengeInvalid``.

Whether a standing policy suffices or each release needs a quorum proposal
(``backup.replicate``, ``enclave.governance``) is the wiring's choice; this module checks
attestation only. It must never release a key before both the evidence and the policy
passed, nor to a key the evidence does not bind.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave.attestation.evidence import EvidenceProvider
from enclave.backup.bundle import BACKUP_KEY_BYTES, BackupKey
from enclave.backup.errors import (
    AttestationInvalid,
    ChallengeInvalid,
    MeasurementRefused,
    ReplicationRefused,
)
from enclave.backup.manifest import BACKUP_ID_RE
from enclave.kms.release import (
    ReleaseError,
    release_report_data,
    unwrap_released,
    wrap_for_client,
)
from verifier.claims import Claims, Platform, parse_platform
from verifier.errors import PolicyViolation, VerificationError
from verifier.policy import Policy
from verifier.verify import Verifier

CHALLENGE_BYTES = 32
X25519_KEY_BYTES = 32
MAX_EVIDENCE_BYTES = 64 * 1024
MAX_CERTS = 8
RELEASE_VERSION = 1
AuditFn = Callable[..., Awaitable[object]]


@dataclass(frozen=True)
class ReplicationConfig:
    challenge_ttl: timedelta = timedelta(minutes=2)
    max_challenges: int = 64


@dataclass(frozen=True)
class Challenge:
    value: bytes
    expires_at: datetime

    def to_dict(self) -> dict[str, str]:
        return {"challenge": _b64(self.value), "expires_at": self.expires_at.isoformat()}


@dataclass(frozen=True)
class ReplicationRequest:
    """What a secondary sends: evidence binding its public key to the primary's challenge."""

    platform: Platform
    evidence: bytes = field(repr=False)
    public_key: bytes
    challenge: bytes
    certs: tuple[bytes, ...] = field(default=(), repr=False)
    collateral: tuple[bytes, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, bytes) or len(self.public_key) != X25519_KEY_BYTES:
            raise AttestationInvalid("the secondary's public key is 32 bytes (X25519)")
        if not isinstance(self.challenge, bytes) or len(self.challenge) != CHALLENGE_BYTES:
            raise ChallengeInvalid("a challenge is 32 bytes")
        if not isinstance(self.evidence, bytes) or not 0 < len(self.evidence) <= MAX_EVIDENCE_BYTES:
            raise AttestationInvalid(f"evidence is 1..{MAX_EVIDENCE_BYTES} bytes")
        if len(self.certs) + len(self.collateral) > 2 * MAX_CERTS:
            raise AttestationInvalid("too many certificates or collateral documents")
        if not all(
            isinstance(c, bytes) and len(c) <= MAX_EVIDENCE_BYTES
            for c in (*self.certs, *self.collateral)
        ):
            raise AttestationInvalid("certificates and collateral are bounded bytes")

    def to_dict(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "evidence": _b64(self.evidence),
            "public_key": _b64(self.public_key),
            "challenge": _b64(self.challenge),
            "certs": [_b64(c) for c in self.certs],
            "collateral": [_b64(c) for c in self.collateral],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplicationRequest:
        keys = {"platform", "evidence", "public_key", "challenge", "certs", "collateral"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise AttestationInvalid("a replication request has exactly the fields of its form")
        try:
            return cls(
                platform=parse_platform(data["platform"]),
                evidence=_unb64(data["evidence"]),
                public_key=_unb64(data["public_key"]),
                challenge=_unb64(data["challenge"]),
                certs=tuple(_unb64(c) for c in data["certs"]),
                collateral=tuple(_unb64(c) for c in data["collateral"]),
            )
        except VerificationError:
            raise AttestationInvalid("unknown platform") from None


@dataclass(frozen=True)
class KeyRelease:
    """The backup key, HPKE-wrapped to the secondary's attested key."""

    primary: str
    backup_id: str
    wrapped: bytes = field(repr=False)

    def to_dict(self) -> dict[str, str]:
        return {"primary": self.primary, "backup_id": self.backup_id, "wrapped": _b64(self.wrapped)}


def release_key_id(primary: str, backup_id: str) -> str:
    """The HPKE info's key id: names the releasing KMS and the backup."""
    return f"backup-replication/{primary}/{backup_id}"


class ReplicationPrimary:
    """The primary's side. One per app; challenges live in memory (single use)."""

    def __init__(
        self,
        *,
        verifier: Verifier,
        policy: Policy,
        kms_identity: str,
        audit: AuditFn,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        config: ReplicationConfig | None = None,
    ) -> None:
        if not policy.measurements:
            # Fail closed: a policy without reference measurements would accept any code.
            raise ValueError("the replication policy must name reference measurements")
        self._verifier = verifier
        self.policy = policy
        self.kms_identity = kms_identity
        self._audit = audit
        self._clock = clock
        self.config = config or ReplicationConfig()
        self._challenges: dict[bytes, datetime] = {}

    def issue_challenge(self) -> Challenge:
        now = self._clock()
        self._expire(now)
        if len(self._challenges) >= self.config.max_challenges:
            raise ChallengeInvalid("too many outstanding challenges; retry shortly")
        value = secrets.token_bytes(CHALLENGE_BYTES)
        expires = now + self.config.challenge_ttl
        self._challenges[value] = expires
        return Challenge(value, expires)

    async def release_backup_key(
        self, request: ReplicationRequest, backup_key: BackupKey
    ) -> KeyRelease:
        """Verify the secondary's evidence and policy; only then wrap the key to it."""
        now = self._clock()
        self._expire(now)
        details: dict[str, Any] = {"backup_id": backup_key.backup_id, "platform": request.platform}
        if not self._take_challenge(request.challenge, now):
            await self._record("anonymous", "denied", {**details, "reason": ChallengeInvalid.type})
            raise ChallengeInvalid("the challenge is unknown, used or expired")
        try:
            claims = self._verifier.verify(
                request.platform,
                request.evidence,
                at=now,
                certs=request.certs,
                collateral=request.collateral,
                expected_report_data=release_report_data(request.public_key, request.challenge),
            )
        except VerificationError as exc:
            await self._record(
                "anonymous",
                "denied",
                {**details, "reason": AttestationInvalid.type, "check": type(exc).__name__},
            )
            raise AttestationInvalid(f"the secondary's evidence did not verify: {exc}") from None
        principal = _principal(claims)
        details["measurement"] = claims.measurement.hex()
        try:
            self.policy.evaluate(claims, now)
        except PolicyViolation as exc:
            mismatches = tuple(
                f"{m.field}: {m.seen} (expected {m.expected})" for m in exc.mismatches
            )
            await self._record(
                principal,
                "denied",
                {**details, "reason": MeasurementRefused.type, "mismatches": list(mismatches)},
            )
            raise MeasurementRefused(
                "the secondary's claims do not meet the reference policy", mismatches
            ) from None
        try:
            wrapped = wrap_for_client(
                backup_key.secret,
                request.public_key,
                release_key_id(self.kms_identity, backup_key.backup_id),
                RELEASE_VERSION,
            )
        except ReleaseError as exc:
            await self._record(principal, "denied", {**details, "reason": "bad-public-key"})
            raise AttestationInvalid(str(exc)) from None
        await self._record(principal, "allowed", details)
        return KeyRelease(self.kms_identity, backup_key.backup_id, wrapped)

    def _take_challenge(self, challenge: bytes, now: datetime) -> bool:
        found: bytes | None = None
        for value in self._challenges:
            if constant_time.bytes_eq(value, challenge):
                found = value
        if found is None:
            return False
        expires = self._challenges.pop(found)  # single use, even when it has expired
        return now < expires

    def _expire(self, now: datetime) -> None:
        for value in [v for v, exp in self._challenges.items() if exp <= now]:
            del self._challenges[value]

    async def _record(self, principal: str, outcome: str, details: Mapping[str, Any]) -> None:
        await self._audit(
            principal=principal,
            operation="replication.release",
            outcome=outcome,
            details={"kms_id": self.kms_identity, **details},
        )


class ReplicationSecondary:
    """The secondary's side: an ephemeral key made in the enclave, evidence bound to it."""

    def __init__(self, provider: EvidenceProvider) -> None:
        self._provider = provider
        self._private = X25519PrivateKey.generate()

    @property
    def public_key(self) -> bytes:
        return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def request(self, challenge: bytes | Challenge) -> ReplicationRequest:
        value = challenge.value if isinstance(challenge, Challenge) else challenge
        evidence = self._provider.evidence(release_report_data(self.public_key, value))
        return ReplicationRequest(
            platform=evidence.platform,
            evidence=evidence.evidence,
            public_key=self.public_key,
            challenge=value,
            certs=tuple(evidence.certs),
            collateral=tuple(evidence.collateral),
        )

    def unwrap(self, release: KeyRelease) -> BackupKey:
        if not BACKUP_ID_RE.fullmatch(release.backup_id):
            raise ReplicationRefused("the release names no valid backup id")
        try:
            secret = unwrap_released(
                release.wrapped,
                self._private,
                release_key_id(release.primary, release.backup_id),
                RELEASE_VERSION,
            )
        except Exception:
            raise ReplicationRefused("the released key did not unwrap with this key") from None
        if len(secret) != BACKUP_KEY_BYTES:
            raise ReplicationRefused("the released key has the wrong size")
        return BackupKey(release.backup_id, secret)


def _principal(claims: Claims) -> str:
    return f"replica:{claims.platform}:{claims.measurement.hex()[:32]}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object) -> bytes:
    if not isinstance(value, str):
        raise AttestationInvalid("binary fields are base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AttestationInvalid("binary fields are base64 text") from None


__all__ = [
    "Challenge",
    "KeyRelease",
    "ReplicationConfig",
    "ReplicationPrimary",
    "ReplicationRequest",
    "ReplicationSecondary",
]
