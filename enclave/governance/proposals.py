"""Proposals: a privileged operation with its parameters, bound to one KMS and measurement.

A proposal is what the admins approve. It names the operation (``master_key.rotate``,
``backup.export`` ...: see ``enclave.governance.operations``), its parameters (a JSON object
in the canonical form below), the KMS identity and launch measurement it may execute on,
its creation and expiry times, its proposer, and a random id. It is frozen: the parameters
are deep-frozen and their canonical JSON is fixed at construction.

Canonical JSON (used for parameters and for the approval digest): UTF-8, object keys sorted
by code point, no insignificant whitespace (separators ``,`` and ``:``), non-ASCII written
as itself (``ensure_ascii=False``). Values are objects with string keys, arrays, strings,
integers (within +-2**53, so every JSON implementation reads them exactly), booleans and
null. Floats are refused: their text form is not canonical across implementations.

Must never: carry a secret in its parameters (they are stored, audited by digest and shown
to every admin); accept a field it does not understand.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from enclave.governance.errors import InvalidProposal

PROPOSAL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
OPERATION_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,7}")
MAX_OPERATION_CHARS = 64
MAX_PROPOSER_CHARS = 128
MAX_PARAMETERS_BYTES = 64 * 1024
MAX_MEASUREMENT_BYTES = 64
MAX_JSON_DEPTH = 16
MAX_SAFE_INTEGER = 2**53 - 1
_KEYS = frozenset(
    {
        "id", "operation", "parameters", "kms_identity", "measurement",
        "created_at", "expires_at", "proposer",
    }
)  # fmt: skip


def new_proposal_id() -> str:
    return "prop_" + secrets.token_hex(16)


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of ``value`` (see the module docstring)."""
    _check_json(value, "$", 0)
    return json.dumps(
        thaw(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _check_json(value: Any, where: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise InvalidProposal(f"parameters nest deeper than {MAX_JSON_DEPTH} at {where}")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise InvalidProposal(f"parameter {where} is an integer outside +-2**53")
        return
    if isinstance(value, float):
        raise InvalidProposal(f"parameter {where} is a float: use an integer or a string")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidProposal(f"parameter {where} has a non-string key")
            _check_json(item, f"{where}.{key}", depth + 1)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]", depth + 1)
        return
    raise InvalidProposal(f"parameter {where} is not JSON ({type(value).__name__})")


def freeze(value: Any) -> Any:
    """A read-only deep copy: mappings become MappingProxyType, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A plain (dict/list) deep copy of a frozen JSON value."""
    if isinstance(value, Mapping):
        return {str(k): thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def _aware(value: object, name: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidProposal(f"{name} is a timezone-aware datetime")
    return value.astimezone(UTC)


def to_ms(moment: datetime) -> int:
    """Unix time in whole milliseconds (floor), the unit of the approval digest."""
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC).replace(microsecond=(value % 1000) * 1000)


@dataclass(frozen=True)
class Proposal:
    """A privileged operation waiting for (or having had) M admins' approvals.

    Times are kept in whole milliseconds (the resolution of the approval digest), so a
    proposal and its stored form digest the same way.
    """

    id: str
    operation: str
    parameters: Mapping[str, Any]
    kms_identity: str
    measurement: bytes
    created_at: datetime
    expires_at: datetime
    proposer: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not PROPOSAL_ID_RE.fullmatch(self.id):
            raise InvalidProposal("a proposal id is 1..128 of [A-Za-z0-9._:-]")
        if (
            not isinstance(self.operation, str)
            or len(self.operation) > MAX_OPERATION_CHARS
            or not OPERATION_RE.fullmatch(self.operation)
        ):
            raise InvalidProposal("an operation name is dotted lower-case words (backup.export)")
        if not isinstance(self.parameters, Mapping):
            raise InvalidProposal("parameters is a JSON object")
        encoded = canonical_json(self.parameters)
        if len(encoded) > MAX_PARAMETERS_BYTES:
            raise InvalidProposal(f"parameters exceed {MAX_PARAMETERS_BYTES} bytes")
        object.__setattr__(self, "parameters", freeze(self.parameters))
        if not isinstance(self.kms_identity, str) or not 0 < len(self.kms_identity) <= 256:
            raise InvalidProposal("kms_identity is a non-empty string of at most 256 chars")
        if (
            not isinstance(self.measurement, bytes)
            or not 0 < len(self.measurement) <= MAX_MEASUREMENT_BYTES
        ):
            raise InvalidProposal("measurement is 1..64 bytes")
        created = from_ms(to_ms(_aware(self.created_at, "created_at")))
        expires = from_ms(to_ms(_aware(self.expires_at, "expires_at")))
        if expires <= created:
            raise InvalidProposal("a proposal expires after it is created")
        object.__setattr__(self, "created_at", created)
        object.__setattr__(self, "expires_at", expires)
        if not isinstance(self.proposer, str) or not 0 < len(self.proposer) <= MAX_PROPOSER_CHARS:
            raise InvalidProposal("proposer is a non-empty string of at most 128 chars")

    def __hash__(self) -> int:
        return hash((self.id, self.canonical_parameters()))

    def canonical_parameters(self) -> bytes:
        return canonical_json(self.parameters)

    def is_expired(self, now: datetime) -> bool:
        return _aware(now, "now") >= self.expires_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "operation": self.operation,
            "parameters": thaw(self.parameters),
            "kms_identity": self.kms_identity,
            "measurement": self.measurement.hex(),
            "created_at": to_ms(self.created_at),
            "expires_at": to_ms(self.expires_at),
            "proposer": self.proposer,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Proposal:
        if not isinstance(data, Mapping) or set(data) != _KEYS:
            raise InvalidProposal("a proposal has exactly the fields of its model")
        try:
            measurement = bytes.fromhex(data["measurement"])
            created, expires = data["created_at"], data["expires_at"]
            if type(created) is not int or type(expires) is not int:
                raise TypeError("times are integer milliseconds")
            return cls(
                id=data["id"],
                operation=data["operation"],
                parameters=data["parameters"],
                kms_identity=data["kms_identity"],
                measurement=measurement,
                created_at=from_ms(created),
                expires_at=from_ms(expires),
                proposer=data["proposer"],
            )
        except (TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, InvalidProposal):
                raise
            raise InvalidProposal(f"a proposal field has the wrong type: {exc}") from None
