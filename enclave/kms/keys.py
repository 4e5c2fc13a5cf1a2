"""Key lifecycle: create, list, describe, enable, disable, expire, schedule and cancel
deletion, and the job that destroys due versions.

``KeyRepository`` persists ``KeyMetadata`` (kind ``keys``; the service's own KEKs under
``keks``) and updates it optimistically: an update reads the record and its version, runs
the (possibly async, HSM-calling) change, and writes conditionally on that version; a lost
race is retried from a fresh read, so concurrent updates never lose a write.
``KeyService`` is the guarded, audited surface; ``KeyInfo`` is what callers see: metadata
only, never wrapped material.

Must never: return wrapped or plaintext key material from a lifecycle call, or write a key
record without the expected version it read.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from enclave.auth.access import Grant
from enclave.auth.principals import Level, Principal
from enclave.keys.errors import KeyHierarchyError, KeyMetadataError, KeyPurposeError, KeyStateError
from enclave.keys.hierarchy import KeyHierarchy
from enclave.keys.metadata import (
    DELETION_WINDOW_MAX,
    DELETION_WINDOW_MIN,
    KEY_ID_PATTERN,
    PURPOSE_ALGORITHMS,
    Algorithm,
    KeyMetadata,
    KeyVersion,
    Purpose,
    RotationSchedule,
    SecurityLevel,
    VersionState,
)
from enclave.kms import persist
from enclave.kms.errors import (
    ConcurrentUpdate,
    InvalidRequest,
    KeyUnusable,
    NotFound,
    StateConflict,
    StoredStateInvalid,
)
from enclave.kms.grants import GrantStore
from enclave.kms.guard import SYSTEM_PRINCIPAL, AuditNote, Guard
from enclave.kms.principals import PrincipalStore
from enclave.storage.errors import VersionConflict
from enclave.storage.store import Store, Transaction

OWNER_GRANT_LEVEL = Level.CREATE_DELETE_KEYS

ALGORITHM_NAMES: dict[str, Algorithm] = {
    "AES-256-GCM": Algorithm.AES_256_GCM,
    "RSA-4096": Algorithm.RSA_4096_PSS_SHA256,
    "RSA-4096-PSS-SHA256": Algorithm.RSA_4096_PSS_SHA256,
    "ED25519": Algorithm.ED25519,
    "Ed25519": Algorithm.ED25519,
    "X25519": Algorithm.X25519_HPKE,
    Algorithm.X25519_HPKE.value: Algorithm.X25519_HPKE,
}
# The seed's default rotation policy: DEKs and authentication keys monthly (KEKs quarterly).
DEFAULT_ROTATION: dict[Purpose, RotationSchedule] = {
    Purpose.ENCRYPT: RotationSchedule.monthly(),
    Purpose.SIGN: RotationSchedule.monthly(),
    Purpose.HPKE: RotationSchedule.monthly(),
    Purpose.WRAP: RotationSchedule.quarterly(),
}


def parse_purpose(value: Purpose | str) -> Purpose:
    if isinstance(value, Purpose):
        return value
    try:
        return Purpose(value)
    except ValueError:
        raise InvalidRequest(f"unknown purpose {value!r}") from None


def parse_algorithm(value: Algorithm | str) -> Algorithm:
    if isinstance(value, Algorithm):
        return value
    algorithm = ALGORITHM_NAMES.get(value)
    if algorithm is None:
        raise InvalidRequest(f"unknown algorithm {value!r}")
    return algorithm


def check_key_id(key_id: object) -> str:
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.match(key_id):
        raise InvalidRequest("a key id is key_ followed by 32 hex digits")
    return key_id


class key_errors:  # used as ``with key_errors():``, like the function it was
    """Translate the hierarchy's errors into the service's typed errors.

    A plain class rather than a ``contextlib.contextmanager``: the crypto path enters it
    twice per request, and a generator-based one costs a generator and its frames each
    time. Raised the same way: the typed error, its context suppressed (``from None``)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, KeyStateError):
            raise StateConflict(str(exc)) from None
        if isinstance(exc, KeyPurposeError | KeyMetadataError):
            raise InvalidRequest(str(exc)) from None


