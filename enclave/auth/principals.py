"""Principals: services, admins, auditors and attested workloads, and their access levels.

A principal registers an Ed25519 public key at onboarding (the seed's New Client
Onboarding: registration, identity verification, key generation, access grant, initial
key distribution). An attested workload is a principal identified by verified evidence that
matches a reference measurement instead of (or as well as) a key.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import IntEnum
from typing import Any, Literal, Protocol

PrincipalKind = Literal["service", "admin", "auditor", "workload"]
PRINCIPAL_KINDS: tuple[PrincipalKind, ...] = ("service", "admin", "auditor", "workload")
ED25519_PUBLIC_KEY_SIZE = 32


class Level(IntEnum):
    """The seed's access levels. Each level includes the ones below it."""

    VIEW_METADATA = 0
    USE_KEY = 1
    MANAGE_KEY = 2
    CREATE_DELETE_KEYS = 3
    SYSTEM_ADMIN = 4


# Every principal id, made here or derived from the administrator's key (kms_api).
PRINCIPAL_ID_PATTERN = re.compile(r"prn_[0-9a-f]{24}")


def new_principal_id() -> str:
    return "prn_" + secrets.token_hex(12)


@dataclass(frozen=True)
class Principal:
    """A registered caller. ``system_level`` applies to every key and to the system;
    ``None`` means the principal has no system-wide level (only per-key grants)."""

    id: str
    name: str
    kind: PrincipalKind
    public_key: bytes | None
    system_level: Level | None
    created_at: datetime
    enabled: bool = True
    isolated: bool = False
    workload_measurements: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in PRINCIPAL_KINDS:
            raise ValueError(f"unknown principal kind {self.kind!r}")
        if self.public_key is not None and len(self.public_key) != ED25519_PUBLIC_KEY_SIZE:
            raise ValueError("an Ed25519 public key is 32 bytes")
        if self.public_key is None and not self.workload_measurements:
            raise ValueError("a principal needs a public key or workload measurements")

    @property
    def active(self) -> bool:
        return self.enabled and not self.isolated

    def with_changes(self, **changes: Any) -> Principal:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "public_key": self.public_key.hex() if self.public_key else None,
            "system_level": int(self.system_level) if self.system_level is not None else None,
            "created_at": self.created_at.isoformat(),
            "enabled": self.enabled,
            "isolated": self.isolated,
            "workload_measurements": list(self.workload_measurements),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Principal:
        unknown = set(data) - _PRINCIPAL_FIELDS
        if unknown:
            raise ValueError(f"unknown principal fields {sorted(unknown)}")
        level = data.get("system_level")
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            kind=data["kind"],
            public_key=bytes.fromhex(data["public_key"]) if data.get("public_key") else None,
            system_level=Level(level) if level is not None else None,
            created_at=datetime.fromisoformat(data["created_at"]),
            enabled=bool(data.get("enabled", True)),
            isolated=bool(data.get("isolated", False)),
            workload_measurements=tuple(data.get("workload_measurements", ())),
        )


_PRINCIPAL_FIELDS = {
    "id", "name", "kind", "public_key", "system_level", "created_at", "enabled", "isolated",
    "workload_measurements",
}  # fmt: skip


class PrincipalDirectory(Protocol):
    def get(self, principal_id: str) -> Principal | None: ...
