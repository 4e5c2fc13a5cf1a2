"""The key metadata model: keys, their versions, states, policy and provenance.

Frozen dataclasses; ``to_dict`` gives only str/int/bool/None/list/dict values (bytes as
unpadded base64url, times as RFC 3339 UTC) so the same dict goes to JSON or CBOR, and
``from_dict`` rejects unknown and missing fields. Wrapped key material is a ``bytes`` field
with ``repr=False``. State changes return new objects and are checked against
``ALLOWED_TRANSITIONS``; an object that exists is valid.

Must never: hold a plaintext key, or accept a record it does not fully understand.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import cached_property
from typing import Any

from enclave.keys.entropy import EntropyKind
from enclave.keys.errors import KeyMetadataError, KeyStateError

KEY_ID_PATTERN = re.compile(r"^key_[0-9a-f]{32}\Z")  # \Z: "$" would let a final newline by
MASTER_KEY_REF = "master"
WRAP_MECHANISM = "CKM_AES_KEY_WRAP_PAD"
DELETION_WINDOW_MIN = timedelta(days=7)
DELETION_WINDOW_MAX = timedelta(days=30)
MAX_VERSIONS = 1000
MAX_TEXT = 256
MAX_WRAPPED_BYTES = 16384


class Purpose(Enum):
    ENCRYPT = "encrypt"
    WRAP = "wrap"
    SIGN = "sign"
    HPKE = "hpke"


class Algorithm(Enum):
    AES_256_GCM = "AES-256-GCM"
    AES_256_KWP = "AES-256-KWP"  # KEKs: RFC 5649 key wrap with padding
    RSA_4096_PSS_SHA256 = "RSA-4096-PSS-SHA256"
    ED25519 = "Ed25519"
    X25519_HPKE = "DHKEM-X25519-HKDF-SHA256/HKDF-SHA256/AES-256-GCM"  # RFC 9180 suite


PURPOSE_ALGORITHMS: Mapping[Purpose, frozenset[Algorithm]] = {
    Purpose.ENCRYPT: frozenset({Algorithm.AES_256_GCM}),
    # AES-256-KWP: the service's KEKs (HSM-resident, wrapped by the master key);
    # AES-256-GCM: customer key-wrapping keys (wrapped by a KEK, like encrypt keys).
    Purpose.WRAP: frozenset({Algorithm.AES_256_KWP, Algorithm.AES_256_GCM}),
    Purpose.SIGN: frozenset({Algorithm.RSA_4096_PSS_SHA256, Algorithm.ED25519}),
    Purpose.HPKE: frozenset({Algorithm.X25519_HPKE}),
}


class SecurityLevel(Enum):
    L1 = "L1"
    L2 = "L2"
    L3 = "L3"
    L4 = "L4"


class VersionState(Enum):
    PENDING = "pending"
    ACTIVE = "active"
    DECRYPT_ONLY = "decrypt-only"  # rotation grace: decrypt / verify only
    DISABLED = "disabled"
    PENDING_DELETION = "pending-deletion"  # cancellable for 7..30 days
    DESTROYED = "destroyed"


ALLOWED_TRANSITIONS: Mapping[VersionState, frozenset[VersionState]] = {
    VersionState.PENDING: frozenset(
        {VersionState.ACTIVE, VersionState.DISABLED, VersionState.DESTROYED}
    ),
    VersionState.ACTIVE: frozenset(
        {VersionState.DECRYPT_ONLY, VersionState.DISABLED, VersionState.PENDING_DELETION}
    ),
    VersionState.DECRYPT_ONLY: frozenset(
        {VersionState.ACTIVE, VersionState.DISABLED, VersionState.PENDING_DELETION}
    ),
    VersionState.DISABLED: frozenset(
        {VersionState.ACTIVE, VersionState.DECRYPT_ONLY, VersionState.PENDING_DELETION}
    ),
    VersionState.PENDING_DELETION: frozenset({VersionState.DISABLED, VersionState.DESTROYED}),
    VersionState.DESTROYED: frozenset(),
}
# Which states allow which kind of use; compromised versions never produce new output.
PRODUCING_STATES = frozenset({VersionState.ACTIVE})
CONSUMING_STATES = frozenset({VersionState.ACTIVE, VersionState.DECRYPT_ONLY})


def new_key_id() -> str:
    """``key_`` + 128 random bits in hex (ids are not secret; uniqueness is what matters)."""
    return "key_" + secrets.token_hex(16)


# -- encoding helpers ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: object, name: str, limit: int = MAX_WRAPPED_BYTES) -> bytes:
    if not isinstance(text, str) or len(text) > limit * 4 // 3 + 4:
        raise KeyMetadataError(f"{name}: expected base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise KeyMetadataError(f"{name}: invalid base64url") from None


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: object, name: str) -> datetime:
    if not isinstance(text, str):
        raise KeyMetadataError(f"{name}: expected an RFC 3339 time")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise KeyMetadataError(f"{name}: invalid time") from None
    if parsed.tzinfo is None:
        raise KeyMetadataError(f"{name}: time without zone")
    return parsed.astimezone(UTC)


def _opt_time(text: object, name: str) -> datetime | None:
    return None if text is None else _parse_time(text, name)


def _enum(cls: type[Any], value: object, name: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        raise KeyMetadataError(f"{name}: unknown value {value!r}") from None


def _fields(data: object, expected: set[str], name: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise KeyMetadataError(f"{name}: expected a mapping")
    keys = set(data)
    if keys != expected:
        unknown, missing = sorted(keys - expected), sorted(expected - keys)
        raise KeyMetadataError(f"{name}: unknown fields {unknown}, missing fields {missing}")
    return data


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise KeyMetadataError(f"{name}: expected text of at most {MAX_TEXT} characters")
    return value


def _aware(value: datetime, name: str) -> None:
    if value.tzinfo is None:
        raise KeyMetadataError(f"{name}: datetime must carry a zone")


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrappingRef:
    """Which key wrapped a version: the master key, or a KEK's key id and version."""

    key_id: str
    version: int = 0

    def __post_init__(self) -> None:
        if self.key_id == MASTER_KEY_REF:
            if self.version != 0:
                raise KeyMetadataError("the master key reference has no version")
        elif not KEY_ID_PATTERN.match(self.key_id) or self.version < 1:
            raise KeyMetadataError("wrapping reference must name a KEK id and version >= 1")

    @property
    def is_master(self) -> bool:
        return self.key_id == MASTER_KEY_REF

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "version": self.version}

    @classmethod
    def from_dict(cls, data: object) -> WrappingRef:
        d = _fields(data, {"key_id", "version"}, "wrapped_by")
        if not isinstance(d["version"], int) or isinstance(d["version"], bool):
            raise KeyMetadataError("wrapped_by.version: expected an int")
        return cls(_text(d["key_id"], "wrapped_by.key_id"), d["version"])