# -- what callers see ------------------------------------------------------------------


@dataclass(frozen=True)
class VersionInfo:
    version: int
    state: VersionState
    created_at: datetime
    state_changed_at: datetime
    deletion_due: datetime | None
    compromised: bool
    public_key: bytes | None


@dataclass(frozen=True)
class KeyInfo:
    """A key's metadata (level 0): no wrapped or plaintext material."""

    key_id: str
    purpose: Purpose
    algorithm: Algorithm
    owner: str
    created_at: datetime
    expires_at: datetime | None
    security_level: SecurityLevel
    rotation_days: int | None
    exportable: bool
    description: str
    primary_version: int | None
    versions: tuple[VersionInfo, ...]

    @classmethod
    def of(cls, metadata: KeyMetadata) -> KeyInfo:
        primary = metadata.primary
        return cls(
            key_id=metadata.key_id,
            purpose=metadata.purpose,
            algorithm=metadata.algorithm,
            owner=metadata.owner,
            created_at=metadata.created_at,
            expires_at=metadata.expires_at,
            security_level=metadata.security_level,
            rotation_days=metadata.rotation.period_days,
            exportable=metadata.policy.exportable,
            description=metadata.description,
            primary_version=None if primary is None else primary.version,
            versions=tuple(
                VersionInfo(
                    v.version,
                    v.state,
                    v.created_at,
                    v.state_changed_at,
                    v.deletion_due,
                    v.compromised,
                    v.public_key,
                )
                for v in metadata.versions
            ),
        )

    def version(self, number: int) -> VersionInfo:
        return self.versions[number - 1]


# -- persistence -------------------------------------------------------------------------


def _metadata(value: dict[str, Any]) -> KeyMetadata:
    try:
        return KeyMetadata.from_dict(value)
    except KeyHierarchyError as exc:
        raise StoredStateInvalid(f"a stored key does not parse: {exc}") from None


MAX_PARSED_KEYS = 4096
Change = Callable[[KeyMetadata], Awaitable[KeyMetadata]]
Extra = Callable[[Transaction, KeyMetadata, KeyMetadata], None]


