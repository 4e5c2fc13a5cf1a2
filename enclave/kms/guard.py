"""Every KMS operation's declared requirement, and the guard that enforces and audits it.

``OPERATIONS`` is the catalogue: audit operation name -> ``Requirement`` (level + scope).
Each service method runs through ``Guard.run``, which follows the seed's "Security
Implementation Flow": request validation (invalid -> audited, refused), authorization
check (denial is the default -> audited, refused), then the operation, then the audit
record of its outcome. The answer returns only once its audit record is durable.

The guard re-reads the caller from the principal directory: a principal disabled or
isolated a moment ago has no level, whatever ``Principal`` object the caller still holds.

Must never: run an operation before its check passed, answer before the audit record is
durable, or put a secret (plaintext, key, context) in an audit record other than as an HMAC.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from enclave.audit.log import AuditLog
from enclave.audit.records import Outcome
from enclave.auth.access import AccessDenied, GrantDirectory, Requirement, check
from enclave.auth.principals import Level, Principal, PrincipalDirectory
from enclave.kms.errors import InvalidRequest, KmsError
from enclave.storage.errors import InvalidRecord
from verifier.errors import VerificationError

T = TypeVar("T")

SYSTEM = "system"
KEY = "key"


def _req(level: Level, scope: str) -> Requirement:
    return Requirement(level, "system" if scope == SYSTEM else "key")


# The catalogue. Key-scoped requirements are checked on the key the request names.
OPERATIONS: Mapping[str, Requirement] = {
    # principals and grants (system administration)
    "principals.register": _req(Level.SYSTEM_ADMIN, SYSTEM),
    "principals.register_workload": _req(Level.SYSTEM_ADMIN, SYSTEM),
    "principals.disable": _req(Level.SYSTEM_ADMIN, SYSTEM),
    "principals.enable": _req(Level.SYSTEM_ADMIN, SYSTEM),
    "principals.isolate": _req(Level.SYSTEM_ADMIN, SYSTEM),
    "principals.describe": _req(Level.SYSTEM_ADMIN, SYSTEM),
    "principals.onboard": _req(Level.SYSTEM_ADMIN, SYSTEM),
    "grants.grant": _req(Level.SYSTEM_ADMIN, SYSTEM),
    "grants.revoke": _req(Level.SYSTEM_ADMIN, SYSTEM),
    "grants.list": _req(Level.VIEW_METADATA, KEY),
    # key lifecycle
    "keys.create": _req(Level.CREATE_DELETE_KEYS, SYSTEM),
    "keys.list": _req(Level.VIEW_METADATA, KEY),  # a filter: each key listed needs level 0
    "keys.describe": _req(Level.VIEW_METADATA, KEY),
    "keys.enable": _req(Level.MANAGE_KEY, KEY),
    "keys.disable": _req(Level.MANAGE_KEY, KEY),
    "keys.expire": _req(Level.MANAGE_KEY, KEY),
    "keys.rotate": _req(Level.MANAGE_KEY, KEY),
    "keys.set_rotation": _req(Level.MANAGE_KEY, KEY),
    "keys.schedule_deletion": _req(Level.CREATE_DELETE_KEYS, KEY),
    "keys.cancel_deletion": _req(Level.CREATE_DELETE_KEYS, KEY),
    "keys.set_release_policy": _req(Level.CREATE_DELETE_KEYS, KEY),
    # cryptographic operations
    "keys.encrypt": _req(Level.USE_KEY, KEY),
    "keys.decrypt": _req(Level.USE_KEY, KEY),
    "keys.generate_data_key": _req(Level.USE_KEY, KEY),
    "keys.re_encrypt": _req(Level.USE_KEY, KEY),  # on the source and the destination key
    "keys.sign": _req(Level.USE_KEY, KEY),
    "keys.verify": _req(Level.USE_KEY, KEY),
    "keys.get_public_key": _req(Level.VIEW_METADATA, KEY),
    # rotation notifications
    "rotation.register_consumer": _req(Level.USE_KEY, KEY),
    "rotation.acknowledge": _req(Level.USE_KEY, KEY),
    "rotation.wait_for_events": _req(Level.VIEW_METADATA, KEY),
    "rotation.status": _req(Level.VIEW_METADATA, KEY),
    # distribution
    "keys.release": _req(Level.USE_KEY, KEY),
    "keys.confirm_receipt": _req(Level.USE_KEY, KEY),
    "sharing.create": _req(Level.CREATE_DELETE_KEYS, SYSTEM),
    "sharing.status": _req(Level.VIEW_METADATA, KEY),
}

# Events the enclave itself records (no caller): scheduler jobs.
SYSTEM_PRINCIPAL = "kms"


@dataclass(slots=True)
class AuditNote:
    """What an operation adds to its own audit record (mutable while it runs)."""

    key_id: str | None = None
    key_version: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    sensitive: dict[str, bytes] = field(default_factory=dict)


class Guard:
    def __init__(
        self, audit: AuditLog, principals: PrincipalDirectory, grants: GrantDirectory
    ) -> None:
        self._audit = audit
        self._principals = principals
        self._grants = grants

    def current(self, caller: Principal) -> Principal:
        """The caller as the directory knows it now (disabled/isolated take effect at once)."""
        known = self._principals.get(caller.id)
        if known is None:
            return caller.with_changes(enabled=False)
        return known

    def allows(self, caller: Principal, operation: str, key_id: str | None) -> bool:
        try:
            check(self.current(caller), OPERATIONS[operation], key_id,
                  self._grants.grants_for(caller.id))  # fmt: skip
        except AccessDenied:
            return False
        return True

    def require(self, caller: Principal, operation: str, key_id: str | None) -> None:
        self._require(caller, OPERATIONS[operation], key_id)

    def _require(self, caller: Principal, requirement: Requirement, key_id: str | None) -> None:
        check(self.current(caller), requirement, key_id, self._grants.grants_for(caller.id))

    async def run(
        self,
        operation: str,
        caller: Principal,
        body: Callable[[AuditNote], Awaitable[T]],
        *,
        key_id: str | None = None,
        validate: Callable[[AuditNote], str | None] | None = None,
        details: Mapping[str, Any] | None = None,
        sensitive: Mapping[str, bytes] | None = None,
    ) -> T:
        """Validate, check, run ``body`` and audit the outcome.

        ``validate`` checks the request's form and may return the key id the request names
        (for requests that carry it inside, such as a ciphertext).
        """
        requirement = OPERATIONS.get(operation)
        if requirement is None:
            raise KeyError(f"{operation} is not a declared operation")
        # Copies of the caller's mappings (the note is mutated while the operation runs);
        # fresh empty dicts when there are none, without copying an empty one.
        note = AuditNote(key_id, None, dict(details) if details else {},
                         dict(sensitive) if sensitive else {})  # fmt: skip
        try:
            if validate is not None:
                named = validate(note)
                if named is not None:
                    note.key_id = named
        except KmsError as exc:
            await self._record(
                principal_id=caller.id,
                operation=operation,
                outcome="invalid",
                status=exc.status,
                note=note,
                error_type=exc.type,
            )
            raise
        try:
            self._require(caller, requirement, note.key_id)
        except AccessDenied as exc:
            await self._record(
                principal_id=caller.id,
                operation=operation,
                outcome="denied",
                status=403,
                note=note,
                error_type=exc.type,
            )
            raise
        return await self.execute(operation, caller.id, body, note)

    async def execute(
        self, operation: str, principal_id: str, body: Callable[[AuditNote], Awaitable[T]],
        note: AuditNote, *, outcome: Outcome = "allowed",
    ) -> T:  # fmt: skip
        """Run an already authorised ``body`` and audit it (also used by scheduler jobs)."""
        try:
            result = await body(note)
        except Exception as exc:
            failed_outcome, status, error_type = _failure(exc)
            await self._record(
                principal_id=principal_id,
                operation=operation,
                outcome=failed_outcome,
                status=status,
                note=note,
                error_type=error_type,
            )
            raise
        # ``_record`` without an error, written out: one coroutine less on every request.
        await self._audit.record(
            principal=principal_id,
            operation=operation,
            outcome=outcome,
            key_id=note.key_id,
            key_version=note.key_version,
            status=200,
            details=note.details,
            sensitive=note.sensitive or None,
        )
        return result

    async def _record(
        self,
        *,
        principal_id: str,
        operation: str,
        outcome: Outcome,
        status: int,
        note: AuditNote,
        error_type: str | None,
    ) -> None:
        # The log copies ``details`` and digests ``sensitive`` as it takes them, so the
        # note's own dicts are passed as they are (a copy only to add the error).
        details = note.details
        if error_type is not None:
            details = {**details, "error": error_type}
        await self._audit.record(
            principal=principal_id,
            operation=operation,
            outcome=outcome,
            key_id=note.key_id,
            key_version=note.key_version,
            status=status,
            details=details,
            sensitive=note.sensitive or None,
        )


def _failure(exc: Exception) -> tuple[Outcome, int, str]:
    """How a failed operation is audited: (outcome, status, error type)."""
    if isinstance(exc, AccessDenied):  # a check inside the operation (second key, ownership)
        return "denied", 403, exc.type
    if isinstance(exc, KmsError):
        return exc.outcome, exc.status, exc.type
    if isinstance(exc, VerificationError):
        return "denied", 403, exc.type
    if isinstance(exc, InvalidRecord):  # an id from the request the store cannot hold
        return "invalid", InvalidRequest.status, InvalidRequest.type
    return "error", 500, type(exc).__name__
