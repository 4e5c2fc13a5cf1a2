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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

Outcome = Literal["allowed", "denied", "invalid", "error", "event"]
GENESIS_HASH = "0" * 64
CHECKPOINT_OPERATION = "audit.checkpoint"
HEADER_TYPE = "kms-audit-export/v1"


# One encoder for every call: ``json.dumps`` with any option builds this same encoder per
# call (twice per record on the audit writer, holding the GIL); the output is identical.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    return _CANONICAL.encode(value).encode()


# The string escaper ``_CANONICAL`` itself uses (``ensure_ascii=False``; C where available).
_ENCODE_STRING = json.encoder.encode_basestring


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


class ChainedRecord(NamedTuple):
    """A record the audit writer made, and its line (``record.to_line()``, byte for byte)."""

    record: AuditRecord
    line: bytes


def chain(
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
    sign: Callable[[str], str] | None = None,
) -> ChainedRecord:
    """A new record with its ``hash`` (and, with ``sign``, its ``signature``: ``sign(hash)``),
    and its line: the audit writer's one pass per entry, holding the GIL.

    The canonical JSON is written once, in the three pieces between which ``hash`` and
    ``signature`` fall in sorted key order: the hash covers ``head + middle + tail``, the
    line is ``head + hash + middle + signature + tail``. ``computed_hash`` and ``to_line``
    encode the record twice through the generic encoder; they stay the reference (the
    verifier and recovery use them) and the tests hold this one to them byte for byte."""
    head = '{"details":' + _value_json(details)
    middle = (
        f',"key_id":{_value_json(key_id)},"key_version":{_value_json(key_version)}'
        f',"operation":{_value_json(operation)},"outcome":{_value_json(outcome)}'
        f',"prev_hash":{_value_json(prev_hash)},"principal":{_value_json(principal)}'
        f',"request_digest":{_value_json(request_digest)},"seq":{_value_json(seq)}'
    )
    tail = f',"status":{_value_json(status)},"time":{_value_json(time)}}}'
    record_hash = hashlib.sha256((head + middle + tail).encode()).hexdigest()
    signature = sign(record_hash) if sign is not None else None
    # A hex digest needs no escaping: quoted as it is.
    line = f'{head},"hash":"{record_hash}"{middle},"signature":{_value_json(signature)}{tail}\n'
    record = object.__new__(AuditRecord)
    # What the frozen dataclass's ``__init__`` does (every field is given, no defaults are
    # left), as one dict update instead of one ``object.__setattr__`` call per field.
    record.__dict__.update(
        seq=seq, time=time, principal=principal, operation=operation, outcome=outcome,
        key_id=key_id, key_version=key_version, request_digest=request_digest,
        status=status, details=details, prev_hash=prev_hash, hash=record_hash,
        signature=signature,
    )  # fmt: skip
    return ChainedRecord(record, line.encode())


def _value_json(value: object) -> str:
    """``value`` exactly as ``_CANONICAL`` writes it inside an object. None, bools, strings,
    ints and flat objects of those (every record field, nearly always) are written here
    without the encoder's per-call set-up; anything else goes through the encoder."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _ENCODE_STRING(value)
    if isinstance(value, int):  # bools are handled above; int subclasses print as ints
        return int.__repr__(value)
    if type(value) is dict:
        return _flat_object_json(value)
    return _CANONICAL.encode(value)


def _flat_object_json(data: dict[Any, Any]) -> str:
    """A dict as ``_CANONICAL`` writes it: items sorted by key (unique, so the values are
    never compared), ``"key":value`` joined by commas. A dict nested in it, a float or a
    key that is not a string hands the whole dict to the encoder."""
    parts = []
    for key, value in sorted(data.items()):
        if not isinstance(key, str) or not _is_scalar(value):
            return _CANONICAL.encode(data)
        parts.append(_ENCODE_STRING(key) + ":" + _value_json(value))
    return "{" + ",".join(parts) + "}"


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int)


def signature_message(record_hash: str) -> bytes:
    return b"kms-audit-checkpoint/v1\x00" + bytes.fromhex(record_hash)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