@dataclass(frozen=True)
class RotationSchedule:
    """Automatic rotation every ``period_days`` days; ``None`` means on demand only."""

    period_days: int | None = None

    def __post_init__(self) -> None:
        if self.period_days is not None and not 1 <= self.period_days <= 3650:
            raise KeyMetadataError("rotation period must be 1..3650 days")

    @classmethod
    def monthly(cls) -> RotationSchedule:
        return cls(30)

    @classmethod
    def quarterly(cls) -> RotationSchedule:
        return cls(90)

    def next_due(self, last_rotation: datetime) -> datetime | None:
        if self.period_days is None:
            return None
        return last_rotation + timedelta(days=self.period_days)

    def to_dict(self) -> dict[str, Any]:
        return {"period_days": self.period_days}

    @classmethod
    def from_dict(cls, data: object) -> RotationSchedule:
        d = _fields(data, {"period_days"}, "rotation")
        period = d["period_days"]
        if period is not None and (not isinstance(period, int) or isinstance(period, bool)):
            raise KeyMetadataError("rotation.period_days: expected an int or null")
        return cls(period)


@dataclass(frozen=True)
class KeyPolicy:
    """Use policy stored with the key; enforcement belongs to the policy/auth layers."""

    allowed_principals: tuple[str, ...] = ()
    exportable: bool = False  # may be released (HPKE-wrapped) to an attested client
    require_quorum_for_deletion: bool = True

    def __post_init__(self) -> None:
        if len(self.allowed_principals) > 256:
            raise KeyMetadataError("at most 256 allowed principals")
        for principal in self.allowed_principals:
            _text(principal, "policy.allowed_principals")

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed_principals": list(self.allowed_principals),
            "exportable": self.exportable,
            "require_quorum_for_deletion": self.require_quorum_for_deletion,
        }

    @classmethod
    def from_dict(cls, data: object) -> KeyPolicy:
        d = _fields(
            data, {"allowed_principals", "exportable", "require_quorum_for_deletion"}, "policy"
        )
        principals = d["allowed_principals"]
        if not isinstance(principals, list):
            raise KeyMetadataError("policy.allowed_principals: expected a list")
        for flag in ("exportable", "require_quorum_for_deletion"):
            if not isinstance(d[flag], bool):
                raise KeyMetadataError(f"policy.{flag}: expected a bool")
        return cls(
            tuple(_text(p, "policy.allowed_principals") for p in principals),
            d["exportable"],
            d["require_quorum_for_deletion"],
        )


