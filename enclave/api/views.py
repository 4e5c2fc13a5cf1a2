"""What the KMS HTTP API answers: JSON views of the service's results (no raw dicts
between modules; binary values are standard base64, times ISO 8601 UTC).

Must never: put wrapped key material, a plaintext other than the one the caller asked for,
or an encryption context into an answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from enclave.api.models import b64
from enclave.auth.access import Grant
from enclave.auth.principals import Principal
from enclave.kms.distribution import Release, ReleaseRecord, SharingKey
from enclave.kms.keys import KeyInfo, VersionInfo
from enclave.kms.rotation import PendingSwitch, RotationEvent, RotationStatus


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def version_view(v: VersionInfo) -> dict[str, Any]:
    return {
        "version": v.version,
        "state": v.state.value,
        "created_at": _time(v.created_at),
        "state_changed_at": _time(v.state_changed_at),
        "deletion_due": _time(v.deletion_due),
        "compromised": v.compromised,
        "public_key": None if v.public_key is None else b64(v.public_key),
    }


def key_view(info: KeyInfo) -> dict[str, Any]:
    return {
        "id": info.key_id,
        "purpose": info.purpose.value,
        "algorithm": info.algorithm.value,
        "owner": info.owner,
        "created_at": _time(info.created_at),
        "expires_at": _time(info.expires_at),
        "security_level": info.security_level.value,
        "rotation_days": info.rotation_days,
        "exportable": info.exportable,
        "description": info.description,
        "primary_version": info.primary_version,
        "versions": [version_view(v) for v in info.versions],
    }


def principal_view(p: Principal) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "kind": p.kind,
        "public_key": None if p.public_key is None else b64(p.public_key),
        "system_level": None if p.system_level is None else int(p.system_level),
        "created_at": _time(p.created_at),
        "enabled": p.enabled,
        "isolated": p.isolated,
        "workload_measurements": list(p.workload_measurements),
    }


def grant_view(g: Grant) -> dict[str, Any]:
    return {
        "principal_id": g.principal_id,
        "key_id": g.key_id,
        "level": int(g.level),
        "granted_by": g.granted_by,
        "granted_at": _time(g.granted_at),
    }


def event_view(e: RotationEvent) -> dict[str, Any]:
    return e.to_dict()


def pending_view(p: PendingSwitch) -> dict[str, Any]:
    return {**p.to_dict(), "missing": list(p.missing)}


def rotation_view(s: RotationStatus) -> dict[str, Any]:
    return {
        "key_id": s.key_id,
        "consumers": list(s.consumers),
        "pending": [pending_view(p) for p in s.pending],
        "last_seq": s.last_seq,
    }


def release_view(r: Release) -> dict[str, Any]:
    return {
        "release_id": r.release_id,
        "key_id": r.key_id,
        "version": r.version,
        "algorithm": r.algorithm.value,
        "wrapped": b64(r.wrapped),
    }


def release_record_view(r: ReleaseRecord) -> dict[str, Any]:
    return {**r.to_dict(), "confirmed": r.confirmed_at is not None}


def sharing_view(s: SharingKey) -> dict[str, Any]:
    return {"id": s.key_id, **s.to_dict()}