class KeyRepository:
    KIND = persist.KEYS
    KEK_KIND = persist.KEKS
    KEK_POINTER = "current-kek"

    def __init__(self, store: Store, hierarchy: KeyHierarchy) -> None:
        self._store = store
        self._hierarchy = hierarchy
        self._keks: dict[str, KeyMetadata] = {}
        # key id -> (record version, record value, parsed metadata): the crypto path reads
        # its key on every request; parse it again only when the stored record changed.
        self._parsed: dict[str, tuple[int, bytes, KeyMetadata]] = {}

    @property
    def store(self) -> Store:
        return self._store

    # keys
    def get(self, key_id: str) -> KeyMetadata | None:
        """The key as stored now. ``KeyMetadata`` is immutable, so the parse of a record is
        reused while the store returns the same version with the same bytes."""
        record = self._store.get(self.KIND, key_id)
        if record is None:
            self._parsed.pop(key_id, None)
            return None
        cached = self._parsed.get(key_id)
        if cached is not None and cached[0] == record.version and cached[1] == record.value:
            return cached[2]
        metadata = _metadata(persist.parse(record))
        if len(self._parsed) >= MAX_PARSED_KEYS:
            self._parsed.clear()
        self._parsed[key_id] = (record.version, record.value, metadata)
        return metadata

    def require(self, key_id: str) -> KeyMetadata:
        metadata = self.get(key_id)
        if metadata is None:
            raise NotFound(f"no key {key_id}")
        return metadata

    def all(self) -> list[KeyMetadata]:
        out = []
        for ref in self._store.list(self.KIND):
            metadata = self.get(ref.id)
            if metadata is not None:
                out.append(metadata)
        return out

    def create(self, metadata: KeyMetadata, tx: Transaction) -> None:
        tx.put(self.KIND, metadata.key_id, persist.dump(metadata.to_dict()), expected_version=0)

    async def update(
        self,
        key_id: str,
        change: Change,
        *,
        extra: Extra | None = None,
        kind: str = KIND,
        attempts: int = persist.MAX_UPDATE_ATTEMPTS,
    ) -> KeyMetadata:
        """Read, ``change`` (may await), write on the version read; retry lost races.

        ``extra(tx, old, new)`` adds writes to the same transaction (all or nothing).
        """
        for _ in range(attempts):
            value, version = persist.read(self._store, kind, key_id)
            if not version:
                raise NotFound(f"no key {key_id}")
            old = _metadata(value)
            with key_errors():
                new = await change(old)
            try:
                with self._store.transaction() as tx:
                    tx.put(kind, key_id, persist.dump(new.to_dict()), expected_version=version)
                    if extra is not None:
                        extra(tx, old, new)
            except VersionConflict:
                continue
            if kind == self.KEK_KIND:
                self._keks[key_id] = new
            return new
        raise ConcurrentUpdate(f"key {key_id} kept changing; nothing was written")

    # KEKs (the service's own, wrapped by the HSM master key)
    async def ensure_kek(self) -> KeyMetadata:
        pointer, _ = persist.read(self._store, persist.CONFIG, self.KEK_POINTER)
        if pointer:
            return self.kek(str(pointer["key_id"]))
        kek = await self._hierarchy.create_kek(SYSTEM_PRINCIPAL, description="service KEK")
        with self._store.transaction() as tx:
            tx.put(self.KEK_KIND, kek.key_id, persist.dump(kek.to_dict()), expected_version=0)
            tx.put(persist.CONFIG, self.KEK_POINTER, persist.dump({"key_id": kek.key_id}),
                   expected_version=0)  # fmt: skip
        self._keks[kek.key_id] = kek
        return kek

    def kek(self, key_id: str) -> KeyMetadata:
        cached = self._keks.get(key_id)
        if cached is None:
            value, version = persist.read(self._store, self.KEK_KIND, key_id)
            if not version:
                raise StoredStateInvalid(f"KEK {key_id} is missing")
            cached = self._keks[key_id] = _metadata(value)
        return cached

    def current_kek_id(self) -> str:
        pointer, version = persist.read(self._store, persist.CONFIG, self.KEK_POINTER)
        if not version:
            raise StoredStateInvalid("the service has no KEK (start() was not run)")
        return str(pointer["key_id"])

    def current_kek(self) -> KeyVersion:
        kek = self.kek(self.current_kek_id())
        primary = kek.primary
        if primary is None:
            raise StoredStateInvalid("the service KEK has no active version")
        return primary

    def kek_for(self, version: KeyVersion) -> KeyVersion:
        ref = version.wrapped_by
        with key_errors():
            return self.kek(ref.key_id).version(ref.version)

    async def rotate_kek(self) -> KeyMetadata:
        async def change(kek: KeyMetadata) -> KeyMetadata:
            return await self._hierarchy.rotate(kek, None)

        return await self.update(self.current_kek_id(), change, kind=self.KEK_KIND)


# -- the service -----------------------------------------------------------------------


