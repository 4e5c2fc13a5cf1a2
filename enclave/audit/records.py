"""Audit records and checkpoints, and their canonical hashing.

A record's ``hash`` is SHA-256 over the canonical JSON (sorted keys, no whitespace) of
every other field, ``prev_hash`` included, so each record commits to the whole log before
it. A checkpoint is a record whose ``operation`` is ``audit.checkpoint``; its ``signature``
(Ed25519 by the audit signing key) covers its own hash, so a verified checkpoint vouches for
every record up to it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["allowed", "denied", "invalid", "error", "event"]
GENESIS_HASH = "0" * 64
CHECKPOINT_OPERATION = "audit.checkpoint"
HEADER_TYPE = "kms-audit-export/v1"


# One encoder for every call: ``json.dumps`` with any option builds this same encoder per
# call (twice per record on the audit writer, holding the GIL); the output is identical.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    return _CANONICAL.encode(value).encode()


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    time: str
    principal: str
    operation: str
    outcome: Outcome
    key_id: str | None = None
    key_version: int | None = None
    request_digest: str | None = None
    status: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS_HASH
    hash: str = ""
    signature: str | None = None

    def body(self) -> dict[str, Any]:
        """Every field but ``hash`` and ``signature`` (what the hash covers). Built field by
        field rather than with ``dataclasses.asdict``, which deep-copies ``details`` only
        for it to be serialised at once; the JSON is the same."""
        return {
            "seq": self.seq,
            "time": self.time,
            "principal": self.principal,
            "operation": self.operation,
            "outcome": self.outcome,
            "key_id": self.key_id,
            "key_version": self.key_version,
            "request_digest": self.request_digest,
            "status": self.status,
            "details": self.details,
            "prev_hash": self.prev_hash,
        }

    def computed_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.body())).hexdigest()

    @classmethod
    def chained(
        cls,
        *,
        seq: int,
        time: str,
        principal: str,
        operation: str,
        outcome: Outcome,
        key_id: str | None,
        key_version: int | None,
        request_digest: str | None,
        status: int | None,
        details: dict[str, Any],
        prev_hash: str,
    ) -> AuditRecord:
        """A new record with its ``hash``, built once (the audit writer makes one per
        entry, holding the GIL: ``dataclasses.replace`` after the fact built it twice)."""
        unhashed = cls(
            seq=seq, time=time, principal=principal, operation=operation, outcome=outcome,
            key_id=key_id, key_version=key_version, request_digest=request_digest,
            status=status, details=details, prev_hash=prev_hash,
        )  # fmt: skip
        # Frozen: the one field left is set here, as the dataclass __init__ itself does.
        object.__setattr__(unhashed, "hash", unhashed.computed_hash())
        return unhashed

    def to_line(self) -> bytes:
        data = self.body()
        data["hash"] = self.hash
        data["signature"] = self.signature
        return canonical_json(data) + b"\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditRecord:
        allowed = set(cls.__dataclass_fields__)
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown audit fields {sorted(unknown)}")
        record = cls(**data)
        if not isinstance(record.seq, int) or not isinstance(record.details, dict):
            raise ValueError("malformed audit record")
        return record

    @property
    def is_checkpoint(self) -> bool:
        return self.operation == CHECKPOINT_OPERATION


def signature_message(record_hash: str) -> bytes:
    return b"kms-audit-checkpoint/v1\x00" + bytes.fromhex(record_hash)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
