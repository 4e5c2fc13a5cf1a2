"""Grants on the store: who holds which level on which key (``*`` = every key).

``GrantStore`` persists grants (kind ``grants``, id ``<principal id>/<key id>``, one grant
per pair: granting again replaces the level) and implements ``GrantDirectory`` with a
per-principal read cache that every write through it invalidates. ``GrantService`` holds
the admin operations (grant, revoke: system administration) and the per-key listing.

Must never: let a write leave a stale cached grant behind, or grant on a key id that is
neither a key id nor ``*``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from enclave.auth.access import ANY_KEY, Grant
from enclave.auth.principals import PRINCIPAL_ID_PATTERN, Level, Principal
from enclave.keys.metadata import KEY_ID_PATTERN
from enclave.kms import persist
from enclave.kms.errors import InvalidRequest, NotFound, StoredStateInvalid
from enclave.kms.guard import AuditNote, Guard
from enclave.kms.principals import PrincipalStore
from enclave.storage.store import Store, Transaction

MAX_CACHED = 10_000


def grant_id(principal_id: str, key_id: str) -> str:
    return f"{principal_id}/{key_id}"


def _grant(value: dict[str, Any]) -> Grant:
    try:
        return Grant.from_dict(value)
    except (KeyError, ValueError, TypeError) as exc:
        raise StoredStateInvalid(f"a stored grant does not parse: {exc}") from None


class GrantStore:
    """``GrantDirectory`` on the store."""

    KIND = persist.GRANTS

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, list[Grant]] = {}

    def grants_for(self, principal_id: str) -> list[Grant]:
        cached = self._cache.get(principal_id)
        if cached is not None:
            return list(cached)
        prefix = principal_id + "/"
        grants = []
        for ref in self._store.list(self.KIND):
            if ref.id.startswith(prefix):
                value, version = persist.read(self._store, self.KIND, ref.id)
                if version:
                    grants.append(_grant(value))
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[principal_id] = grants
        return list(grants)

    def grants_on(self, key_id: str) -> list[Grant]:
        suffix = "/" + key_id
        out = []
        for ref in self._store.list(self.KIND):
            if ref.id.endswith(suffix):
                value, version = persist.read(self._store, self.KIND, ref.id)
                if version:
                    out.append(_grant(value))
        return out

    def put(self, grant: Grant, tx: Transaction | None = None) -> None:
        target = tx if tx is not None else self._store
        target.put(self.KIND, grant_id(grant.principal_id, grant.key_id),
                   persist.dump(grant.to_dict()))  # fmt: skip
        self.invalidate(grant.principal_id)

    def delete(self, principal_id: str, key_id: str) -> bool:
        try:
            return self._store.delete(self.KIND, grant_id(principal_id, key_id))
        finally:
            self.invalidate(principal_id)

    def invalidate(self, principal_id: str | None = None) -> None:
        if principal_id is None:
            self._cache.clear()
        else:
            self._cache.pop(principal_id, None)


class GrantService:
    def __init__(
        self,
        grants: GrantStore,
        principals: PrincipalStore,
        guard: Guard,
        clock: Callable[[], datetime],
    ) -> None:
        self._grants = grants
        self._principals = principals
        self._guard = guard
        self._clock = clock

    async def grant(self, caller: Principal, principal_id: str, key_id: str, level: Level) -> Grant:
        """Give ``principal_id`` ``level`` on ``key_id`` (or on every key: ``*``)."""

        def validate(note: AuditNote) -> None:
            _check_grant_key(key_id)
            try:
                Level(level)
            except ValueError:
                raise InvalidRequest("level must be 0..4") from None

        async def body(note: AuditNote) -> Grant:
            if self._principals.get(principal_id) is None:
                raise NotFound(f"no principal {principal_id}")
            grant = Grant(principal_id, key_id, Level(level), caller.id, self._clock())
            self._grants.put(grant)
            return grant

        return await self._guard.run(
            "grants.grant", caller, body, validate=validate,
            details={"principal_id": principal_id, "grant_key_id": key_id, "level": int(level)},
        )  # fmt: skip

    async def revoke(self, caller: Principal, principal_id: str, key_id: str) -> bool:
        def validate(note: AuditNote) -> None:
            if not PRINCIPAL_ID_PATTERN.fullmatch(str(principal_id)):
                raise InvalidRequest("a principal id is prn_ followed by 24 hex digits")
            _check_grant_key(key_id)

        async def body(note: AuditNote) -> bool:
            return self._grants.delete(principal_id, key_id)

        return await self._guard.run(
            "grants.revoke", caller, body, validate=validate,
            details={"principal_id": principal_id, "grant_key_id": key_id},
        )  # fmt: skip

    async def list_for_key(self, caller: Principal, key_id: str) -> list[Grant]:
        async def body(note: AuditNote) -> list[Grant]:
            return self._grants.grants_on(key_id)

        return await self._guard.run("grants.list", caller, body, key_id=key_id)


def _check_grant_key(key_id: object) -> None:
    """A grant is on one key or on every key (``*``)."""
    if key_id != ANY_KEY and not KEY_ID_PATTERN.fullmatch(str(key_id)):
        raise InvalidRequest("key_id is a key id or '*'")