class KeyService:
    def __init__(
        self,
        *,
        repo: KeyRepository,
        hierarchy: KeyHierarchy,
        guard: Guard,
        grants: GrantStore,
        principals: PrincipalStore,
        clock: Callable[[], datetime],
    ) -> None:
        self._repo = repo
        self._hierarchy = hierarchy
        self._guard = guard
        self._grants = grants
        self._principals = principals
        self._clock = clock

    async def create(
        self,
        caller: Principal,
        purpose: Purpose | str,
        algorithm: Algorithm | str,
        *,
        owner: str | None = None,
        description: str = "",
        expires_at: datetime | None = None,
        rotation_days: int | None = None,
        security_level: SecurityLevel = SecurityLevel.L3,
    ) -> KeyInfo:
        """A new key with one active version; its owner (the caller, or a principal an
        administrator names) gets a level-3 grant on it."""
        parsed: dict[str, Any] = {}

        def validate(note: AuditNote) -> None:
            parsed["purpose"] = p = parse_purpose(purpose)
            parsed["algorithm"] = a = parse_algorithm(algorithm)
            if a is Algorithm.AES_256_KWP:
                raise InvalidRequest(
                    "AES-256-KWP is the service's own KEKs (in the HSM); a wrap key is AES-256-GCM"
                )
            if a not in PURPOSE_ALGORITHMS[p]:
                raise InvalidRequest(f"{a.value} does not serve purpose {p.value}")
            if expires_at is not None and (
                expires_at.tzinfo is None or expires_at <= self._clock()
            ):
                raise InvalidRequest("expires_at must be a zoned time in the future")
            try:
                parsed["rotation"] = (
                    DEFAULT_ROTATION[p] if rotation_days is None
                    else RotationSchedule(rotation_days)
                )  # fmt: skip
            except KeyMetadataError as exc:
                raise InvalidRequest(str(exc)) from None
            if not isinstance(description, str) or len(description) > 256:
                raise InvalidRequest("description is at most 256 characters")
            note.details.update(purpose=p.value, algorithm=a.value, owner=owner or caller.id)

        async def body(note: AuditNote) -> KeyInfo:
            owner_id = caller.id
            if owner is not None and owner != caller.id:
                # Creating for someone else is onboarding: system administration only.
                self._guard.require(caller, "principals.onboard", None)
                target = self._principals.get(owner)
                if target is None or not target.active:
                    raise NotFound(f"no active principal {owner}")
                owner_id = owner
            metadata = await self.new_key(
                parsed["purpose"], parsed["algorithm"], owner=owner_id,
                description=description, expires_at=expires_at, rotation=parsed["rotation"],
                security_level=security_level, granted_by=caller.id,
            )  # fmt: skip
            note.key_id, note.key_version = metadata.key_id, 1
            return KeyInfo.of(metadata)

        return await self._guard.run("keys.create", caller, body, validate=validate)

    async def new_key(
        self,
        purpose: Purpose,
        algorithm: Algorithm,
        *,
        owner: str,
        granted_by: str,
        description: str = "",
        expires_at: datetime | None = None,
        rotation: RotationSchedule | None = None,
        security_level: SecurityLevel = SecurityLevel.L3,
        extra_grants: tuple[tuple[str, Level], ...] = (),
        extra: Callable[[Transaction, KeyMetadata], None] | None = None,
    ) -> KeyMetadata:
        """Make, store and grant a key (no check, no audit: the caller's operation does)."""
        with key_errors():
            metadata, _ = await self._hierarchy.create_key(
                purpose, algorithm, kek=self._repo.current_kek(), owner=owner,
                security_level=security_level, expires_at=expires_at, rotation=rotation,
                description=description,
            )  # fmt: skip
        now = self._clock()
        grants = [Grant(owner, metadata.key_id, OWNER_GRANT_LEVEL, granted_by, now)]
        grants += [Grant(p, metadata.key_id, lvl, granted_by, now) for p, lvl in extra_grants]
        with self._repo.store.transaction() as tx:
            self._repo.create(metadata, tx)
            for grant in grants:
                self._grants.put(grant, tx)
            if extra is not None:
                extra(tx, metadata)
        for grant in grants:
            self._grants.invalidate(grant.principal_id)
        return metadata

    async def list(self, caller: Principal) -> list[KeyInfo]:
        """Every key the caller may view (level 0 on it); others are not even named."""
        note = AuditNote()

        async def body(note: AuditNote) -> list[KeyInfo]:
            if not self._guard.current(caller).active:
                from enclave.auth.access import AccessDenied

                raise AccessDenied(f"{caller.id} is disabled, isolated or unknown")
            visible = [
                KeyInfo.of(m) for m in self._repo.all()
                if self._guard.allows(caller, "keys.describe", m.key_id)
            ]  # fmt: skip
            note.details["count"] = len(visible)
            return visible

        return await self._guard.execute("keys.list", caller.id, body, note)

    async def describe(self, caller: Principal, key_id: str) -> KeyInfo:
        async def body(note: AuditNote) -> KeyInfo:
            return KeyInfo.of(self._repo.require(key_id))

        return await self._run("keys.describe", caller, key_id, body)

    async def enable(self, caller: Principal, key_id: str, version: int | None = None) -> KeyInfo:
        """Re-enable a disabled version: the newest version becomes active (when no version
        is), an older one decrypt-only. ``None``: the newest disabled version."""

        async def change(m: KeyMetadata) -> KeyMetadata:
            disabled = [v for v in m.versions if v.state is VersionState.DISABLED]
            if version is None:
                if not disabled:
                    raise KeyStateError(f"{key_id} has no disabled version")
                target = disabled[-1]
            else:
                target = m.version(version)
            newest_usable = all(
                v.state in (VersionState.DESTROYED, VersionState.PENDING_DELETION)
                for v in m.versions[target.version:]
            )  # fmt: skip
            state = (
                VersionState.ACTIVE if newest_usable and m.primary is None
                else VersionState.DECRYPT_ONLY
            )  # fmt: skip
            if target.state is not VersionState.DISABLED:
                raise KeyStateError(f"{target.cache_id} is {target.state.value}, not disabled")
            return await self._hierarchy.transition(m, target.version, state)

        return await self._change("keys.enable", caller, key_id, change, version)

    async def disable(self, caller: Principal, key_id: str, version: int | None = None) -> KeyInfo:
        """Disable one version, or (``None``) every active and decrypt-only version: a
        disabled version neither encrypts nor decrypts until it is enabled again."""

        async def change(m: KeyMetadata) -> KeyMetadata:
            if version is not None:
                return await self._hierarchy.transition(m, version, VersionState.DISABLED)
            usable = [v for v in m.versions
                      if v.state in (VersionState.ACTIVE, VersionState.DECRYPT_ONLY)]  # fmt: skip
            if not usable:
                raise KeyStateError(f"{key_id} has no enabled version")
            for v in usable:
                m = await self._hierarchy.transition(m, v.version, VersionState.DISABLED)
            return m

        return await self._change("keys.disable", caller, key_id, change, version)

    async def expire(self, caller: Principal, key_id: str, at: datetime | None = None) -> KeyInfo:
        """Set the key's expiry (default: now). An expired key no longer encrypts or signs;
        it still decrypts and verifies what it made, until its versions are disabled."""

        async def change(m: KeyMetadata) -> KeyMetadata:
            when = at or self._clock()
            if when.tzinfo is None:
                raise KeyMetadataError("expiry must be a zoned time")
            if when <= m.created_at:
                raise KeyMetadataError("expiry must be after the key's creation")
            return replace(m, expires_at=when)

        return await self._change("keys.expire", caller, key_id, change, None)

    async def set_rotation(
        self, caller: Principal, key_id: str, period_days: int | None
    ) -> KeyInfo:
        async def change(m: KeyMetadata) -> KeyMetadata:
            return replace(m, rotation=RotationSchedule(period_days))

        return await self._change("keys.set_rotation", caller, key_id, change, None)

    async def schedule_deletion(
        self,
        caller: Principal,
        key_id: str,
        *,
        window_days: int = 30,
        version: int | None = None,
    ) -> KeyInfo:
        """Every version not yet destroyed (or one version) goes pending deletion for a
        cancellable window of 7..30 days; ``run_deletion_job`` destroys it when due."""
        # Out of range is refused by ``validate``; a huge number of days would overflow
        # ``timedelta`` before it got there.
        in_range = (
            isinstance(window_days, int)
            and DELETION_WINDOW_MIN.days <= window_days <= DELETION_WINDOW_MAX.days
        )
        window = timedelta(days=window_days) if in_range else timedelta(-1)

        def validate(note: AuditNote) -> None:
            check_key_id(key_id)
            if not DELETION_WINDOW_MIN <= window <= DELETION_WINDOW_MAX:
                raise InvalidRequest("the deletion window is 7 to 30 days")
            note.details["window_days"] = window_days

        async def change(m: KeyMetadata) -> KeyMetadata:
            targets = (
                [m.version(version)] if version is not None
                else [v for v in m.versions if v.state not in
                      (VersionState.DESTROYED, VersionState.PENDING_DELETION)]
            )  # fmt: skip
            if not targets:
                raise KeyStateError(f"{key_id} has nothing left to delete")
            for v in targets:
                m = await self._hierarchy.transition(
                    m, v.version, VersionState.PENDING_DELETION, deletion_window=window
                )
            return m

        async def body(note: AuditNote) -> KeyInfo:
            note.key_version = version
            return KeyInfo.of(await self._repo.update(key_id, change))

        return await self._guard.run("keys.schedule_deletion", caller, body, key_id=key_id,
                                     validate=validate)  # fmt: skip

    async def cancel_deletion(
        self, caller: Principal, key_id: str, version: int | None = None
    ) -> KeyInfo:
        """Pending-deletion versions go back to disabled (enable them to use them again)."""

        async def change(m: KeyMetadata) -> KeyMetadata:
            targets = [v for v in m.versions if v.state is VersionState.PENDING_DELETION
                       and (version is None or v.version == version)]  # fmt: skip
            if not targets:
                raise KeyStateError(f"{key_id} has no version pending deletion")
            for v in targets:
                m = await self._hierarchy.transition(m, v.version, VersionState.DISABLED)
            return m

        return await self._change("keys.cancel_deletion", caller, key_id, change, version)

    async def run_deletion_job(self) -> builtins.list[tuple[str, int]]:
        """Destroy every pending-deletion version whose window has passed (scheduler)."""
        destroyed: builtins.list[tuple[str, int]] = []
        now = self._clock()
        for metadata in self._repo.all():
            for v in metadata.versions:
                if v.state is not VersionState.PENDING_DELETION or v.deletion_due is None:
                    continue
                if v.deletion_due > now:
                    continue
                await self._destroy(metadata.key_id, v.version)
                destroyed.append((metadata.key_id, v.version))
        return destroyed

    async def _destroy(self, key_id: str, number: int) -> None:
        note = AuditNote(key_id=key_id, key_version=number)

        async def change(m: KeyMetadata) -> KeyMetadata:
            return await self._hierarchy.transition(m, number, VersionState.DESTROYED)

        async def body(note: AuditNote) -> None:
            await self._repo.update(key_id, change)

        await self._guard.execute("keys.destroy", SYSTEM_PRINCIPAL, body, note, outcome="event")

    # helpers
    async def _change(
        self,
        operation: str,
        caller: Principal,
        key_id: str,
        change: Change,
        version: int | None,
    ) -> KeyInfo:
        async def body(note: AuditNote) -> KeyInfo:
            note.key_version = version
            return KeyInfo.of(await self._repo.update(key_id, change))

        return await self._run(operation, caller, key_id, body)

    async def _run(
        self,
        operation: str,
        caller: Principal,
        key_id: str,
        body: Callable[[AuditNote], Awaitable[KeyInfo]],
    ) -> KeyInfo:
        def validate(note: AuditNote) -> None:
            check_key_id(key_id)

        return await self._guard.run(operation, caller, body, key_id=key_id, validate=validate)


def require_usable(metadata: KeyMetadata, now: datetime, *, producing: bool) -> None:
    if producing and metadata.is_expired(now):
        raise KeyUnusable(f"{metadata.key_id} expired")