_VERSION_FIELDS = {
    "key_id",
    "version",
    "algorithm",
    "state",
    "created_at",
    "state_changed_at",
    "deletion_due",
    "compromised",
    "entropy",
    "wrapped_by",
    "wrap_mechanism",
    "wrapped",
    "public_key",
}


@dataclass(frozen=True)
class KeyVersion:
    """One version of a key: its wrapped secret, public half, state and provenance."""

    key_id: str
    version: int
    algorithm: Algorithm
    state: VersionState
    created_at: datetime
    state_changed_at: datetime
    entropy: EntropyKind
    wrapped_by: WrappingRef
    wrapped: bytes = field(repr=False)
    public_key: bytes | None = None  # SubjectPublicKeyInfo DER for sign / hpke keys
    compromised: bool = False
    deletion_due: datetime | None = None
    wrap_mechanism: str = WRAP_MECHANISM

    def __post_init__(self) -> None:
        if not KEY_ID_PATTERN.match(self.key_id):
            raise KeyMetadataError("key_id must be key_ + 32 hex digits")
        if not 1 <= self.version <= MAX_VERSIONS:
            raise KeyMetadataError(f"version must be 1..{MAX_VERSIONS}")
        _aware(self.created_at, "created_at")
        _aware(self.state_changed_at, "state_changed_at")
        if self.state is VersionState.DESTROYED:
            if self.wrapped:
                raise KeyMetadataError("a destroyed version keeps no key material")
        elif not 16 <= len(self.wrapped) <= MAX_WRAPPED_BYTES:
            raise KeyMetadataError("wrapped material has an impossible length")
        if (self.state is VersionState.PENDING_DELETION) != (self.deletion_due is not None):
            raise KeyMetadataError("deletion_due is set exactly in pending-deletion")
        if self.wrap_mechanism != WRAP_MECHANISM:
            raise KeyMetadataError(f"unsupported wrap mechanism {self.wrap_mechanism!r}")
        is_kek = self.algorithm is Algorithm.AES_256_KWP
        if is_kek != self.wrapped_by.is_master:
            raise KeyMetadataError("KEKs, and only KEKs, are wrapped by the master key")

    # Cached: a version is immutable, and both are read several times per crypto request
    # (a WrappingRef is validated on construction).
    @cached_property
    def ref(self) -> WrappingRef:
        return WrappingRef(self.key_id, self.version)

    @cached_property
    def cache_id(self) -> str:
        return f"{self.key_id}/v{self.version}"

    def can_produce(self) -> bool:
        """Encrypt, sign, wrap: active and not compromised."""
        return self.state in PRODUCING_STATES and not self.compromised

    def can_consume(self) -> bool:
        """Decrypt, verify, unwrap: active or decrypt-only (compromised allowed, to migrate)."""
        return self.state in CONSUMING_STATES

    def transition(
        self, state: VersionState, at: datetime, *, deletion_window: timedelta | None = None
    ) -> KeyVersion:
        if state not in ALLOWED_TRANSITIONS[self.state]:
            raise KeyStateError(
                f"{self.cache_id}: {self.state.value} -> {state.value} is not allowed"
            )
        due = None
        if state is VersionState.PENDING_DELETION:
            window = deletion_window or DELETION_WINDOW_MIN
            if not DELETION_WINDOW_MIN <= window <= DELETION_WINDOW_MAX:
                raise KeyStateError("the deletion window must be 7..30 days")
            due = at + window
        if state is VersionState.DESTROYED and self.state is VersionState.PENDING_DELETION:
            assert self.deletion_due is not None
            if at < self.deletion_due:
                raise KeyStateError(f"{self.cache_id}: the deletion window has not passed")
        wrapped = b"" if state is VersionState.DESTROYED else self.wrapped
        return replace(self, state=state, state_changed_at=at, deletion_due=due, wrapped=wrapped)

    def mark_compromised(self) -> KeyVersion:
        return replace(self, compromised=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "version": self.version,
            "algorithm": self.algorithm.value,
            "state": self.state.value,
            "created_at": _time(self.created_at),
            "state_changed_at": _time(self.state_changed_at),
            "deletion_due": None if self.deletion_due is None else _time(self.deletion_due),
            "compromised": self.compromised,
            "entropy": self.entropy.value,
            "wrapped_by": self.wrapped_by.to_dict(),
            "wrap_mechanism": self.wrap_mechanism,
            "wrapped": _b64(self.wrapped),
            "public_key": None if self.public_key is None else _b64(self.public_key),
        }

    @classmethod
    def from_dict(cls, data: object) -> KeyVersion:
        d = _fields(data, _VERSION_FIELDS, "version")
        if not isinstance(d["version"], int) or isinstance(d["version"], bool):
            raise KeyMetadataError("version.version: expected an int")
        if not isinstance(d["compromised"], bool):
            raise KeyMetadataError("version.compromised: expected a bool")
        return cls(
            key_id=_text(d["key_id"], "version.key_id"),
            version=d["version"],
            algorithm=_enum(Algorithm, d["algorithm"], "version.algorithm"),
            state=_enum(VersionState, d["state"], "version.state"),
            created_at=_parse_time(d["created_at"], "version.created_at"),
            state_changed_at=_parse_time(d["state_changed_at"], "version.state_changed_at"),
            entropy=_enum(EntropyKind, d["entropy"], "version.entropy"),
            wrapped_by=WrappingRef.from_dict(d["wrapped_by"]),
            wrapped=_unb64(d["wrapped"], "version.wrapped"),
            public_key=None
            if d["public_key"] is None
            else _unb64(d["public_key"], "version.public_key"),
            compromised=d["compromised"],
            deletion_due=_opt_time(d["deletion_due"], "version.deletion_due"),
            wrap_mechanism=_text(d["wrap_mechanism"], "version.wrap_mechanism"),
        )


