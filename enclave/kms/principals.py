"""Principals on the store, and the admin side of the seed's New Client Onboarding.

``PrincipalStore`` persists principals (kind ``principals``) and implements the
``PrincipalDirectory`` protocol that the token authenticator and the guard read, with an
in-memory read cache that every write through this store invalidates.

``PrincipalService`` holds the admin operations: register a key-holding principal
(identity verification is a proof of possession: an Ed25519 signature over a single-use
server challenge), register an attested workload (identified by its reference
measurements), disable, enable, isolate; and ``authenticate_workload``, which turns
verified evidence bound to a challenge into the workload principal it matches.

Must never: register a public key without its proof of possession, let a principal change
its own standing, or authenticate a workload whose evidence fails verification or policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave.auth.principals import (
    PRINCIPAL_KINDS,
    Level,
    Principal,
    PrincipalKind,
    new_principal_id,
)
from enclave.kms import persist
from enclave.kms.challenges import ChallengeBook
from enclave.kms.errors import (
    ChallengeInvalid,
    IdentityProofInvalid,
    InvalidRequest,
    NotFound,
    ReleaseRefused,
    StateConflict,
)
from enclave.kms.guard import AuditNote, Guard
from enclave.storage.store import Store, Transaction
from verifier.claims import PLATFORMS, Platform
from verifier.errors import VerificationError
from verifier.policy import Policy
from verifier.verify import Verifier

IDENTITY_PROOF_LABEL = b"kms-onboarding-proof/v1"
WORKLOAD_AUTH_LABEL = b"kms-workload-auth/v1"
MAX_NAME = 128
MAX_MEASUREMENTS = 32
MAX_CACHED_PRINCIPALS = 10_000


def identity_proof_message(challenge: bytes, public_key: bytes, name: str) -> bytes:
    """What a new principal signs with its Ed25519 key to prove it holds it."""
    return (
        IDENTITY_PROOF_LABEL + b"\x00" + hashlib.sha256(public_key).digest()
        + hashlib.sha256(name.encode()).digest() + challenge
    )  # fmt: skip


def workload_report_data(principal_id: str, challenge: bytes) -> bytes:
    """The 64 bytes a workload binds into its evidence to authenticate as ``principal_id``."""
    return hashlib.sha512(
        WORKLOAD_AUTH_LABEL + b"\x00" + principal_id.encode() + b"\x00" + challenge
    ).digest()


class PrincipalStore:
    """``PrincipalDirectory`` on the store, with a read cache invalidated on writes."""

    KIND = persist.PRINCIPALS

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, Principal] = {}

    def get(self, principal_id: str) -> Principal | None:
        cached = self._cache.get(principal_id)
        if cached is not None:
            return cached
        if not isinstance(principal_id, str) or not principal_id.startswith("prn_"):
            return None
        value, version = persist.read(self._store, self.KIND, principal_id)
        if version == 0:
            return None
        principal = _principal(value)
        if len(self._cache) >= MAX_CACHED_PRINCIPALS:
            self._cache.clear()
        self._cache[principal_id] = principal
        return principal

    def all(self) -> list[Principal]:
        out = []
        for ref in self._store.list(self.KIND):
            principal = self.get(ref.id)
            if principal is not None:
                out.append(principal)
        return out

    def create(self, principal: Principal, tx: Transaction | None = None) -> None:
        target = tx if tx is not None else self._store
        target.put(self.KIND, principal.id, persist.dump(principal.to_dict()), expected_version=0)
        self.invalidate(principal.id)

    def update(self, principal_id: str, change: Callable[[Principal], Principal]) -> Principal:
        def apply(value: dict[str, Any]) -> dict[str, Any]:
            if not value:
                raise NotFound(f"no principal {principal_id}")
            return change(_principal(value)).to_dict()

        try:
            updated = persist.update(self._store, self.KIND, principal_id, apply)
        finally:
            self.invalidate(principal_id)
        return _principal(updated)

    def invalidate(self, principal_id: str | None = None) -> None:
        if principal_id is None:
            self._cache.clear()
        else:
            self._cache.pop(principal_id, None)


def _principal(value: dict[str, Any]) -> Principal:
    try:
        return Principal.from_dict(value)
    except (KeyError, ValueError, TypeError) as exc:
        from enclave.kms.errors import StoredStateInvalid

        raise StoredStateInvalid(f"a stored principal does not parse: {exc}") from None


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise InvalidRequest(f"a principal name is 1..{MAX_NAME} printable characters")
    return name


def _check_level(level: object) -> Level | None:
    if level is None:
        return None
    try:
        if not isinstance(level, int) or isinstance(level, bool):
            raise TypeError
        return Level(level)
    except (ValueError, TypeError):
        raise InvalidRequest("system_level must be 0..4 or None") from None


def _check_kind(kind: object, allowed: Sequence[str]) -> PrincipalKind:
    for known in PRINCIPAL_KINDS:
        if kind == known and known in allowed:
            return known
    raise InvalidRequest(f"principal kind must be one of {', '.join(allowed)}")


class PrincipalService:
    def __init__(
        self,
        principals: PrincipalStore,
        guard: Guard,
        challenges: ChallengeBook,
        verifier: Verifier,
        clock: Callable[[], datetime],
        *,
        workload_policy: Policy,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._principals = principals
        self._guard = guard
        self._challenges = challenges
        self._verifier = verifier
        self._clock = clock
        self._workload_policy = workload_policy
        self._on_change = on_change

    def identity_challenge(self) -> bytes:
        """A single-use challenge for a new principal's proof of possession (or for a
        workload's evidence). Issuing one changes no stored state."""
        return self._challenges.issue()

    async def register(
        self,
        caller: Principal,
        *,
        name: str,
        kind: str,
        public_key: bytes,
        challenge: bytes,
        proof: bytes,
        system_level: Level | None = None,
    ) -> Principal:
        """Onboarding steps 1-2: registration and identity verification (level 4, system)."""
        checked: dict[str, Any] = {}

        def validate(note: AuditNote) -> None:
            checked["name"] = _check_name(name)
            checked["kind"] = _check_kind(kind, ("service", "admin", "auditor"))
            checked["level"] = _check_level(system_level)
            if not isinstance(public_key, bytes) or len(public_key) != 32:
                raise InvalidRequest("public_key is a raw 32-byte Ed25519 key")
            if not isinstance(proof, bytes) or not isinstance(challenge, bytes):
                raise InvalidRequest("challenge and proof are bytes")
            note.details.update(name=name, kind=kind, level=system_level)

        async def body(note: AuditNote) -> Principal:
            if not self._challenges.consume(challenge):
                raise ChallengeInvalid("the onboarding challenge is unknown, used or expired")
            message = identity_proof_message(challenge, public_key, checked["name"])
            try:
                Ed25519PublicKey.from_public_bytes(public_key).verify(proof, message)
            except (InvalidSignature, ValueError):
                raise IdentityProofInvalid(
                    "the proof does not verify with the public key being registered"
                ) from None
            principal = Principal(
                id=new_principal_id(),
                name=checked["name"],
                kind=checked["kind"],
                public_key=public_key,
                system_level=checked["level"],
                created_at=self._clock(),
            )
            self._principals.create(principal)
            note.details["principal_id"] = principal.id
            return principal

        return await self._guard.run("principals.register", caller, body, validate=validate)

    async def register_workload(
        self,
        caller: Principal,
        *,
        name: str,
        measurements: Sequence[bytes],
        system_level: Level | None = None,
    ) -> Principal:
        """An attested workload principal: identified by evidence matching a measurement."""
        checked: dict[str, Any] = {}

        def validate(note: AuditNote) -> None:
            checked["name"] = _check_name(name)
            checked["level"] = _check_level(system_level)
            values = list(measurements) if not isinstance(measurements, bytes) else []
            if not 1 <= len(values) <= MAX_MEASUREMENTS or not all(
                isinstance(m, bytes) and len(m) in (32, 48) for m in values
            ):
                raise InvalidRequest(
                    f"1..{MAX_MEASUREMENTS} measurements of 32 or 48 bytes are needed"
                )
            checked["measurements"] = tuple(m.hex() for m in values)
            note.details.update(name=name, measurements=list(checked["measurements"]))

        async def body(note: AuditNote) -> Principal:
            principal = Principal(
                id=new_principal_id(),
                name=checked["name"],
                kind="workload",
                public_key=None,
                system_level=checked["level"],
                created_at=self._clock(),
                workload_measurements=checked["measurements"],
            )
            self._principals.create(principal)
            note.details["principal_id"] = principal.id
            return principal

        return await self._guard.run(
            "principals.register_workload", caller, body, validate=validate
        )

    async def authenticate_workload(
        self,
        principal_id: str,
        *,
        platform: str,
        evidence: bytes,
        challenge: bytes,
        certs: Sequence[bytes] = (),
        collateral: Sequence[bytes] = (),
    ) -> Principal:
        """The workload principal whose measurement the evidence carries (evidence bound to
        ``workload_report_data(principal_id, challenge)``, meeting the workload policy)."""
        note = AuditNote(details={"platform": platform})

        async def body(note: AuditNote) -> Principal:
            principal = self._principals.get(principal_id)
            if principal is None or principal.kind != "workload" or not principal.active:
                raise ReleaseRefused("no active workload principal by that id", "unknown-workload")
            if not self._challenges.consume(challenge):
                raise ChallengeInvalid("the challenge is unknown, used or expired")
            claims = self._verifier.verify_and_appraise(
                _platform(platform),
                evidence,
                policy=self._workload_policy,
                at=self._clock(),
                certs=certs,
                collateral=collateral,
                expected_report_data=workload_report_data(principal_id, challenge),
            )
            note.details["measurement"] = claims.measurement.hex()
            if claims.measurement.hex() not in principal.workload_measurements:
                raise ReleaseRefused(
                    "the evidence's measurement is not one of the workload's", "wrong-measurement"
                )
            return principal

        return await self._guard.execute("principals.authenticate_workload", principal_id,
                                         body, note)  # fmt: skip

    async def disable(self, caller: Principal, principal_id: str) -> Principal:
        return await self._set(caller, "principals.disable", principal_id, enabled=False)

    async def enable(self, caller: Principal, principal_id: str) -> Principal:
        """Re-enable a disabled or isolated principal."""
        return await self._set(
            caller, "principals.enable", principal_id, enabled=True, isolated=False
        )

    async def isolate(self, caller: Principal, principal_id: str) -> Principal:
        """Emergency isolation (the seed's compromise response): no level until enabled."""
        return await self._set(caller, "principals.isolate", principal_id, isolated=True)

    async def describe(self, caller: Principal, principal_id: str) -> Principal:
        async def body(note: AuditNote) -> Principal:
            principal = self._principals.get(principal_id)
            if principal is None:
                raise NotFound(f"no principal {principal_id}")
            return principal

        return await self._guard.run(
            "principals.describe", caller, body, details={"principal_id": principal_id}
        )

    async def _set(
        self, caller: Principal, operation: str, principal_id: str, **changes: bool
    ) -> Principal:
        def validate(note: AuditNote) -> None:
            if principal_id == caller.id:
                raise InvalidRequest("a principal cannot change its own standing")

        async def body(note: AuditNote) -> Principal:
            updated = self._principals.update(principal_id, lambda p: p.with_changes(**changes))
            if self._on_change is not None:
                self._on_change(principal_id)
            return updated

        return await self._guard.run(
            operation, caller, body, validate=validate, details={"principal_id": principal_id}
        )

    async def bootstrap_admin(self, name: str, public_key: bytes) -> Principal:
        """The first system administrator, only while no principal exists at all (in
        production its key reaches the enclave in the attested launch configuration)."""
        note = AuditNote(details={"name": name})

        async def body(note: AuditNote) -> Principal:
            _check_name(name)
            if self._principals.all():
                raise StateConflict("principals exist already; bootstrap is over")
            principal = Principal(
                id=new_principal_id(), name=name, kind="admin", public_key=public_key,
                system_level=Level.SYSTEM_ADMIN, created_at=self._clock(),
            )  # fmt: skip
            self._principals.create(principal)
            note.details["principal_id"] = principal.id
            return principal

        return await self._guard.execute("principals.bootstrap_admin", "kms", body, note,
                                         outcome="event")  # fmt: skip


def _platform(name: str) -> Platform:
    for platform in PLATFORMS:
        if name == platform:
            return platform
    raise InvalidRequest(f"platform must be one of {', '.join(PLATFORMS)}")


__all__ = [
    "PrincipalService",
    "PrincipalStore",
    "VerificationError",
    "identity_proof_message",
    "workload_report_data",
]
