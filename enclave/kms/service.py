"""``KmsService``: the KMS core as one object, built from the hierarchy, the store, the audit
log, the verifier and a clock (no globals).

Its parts, each a guarded and audited surface (``enclave.kms.guard.OPERATIONS`` lists every
operation with its declared level and scope):

- ``principals`` (``PrincipalService``): onboarding, disable / enable / isolate, workloads
- ``grants`` (``GrantService``): grant and revoke levels, list a key's grants
- ``keys`` (``KeyService``): key lifecycle
- ``crypto`` (``CryptoService``): encrypt, decrypt, data keys, re-encrypt, sign, verify
- ``rotation`` (``RotationService``): rotation, consumer notification and acknowledgement
- ``distribution`` (``DistributionService``): attested release, sharing keys

``principal_directory`` and ``grant_directory`` are the ``PrincipalDirectory`` and
``GrantDirectory`` the token authenticator and the HTTP layer use. ``run_scheduled`` is the
scheduler's tick: due rotations, ended grace periods, due deletions.

Must never: run an operation outside its guard, or keep state outside the store that a
restart must not lose (challenges are the exception: they are meant to die with the process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from enclave.audit.log import AuditLog
from enclave.auth.principals import Level, Principal
from enclave.keys.entropy import EntropySource
from enclave.keys.hierarchy import KeyHierarchy
from enclave.keys.metadata import Algorithm, Purpose
from enclave.kms.challenges import ChallengeBook
from enclave.kms.distribution import DistributionService
from enclave.kms.grants import GrantService, GrantStore
from enclave.kms.guard import AuditNote, Guard
from enclave.kms.keys import KeyInfo, KeyRepository, KeyService
from enclave.kms.operations import CryptoService
from enclave.kms.principals import PrincipalService, PrincipalStore
from enclave.kms.rotation import RotationConfig, RotationEvent, RotationService, Webhook
from enclave.storage.store import Store
from verifier.policy import Policy
from verifier.verify import Verifier


@dataclass(frozen=True)
class KmsConfig:
    challenge_ttl: timedelta = timedelta(minutes=5)
    max_outstanding_challenges: int = 10_000
    rotation: RotationConfig = field(default_factory=RotationConfig)
    # Workload authentication: evidence must meet this (debug off; simulated roots only
    # when a deployment's policy names them).
    workload_policy: Policy = field(default_factory=Policy)


@dataclass(frozen=True)
class KeyRequest:
    purpose: Purpose | str
    algorithm: Algorithm | str
    description: str = ""


@dataclass(frozen=True)
class Onboarding:
    principal: Principal
    keys: tuple[KeyInfo, ...]


@dataclass(frozen=True)
class ScheduledRun:
    rotated: tuple[str, ...]
    grace_events: tuple[RotationEvent, ...]
    destroyed: tuple[tuple[str, int], ...]


class KmsService:
    def __init__(
        self,
        *,
        hierarchy: KeyHierarchy,
        store: Store,
        audit: AuditLog,
        verifier: Verifier,
        clock: Callable[[], datetime],
        config: KmsConfig | None = None,
        webhook: Webhook | None = None,
        entropy: EntropySource | None = None,
        on_principal_change: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config or KmsConfig()
        self._hierarchy = hierarchy
        self._store = store
        self._clock = clock
        self.principal_directory = PrincipalStore(store)
        self.grant_directory = GrantStore(store)
        self.guard = Guard(audit, self.principal_directory, self.grant_directory)
        challenges = ChallengeBook(
            clock, self.config.challenge_ttl, max_outstanding=self.config.max_outstanding_challenges
        )
        self.repository = KeyRepository(store, hierarchy)
        self.principals = PrincipalService(
            self.principal_directory, self.guard, challenges, verifier, clock,
            workload_policy=self.config.workload_policy, on_change=on_principal_change,
        )  # fmt: skip
        self.grants = GrantService(self.grant_directory, self.principal_directory, self.guard,
                                   clock)  # fmt: skip
        self.keys = KeyService(
            repo=self.repository, hierarchy=hierarchy, guard=self.guard,
            grants=self.grant_directory, principals=self.principal_directory, clock=clock,
        )  # fmt: skip
        self.rotation = RotationService(self.repository, hierarchy, self.guard, clock,
                                        config=self.config.rotation, webhook=webhook)  # fmt: skip
        self.distribution = DistributionService(
            repo=self.repository, hierarchy=hierarchy, guard=self.guard, verifier=verifier,
            keys=self.keys, principals=self.principal_directory, challenges=challenges,
            clock=clock,
        )  # fmt: skip
        self.crypto = CryptoService(self.repository, hierarchy, self.guard, clock,
                                    entropy=entropy, on_use=self.distribution.note_use)  # fmt: skip

    def __repr__(self) -> str:
        return f"KmsService(store={self._store!r})"

    async def start(self) -> None:
        """Find or make the HSM master key and the service KEK."""
        await self._hierarchy.bootstrap()
        await self.repository.ensure_kek()

    async def bootstrap_admin(self, name: str, public_key: bytes) -> Principal:
        return await self.principals.bootstrap_admin(name, public_key)

    async def onboard(
        self,
        caller: Principal,
        *,
        name: str,
        kind: str,
        public_key: bytes,
        challenge: bytes,
        proof: bytes,
        keys: Sequence[KeyRequest] = (),
        system_level: Level | None = None,
    ) -> Onboarding:
        """The seed's New Client Onboarding: registration and identity verification
        (``register``), key generation and access grant (each key created for the new
        principal, who owns it with a level-3 grant); initial key distribution is the
        client's first use of its keys (or an attested ``release_key``). Every step is
        audited on its own, and the whole under ``principals.onboard``."""
        note = AuditNote(details={"name": name, "keys": len(keys)})

        async def body(note: AuditNote) -> Onboarding:
            principal = await self.principals.register(
                caller, name=name, kind=kind, public_key=public_key, challenge=challenge,
                proof=proof, system_level=system_level,
            )  # fmt: skip
            note.details["principal_id"] = principal.id
            created = []
            for request in keys:
                created.append(await self.keys.create(
                    caller, request.purpose, request.algorithm, owner=principal.id,
                    description=request.description,
                ))  # fmt: skip
            return Onboarding(principal, tuple(created))

        return await self.guard.run("principals.onboard", caller, body, details=note.details)

    async def run_scheduled(self) -> ScheduledRun:
        """One scheduler tick at the injected clock's time."""
        rotated = await self.rotation.run_due_rotations(self._clock())
        grace = await self.rotation.process_grace_periods()
        destroyed = await self.keys.run_deletion_job()
        return ScheduledRun(tuple(rotated), tuple(grace), tuple(destroyed))