_METADATA_FIELDS = {
    "key_id",
    "created_at",
    "expires_at",
    "algorithm",
    "purpose",
    "owner",
    "security_level",
    "rotation",
    "policy",
    "versions",
    "description",
}


@dataclass(frozen=True)
class KeyMetadata:
    """A key: identity, purpose, ownership, policy, and its versions (oldest first)."""

    key_id: str
    created_at: datetime
    algorithm: Algorithm
    purpose: Purpose
    owner: str
    security_level: SecurityLevel
    versions: tuple[KeyVersion, ...]
    expires_at: datetime | None = None
    rotation: RotationSchedule = field(default_factory=RotationSchedule)
    policy: KeyPolicy = field(default_factory=KeyPolicy)
    description: str = ""

    def __post_init__(self) -> None:
        if not KEY_ID_PATTERN.match(self.key_id):
            raise KeyMetadataError("key_id must be key_ + 32 hex digits")
        _aware(self.created_at, "created_at")
        if self.expires_at is not None:
            _aware(self.expires_at, "expires_at")
            if self.expires_at <= self.created_at:
                raise KeyMetadataError("expires_at must be after created_at")
        if self.algorithm not in PURPOSE_ALGORITHMS[self.purpose]:
            raise KeyMetadataError(
                f"algorithm {self.algorithm.value} does not serve purpose {self.purpose.value}"
            )
        _text(self.owner, "owner")
        _text(self.description, "description")
        if not 1 <= len(self.versions) <= MAX_VERSIONS:
            raise KeyMetadataError(f"a key has 1..{MAX_VERSIONS} versions")
        for index, version in enumerate(self.versions, start=1):
            if version.key_id != self.key_id or version.version != index:
                raise KeyMetadataError("versions must be this key's, numbered 1, 2, ...")
            if version.algorithm is not self.algorithm:
                raise KeyMetadataError("every version has the key's algorithm")
        if sum(v.state is VersionState.ACTIVE for v in self.versions) > 1:
            raise KeyMetadataError("at most one version is active")

    @property
    def is_kek(self) -> bool:
        """One of the service's KEKs (AES-256-KWP, in the HSM, wrapped by the master key);
        a customer wrap key (AES-256-GCM) is not."""
        return self.algorithm is Algorithm.AES_256_KWP

    @cached_property
    def primary(self) -> KeyVersion | None:
        """The active version (the one that encrypts and signs), if any. Cached: the
        metadata is immutable (a change makes a new record), and every encrypt reads it."""
        return next((v for v in self.versions if v.state is VersionState.ACTIVE), None)

    @property
    def latest(self) -> KeyVersion:
        return self.versions[-1]

    def version(self, number: int) -> KeyVersion:
        if not 1 <= number <= len(self.versions):
            raise KeyStateError(f"{self.key_id} has no version {number}")
        return self.versions[number - 1]

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def with_version(self, version: KeyVersion) -> KeyMetadata:
        """Replace an existing version (same number) or append the next one."""
        if version.version == len(self.versions) + 1:
            return replace(self, versions=(*self.versions, version))
        if 1 <= version.version <= len(self.versions):
            versions = list(self.versions)
            versions[version.version - 1] = version
            return replace(self, versions=tuple(versions))
        raise KeyMetadataError("version numbers are consecutive")

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "created_at": _time(self.created_at),
            "expires_at": None if self.expires_at is None else _time(self.expires_at),
            "algorithm": self.algorithm.value,
            "purpose": self.purpose.value,
            "owner": self.owner,
            "security_level": self.security_level.value,
            "rotation": self.rotation.to_dict(),
            "policy": self.policy.to_dict(),
            "versions": [v.to_dict() for v in self.versions],
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: object) -> KeyMetadata:
        d = _fields(data, _METADATA_FIELDS, "key")
        versions = d["versions"]
        if not isinstance(versions, list) or len(versions) > MAX_VERSIONS:
            raise KeyMetadataError("key.versions: expected a list")
        return cls(
            key_id=_text(d["key_id"], "key.key_id"),
            created_at=_parse_time(d["created_at"], "key.created_at"),
            expires_at=_opt_time(d["expires_at"], "key.expires_at"),
            algorithm=_enum(Algorithm, d["algorithm"], "key.algorithm"),
            purpose=_enum(Purpose, d["purpose"], "key.purpose"),
            owner=_text(d["owner"], "key.owner"),
            security_level=_enum(SecurityLevel, d["security_level"], "key.security_level"),
            rotation=RotationSchedule.from_dict(d["rotation"]),
            policy=KeyPolicy.from_dict(d["policy"]),
            versions=tuple(KeyVersion.from_dict(v) for v in versions),
            description=_text(d["description"], "key.description"),
        )
