"""Authorization: access levels per key (grants) and for the system; denial is the default.

Levels are ordered: each includes the ones below it (0 view metadata, 1 use key, 2 manage
key, 3 create/delete keys, 4 system administration). A system-scoped operation needs the
principal's system level. A key-scoped operation needs a grant on that key (a grant on
``*`` covers every key); only system administrators (level 4) hold every level on every
key without a grant; any other system level gives view-metadata (0) on every key, so
auditors can review the inventory. A principal allowed to create keys (system level 3)
uses only the keys it owns or is granted. A disabled or isolated principal has no level.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from enclave.auth.principals import Level, Principal

ANY_KEY = "*"
Scope = Literal["system", "key"]


class AccessDenied(Exception):
    type = "access-denied"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Grant:
    principal_id: str
    key_id: str
    level: Level
    granted_by: str
    granted_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "principal_id": self.principal_id,
            "key_id": self.key_id,
            "level": int(self.level),
            "granted_by": self.granted_by,
            "granted_at": self.granted_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grant:
        unknown = set(data) - {"principal_id", "key_id", "level", "granted_by", "granted_at"}
        if unknown:
            raise ValueError(f"unknown grant fields {sorted(unknown)}")
        return cls(
            principal_id=str(data["principal_id"]),
            key_id=str(data["key_id"]),
            level=Level(int(data["level"])),
            granted_by=str(data["granted_by"]),
            granted_at=datetime.fromisoformat(data["granted_at"]),
        )


class GrantDirectory(Protocol):
    def grants_for(self, principal_id: str) -> list[Grant]: ...


@dataclass(frozen=True)
class Requirement:
    """What an endpoint declares: the level it needs, on the system or on one key."""

    level: Level
    scope: Scope


def effective_level(principal: Principal, key_id: str | None, grants: list[Grant]) -> Level | None:
    if not principal.active:
        return None
    if key_id is None:
        return principal.system_level
    if principal.system_level is Level.SYSTEM_ADMIN:
        return Level.SYSTEM_ADMIN
    best = Level.VIEW_METADATA if principal.system_level is not None else None
    for grant in grants:
        if grant.key_id in (key_id, ANY_KEY) and (best is None or grant.level > best):
            best = grant.level
    return best


def check(
    principal: Principal, requirement: Requirement, key_id: str | None, grants: list[Grant]
) -> None:
    """Raise AccessDenied unless ``principal`` holds ``requirement`` (on ``key_id``)."""
    if requirement.scope == "key" and key_id is None:
        raise AccessDenied("a key-scoped operation needs a key id")
    level = effective_level(principal, key_id if requirement.scope == "key" else None, grants)
    if level is None or level < requirement.level:
        target = f"key {key_id}" if requirement.scope == "key" else "the system"
        raise AccessDenied(
            f"{principal.id} needs level {int(requirement.level)} "
            f"({requirement.level.name.lower()}) on {target}"
        )
