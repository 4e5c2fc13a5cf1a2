"""The backup manifest: what a bundle holds, readable and checkable without any key.

The manifest is canonical JSON (sorted keys, no whitespace, UTF-8; see
``enclave.governance.proposals.canonical_json``)::

    {"format": "enclave-kms-backup/v1",
     "backup_id": "bak_<32 hex>",
     "kms_identity": str, "measurement": hex,
     "created_at": int (Unix ms),
     "record_counts": {kind: int, ...},
     "records": [{"kind": str, "id": str, "digest": hex(32 bytes)}, ...],  # sorted
     "audit_head": {"seq": int, "hash": hex(32 bytes)} | null,
     "cipher": "AES-256-GCM", "payload_bytes": int,
     "quorum": {"threshold": M, "quorum_id": hex(16 bytes),
                "custodians": [{"name": str, "key_id": hex(16 bytes), "index": i}, ...]}}

Per-record digests are HMAC-SHA256 under a key derived from the backup key (not plain
hashes), so the manifest, which travels in the clear, says nothing about record values
that a guess could confirm; they are checked at restore, once the key is rebuilt. Kinds,
ids and counts are visible to whoever holds the bundle: ids are not secrets in this KMS.

Parsing is strict (exact fields and types, and the bytes must be the canonical encoding of
what they decode to), and the consistency rules (counts match the record list, no record
twice, custodians distinct, indices 1..N, threshold within N) are checked at construction:
a ``Manifest`` that exists is consistent.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from enclave.governance.proposals import canonical_json, from_ms, to_ms

BUNDLE_FORMAT = "enclave-kms-backup/v1"
CIPHER = "AES-256-GCM"
BACKUP_ID_RE = re.compile(r"bak_[0-9a-f]{32}")
KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_ID_BYTES = 256
MAX_RECORDS = 1_000_000
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
DIGEST_BYTES = 32
QUORUM_ID_BYTES = 16
KEY_ID_BYTES = 16
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_KEYS = frozenset(
    {
        "format", "backup_id", "kms_identity", "measurement", "created_at", "record_counts",
        "records", "audit_head", "cipher", "payload_bytes", "quorum",
    }
)  # fmt: skip


class ManifestError(ValueError):
    """The manifest is malformed or inconsistent (the bundle is not usable)."""


def check_kind(kind: object) -> str:
    if not isinstance(kind, str) or not KIND_RE.fullmatch(kind):
        raise ManifestError("a record kind matches [a-z][a-z0-9_]{0,31}")
    return kind


def check_record_id(record_id: object) -> str:
    if not isinstance(record_id, str) or not record_id or "\x00" in record_id:
        raise ManifestError("a record id is non-empty text without NUL")
    if len(record_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise ManifestError(f"a record id is at most {MAX_ID_BYTES} UTF-8 bytes")
    return record_id


@dataclass(frozen=True)
class RecordDigest:
    """One record's address and keyed digest (HMAC-SHA256 under the backup's digest key)."""

    kind: str
    id: str
    digest: bytes

    def __post_init__(self) -> None:
        check_kind(self.kind)
        check_record_id(self.id)
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_BYTES:
            raise ManifestError("a record digest is 32 bytes")

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "digest": self.digest.hex()}


@dataclass(frozen=True)
class AuditHead:
    """The audit chain's head when the backup was taken: the last record's seq and hash."""

    seq: int
    hash: str

    def __post_init__(self) -> None:
        if type(self.seq) is not int or self.seq < 0:
            raise ManifestError("audit head seq is a non-negative integer")
        if not isinstance(self.hash, str) or not re.fullmatch(r"[0-9a-f]{64}", self.hash):
            raise ManifestError("audit head hash is 64 lower-case hex digits")

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash}


@dataclass(frozen=True)
class CustodianEntry:
    """A custodian who holds share ``index`` of the backup key."""

    name: str
    key_id: bytes
    index: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ManifestError("a custodian name is 1..64 of [A-Za-z0-9._@-]")
        if not isinstance(self.key_id, bytes) or len(self.key_id) != KEY_ID_BYTES:
            raise ManifestError("a custodian key id is 16 bytes")
        if type(self.index) is not int or not 1 <= self.index <= 255:
            raise ManifestError("a share index is 1..255")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key_id": self.key_id.hex(), "index": self.index}


@dataclass(frozen=True)
class Manifest:
    """What a backup bundle holds. Consistent by construction."""

    backup_id: str
    kms_identity: str
    measurement: bytes
    created_at: datetime
    records: tuple[RecordDigest, ...]
    audit_head: AuditHead | None
    payload_bytes: int
    threshold: int
    quorum_id: bytes
    custodians: tuple[CustodianEntry, ...]
    format: str = BUNDLE_FORMAT
    cipher: str = CIPHER

    def __post_init__(self) -> None:
        if self.format != BUNDLE_FORMAT or self.cipher != CIPHER:
            raise ManifestError(f"not a {BUNDLE_FORMAT} manifest")
        if not isinstance(self.backup_id, str) or not BACKUP_ID_RE.fullmatch(self.backup_id):
            raise ManifestError("backup_id is bak_ and 32 hex digits")
        if not isinstance(self.kms_identity, str) or not 0 < len(self.kms_identity) <= 256:
            raise ManifestError("kms_identity is 1..256 characters")
        if not isinstance(self.measurement, bytes) or not 0 < len(self.measurement) <= 64:
            raise ManifestError("measurement is 1..64 bytes")
        if not isinstance(self.created_at, datetime) or self.created_at.tzinfo is None:
            raise ManifestError("created_at is a timezone-aware time")
        object.__setattr__(self, "created_at", from_ms(to_ms(self.created_at)))
        if not isinstance(self.records, tuple) or len(self.records) > MAX_RECORDS:
            raise ManifestError(f"at most {MAX_RECORDS} records")
        addresses = [(r.kind, r.id) for r in self.records]
        if len(set(addresses)) != len(addresses):
            raise ManifestError("a record appears twice")
        if addresses != sorted(addresses):
            raise ManifestError("records are listed in (kind, id) order")
        if type(self.payload_bytes) is not int or self.payload_bytes < 0:
            raise ManifestError("payload_bytes is a non-negative integer")
        count = len(self.custodians)
        if type(self.threshold) is not int or not 2 <= self.threshold <= count <= 255:
            raise ManifestError("need 2 <= threshold <= custodians <= 255")
        if not isinstance(self.quorum_id, bytes) or len(self.quorum_id) != QUORUM_ID_BYTES:
            raise ManifestError("quorum_id is 16 bytes")
        if [c.index for c in self.custodians] != list(range(1, count + 1)):
            raise ManifestError("custodian share indices are 1..N in order")
        if len({c.name for c in self.custodians}) != count:
            raise ManifestError("custodian names are distinct")
        if len({c.key_id for c in self.custodians}) != count:
            raise ManifestError("custodian keys are distinct")

    @property
    def record_counts(self) -> Mapping[str, int]:
        return MappingProxyType(dict(sorted(Counter(r.kind for r in self.records).items())))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "backup_id": self.backup_id,
            "kms_identity": self.kms_identity,
            "measurement": self.measurement.hex(),
            "created_at": to_ms(self.created_at),
            "record_counts": dict(self.record_counts),
            "records": [r.to_dict() for r in self.records],
            "audit_head": self.audit_head.to_dict() if self.audit_head else None,
            "cipher": self.cipher,
            "payload_bytes": self.payload_bytes,
            "quorum": {
                "threshold": self.threshold,
                "quorum_id": self.quorum_id.hex(),
                "custodians": [c.to_dict() for c in self.custodians],
            },
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    def summary(self) -> dict[str, Any]:
        """The manifest without the per-record list: what ``kms backup verify`` prints."""
        out = self.to_dict()
        del out["records"]
        out["created_at"] = self.created_at.isoformat()
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        if not isinstance(data, bytes) or len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError("the manifest is bytes of bounded size")
        try:
            value = json.loads(data)
            manifest = cls._from_value(value)
        except ManifestError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            raise ManifestError("the manifest is not well-formed") from None
        if manifest.to_bytes() != data:
            raise ManifestError("the manifest is not in canonical form")
        return manifest

    @classmethod
    def _from_value(cls, value: Any) -> Manifest:
        if not isinstance(value, dict) or set(value) != _KEYS:
            raise ManifestError("the manifest has exactly the fields of its format")
        quorum = value["quorum"]
        if not isinstance(quorum, dict) or set(quorum) != {"threshold", "quorum_id", "custodians"}:
            raise ManifestError("manifest quorum fields")
        records = []
        for entry in value["records"]:
            if not isinstance(entry, dict) or set(entry) != {"kind", "id", "digest"}:
                raise ManifestError("manifest record fields")
            records.append(RecordDigest(entry["kind"], entry["id"], _hex(entry["digest"])))
        custodians = []
        for entry in quorum["custodians"]:
            if not isinstance(entry, dict) or set(entry) != {"name", "key_id", "index"}:
                raise ManifestError("manifest custodian fields")
            custodians.append(CustodianEntry(entry["name"], _hex(entry["key_id"]), entry["index"]))
        head = value["audit_head"]
        if head is not None and (not isinstance(head, dict) or set(head) != {"seq", "hash"}):
            raise ManifestError("manifest audit head fields")
        if type(value["created_at"]) is not int:
            raise ManifestError("created_at is integer milliseconds")
        manifest = cls(
            backup_id=value["backup_id"],
            kms_identity=value["kms_identity"],
            measurement=_hex(value["measurement"]),
            created_at=from_ms(value["created_at"]),
            records=tuple(records),
            audit_head=AuditHead(head["seq"], head["hash"]) if head is not None else None,
            payload_bytes=value["payload_bytes"],
            threshold=quorum["threshold"],
            quorum_id=_hex(quorum["quorum_id"]),
            custodians=tuple(custodians),
            format=value["format"],
            cipher=value["cipher"],
        )
        # The declared counts are redundant with the list; both must agree (a manifest
        # whose summary lies about its content is refused).
        if value["record_counts"] != dict(manifest.record_counts):
            raise ManifestError("record_counts do not match the record list")
        return manifest


def _hex(value: object) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"(?:[0-9a-f]{2})*", value):
        raise ManifestError("binary fields are lower-case hex")
    return bytes.fromhex(value)
