"""Export a running KMS's state into a bundle, and restore a bundle into a fresh KMS.

Owns the mapping between the KMS's store (plus its audit log) and bundle records, and the
two HSM steps that make a restore into a *new* token possible:

* **export**: every KEK is wrapped under the old token's master key, which never leaves
  that token. So before the records are gathered, each KEK version is unwrapped in the
  HSM and re-wrapped under the bundle's *transport key* (``BackupKey.transport_key()``,
  HKDF of the quorum-split backup key; imported into the HSM as a wrap-only session key;
  CKM_AES_KEY_WRAP_PAD), and the bundle's ``keks`` records carry those blobs. Every other
  key is wrapped by a KEK and travels as it is stored. A ``backup_meta/kek-transport``
  record lists the re-wrapped KEK versions; ``backup_canary/<key_id>`` records hold a
  ciphertext of a random value (and its SHA-256) made with each AES key's active version:
  the restore's functional check. The audit log's lines travel as ``audit_log/<n>``
  chunks; the manifest's ``audit_head`` names its last record.
* **restore** (``restore_state``, run only as the executor of an approved
  ``backup.restore``): the bundle is verified under the identity key the admins approved,
  decrypted with the backup key rebuilt from the custodians' shares, each KEK is imported
  under the new token's master key, then a functional check runs before anything is
  written: every canary decrypts to its digest and the restored identity key is the one
  the admins approved. Only then one store transaction replaces this (fresh) instance's
  keys, KEKs, identity and service records with the restored ones; the attested
  ``system/policy`` of this launch and this instance's governance records stay. The
  restored audit log is staged next to the live one and swapped in at the next start
  (``finish_pending_restore``, before the bootstrap opens the log), so the chain continues
  from the backed-up head under the restored audit key; the fresh instance's own short
  log is kept as ``audit/pre-restore-<backup_id>.log``. The KMS must be restarted after a
  restore: the identity clients pinned (``kms_id``) is then the restored one.

Must never: write a KEK or the transport key in the clear anywhere, write a single record
before the functional check passed, or restore a bundle signed by another identity than
the one the quorum approved.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave.backup.bundle import (
    BackupKey,
    BackupRecord,
    CreatedBackup,
    create_bundle,
    decrypt_bundle,
    prepare_backup,
)
from enclave.backup.errors import BackupError, RestoreFailed
from enclave.backup.manifest import AuditHead
from enclave.bootstrap import AUDIT_LOG_FILE
from enclave.identity import IdentityRecord, kms_id_for, raw_ed25519_public
from enclave.keys.errors import KeyHierarchyError
from enclave.keys.material import Ed25519Signer
from enclave.keys.metadata import Algorithm, KeyMetadata, KeyVersion
from enclave.kms import persist
from enclave.runtime import (
    KEKS_KIND,
    KEYS_KIND,
    SYSTEM_KEYS_KIND,
    SYSTEM_KIND,
    KmsRuntime,
    encode_key,
)
from enclave.sealing.providers.quorum import QuorumPolicy

log = logging.getLogger("enclave.backup.state")

GOVERNANCE_KIND = "governance"
GOVERNANCE_CONFIG_KIND = "governance_config"
META_KIND = "backup_meta"
CANARY_KIND = "backup_canary"
AUDIT_KIND = "audit_log"
TRANSPORT_RECORD = "kek-transport"
CANARY_CONTEXT = b"enclave-kms/backup-canary/v1"
CANARY_BYTES = 32
AUDIT_CHUNK_BYTES = 512 * 1024
# The store kinds a backup carries. The store has no listing of kinds, so this is the
# list of every kind the KMS writes (enclave.kms.persist, enclave.runtime, governance,
# the K/V key set); a feature adding a kind adds it here (see LIMITATIONS).
STATE_KINDS: tuple[str, ...] = (
    *persist.ALL_KINDS,
    SYSTEM_KIND,
    SYSTEM_KEYS_KIND,
    GOVERNANCE_KIND,
    GOVERNANCE_CONFIG_KIND,
    "pakv_keys",
    "pakv_meta",
)
# Records of the restoring instance that a restore keeps: the attested launch policy of
# this launch, and this instance's own governance history (the restore proposal itself).
KEPT_ON_RESTORE = frozenset({(SYSTEM_KIND, "policy")})
RESTORE_PENDING_LOG = Path("audit") / "restore-pending.log"
RESTORE_PENDING_MARKER = Path("audit") / "restore-pending.json"


class RestoreCheckFailed(RestoreFailed):
    """The bundle opened, but the functional check of the restored keys failed."""

    type = "backup-restore-check-failed"


@dataclass(frozen=True)
class ExportResult:
    created: CreatedBackup = field(repr=False)
    kek_versions: int
    canaries: int
    audit_records: int


@dataclass(frozen=True)
class RestoreReport:
    backup_id: str
    kms_id: str
    records: int
    keks_reimported: int
    canaries_checked: int
    audit_head: AuditHead | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "kms_id": self.kms_id,
            "records": self.records,
            "keks_reimported": self.keks_reimported,
            "canaries_checked": self.canaries_checked,
            "audit_head": self.audit_head.to_dict() if self.audit_head else None,
            "restart_required": True,
        }


def identity_public_key(runtime: KmsRuntime) -> bytes:
    """The raw Ed25519 identity public key that signs this KMS's bundles."""
    return raw_ed25519_public(runtime.identity.public_key_der)


# -- export -------------------------------------------------------------------------------------


async def export_state(runtime: KmsRuntime, custodians: QuorumPolicy) -> ExportResult:
    """A signed, encrypted bundle of the whole KMS state (see the module docstring)."""
    prepared = prepare_backup(custodians)
    transport = prepared.backup_key.transport_key()
    records: list[BackupRecord] = []
    kek_versions: list[str] = []
    for kind in STATE_KINDS:
        for ref in await runtime.store.list(kind):
            record = await runtime.store.get(kind, ref.id)
            if record is None:
                continue
            value = record.value
            if kind == KEKS_KIND:
                value, moved = await _export_kek(runtime, value, transport)
                kek_versions.extend(moved)
            records.append(BackupRecord(kind, ref.id, value))
    records.append(
        BackupRecord(
            META_KIND,
            TRANSPORT_RECORD,
            _dump({"mechanism": "CKM_AES_KEY_WRAP_PAD", "kek_versions": sorted(kek_versions)}),
        )
    )
    canaries = await _canaries(runtime)
    records.extend(canaries)
    lines, head = await asyncio.to_thread(_audit_lines, runtime)
    records.extend(_audit_chunks(lines))
    created = create_bundle(
        records,
        prepared=prepared,
        kms_identity=runtime.kms_id,
        measurement=runtime.launch_identity.measurement,
        sign=runtime.identity.sign,
        created_at=runtime.clock(),
        audit_head=head,
    )
    return ExportResult(created, len(kek_versions), len(canaries), len(lines))


async def _export_kek(
    runtime: KmsRuntime, value: bytes, transport: bytes
) -> tuple[bytes, list[str]]:
    metadata = KeyMetadata.from_dict(json.loads(value))
    moved: list[str] = []
    for version in metadata.versions:
        if not version.wrapped:
            continue  # destroyed: nothing to carry
        blob = await runtime.hierarchy.export_kek_version(version, transport)
        metadata = metadata.with_version(replace(version, wrapped=blob))
        moved.append(version.cache_id)
    return encode_key(metadata), moved


async def _canaries(runtime: KmsRuntime) -> list[BackupRecord]:
    out: list[BackupRecord] = []
    for kind in (KEYS_KIND, SYSTEM_KEYS_KIND):
        for ref in await runtime.store.list(kind):
            metadata = await runtime.load_key(ref.id, kind=kind)
            primary = metadata.primary
            if (
                metadata.algorithm is not Algorithm.AES_256_GCM
                or primary is None
                or not primary.can_produce()
            ):
                continue
            plaintext = secrets.token_bytes(CANARY_BYTES)
            kek = await runtime.kek_for(primary)
            blob = await runtime.hierarchy.encrypt(primary, kek, plaintext, CANARY_CONTEXT)
            canary = {
                "kind": kind,
                "key_id": metadata.key_id,
                "version": primary.version,
                "sha256": hashlib.sha256(plaintext).hexdigest(),
                "ciphertext": blob.hex(),
            }
            out.append(BackupRecord(CANARY_KIND, metadata.key_id, _dump(canary)))
    return out


def _audit_lines(runtime: KmsRuntime) -> tuple[list[bytes], AuditHead | None]:
    """The audit log's complete lines, after a fresh signed checkpoint, and its head."""
    runtime.audit.checkpoint_now()
    path = runtime.config.kms_dir / AUDIT_LOG_FILE
    data = path.read_bytes() if path.exists() else b""
    data = data[: data.rfind(b"\n") + 1]
    lines = [line + b"\n" for line in data.split(b"\n") if line]
    if not lines:
        return [], None
    last = json.loads(lines[-1])
    return lines, AuditHead(seq=int(last["seq"]), hash=str(last["hash"]))


def _audit_chunks(lines: Sequence[bytes]) -> list[BackupRecord]:
    chunks: list[BackupRecord] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if current and size + len(line) > AUDIT_CHUNK_BYTES:
            chunks.append(BackupRecord(AUDIT_KIND, f"{len(chunks):08d}", b"".join(current)))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        chunks.append(BackupRecord(AUDIT_KIND, f"{len(chunks):08d}", b"".join(current)))
    return chunks


# -- restore ------------------------------------------------------------------------------------


async def restore_state(
    runtime: KmsRuntime,
    bundle: bytes,
    backup_key: BackupKey,
    *,
    identity_key: bytes,
    kms_id: str,
) -> RestoreReport:
    """Restore ``bundle`` into this (fresh) instance; see the module docstring.

    ``identity_key`` (raw Ed25519) and ``kms_id`` are what the approved proposal names:
    the bundle must be signed by that key, made by that KMS, and carry that identity.
    """
    try:
        Ed25519PublicKey.from_public_bytes(identity_key)
    except ValueError:
        raise RestoreFailed("the approved identity key is not an Ed25519 key") from None
    records = decrypt_bundle(bundle, backup_key, identity_key, kms_identity=kms_id)
    by_kind: dict[str, dict[str, bytes]] = {}
    for record in records:
        by_kind.setdefault(record.kind, {})[record.id] = record.value
    transport = backup_key.transport_key()
    transport_record = _parse(by_kind.get(META_KIND, {}).get(TRANSPORT_RECORD), "transport")
    moved = set(transport_record["kek_versions"])

    # 1. KEKs: import each under this token's master key.
    keks: dict[str, KeyMetadata] = {}
    imported = 0
    for key_id, value in by_kind.get(KEKS_KIND, {}).items():
        metadata = KeyMetadata.from_dict(json.loads(value))
        for version in metadata.versions:
            if version.cache_id not in moved:
                continue
            try:
                new = await runtime.hierarchy.import_kek_version(
                    version, transport, version.wrapped
                )
            except KeyHierarchyError:
                raise RestoreCheckFailed(f"KEK {version.cache_id} did not import") from None
            metadata = metadata.with_version(new)
            imported += 1
        keks[key_id] = metadata
    if imported != len(moved):
        raise RestoreCheckFailed("the bundle lists KEK versions it does not carry")

    # 2. Functional check, before anything is written.
    checked = await _check_canaries(runtime, by_kind, keks)
    await _check_identity(runtime, by_kind, keks, identity_key, kms_id)

    # 3. One transaction: this instance's state out, the restored state in.
    restored = {kind: dict(items) for kind, items in by_kind.items() if kind in STATE_KINDS}
    restored[KEKS_KIND] = {k: encode_key(m) for k, m in keks.items()}

    def commit(tx: Any) -> int:
        written = 0
        for kind in STATE_KINDS:
            incoming = restored.get(kind, {})
            if kind == GOVERNANCE_KIND:
                for record_id, value in incoming.items():
                    if tx.get(kind, record_id) is None:
                        tx.put(kind, record_id, value, expected_version=0)
                        written += 1
                continue
            for ref in tx.list(kind):
                if (kind, ref.id) not in KEPT_ON_RESTORE:
                    tx.delete(kind, ref.id)
            for record_id, value in incoming.items():
                if (kind, record_id) in KEPT_ON_RESTORE:
                    continue
                tx.put(kind, record_id, value, expected_version=0)
                written += 1
        return written

    lines = b"".join(v for _, v in sorted(by_kind.get(AUDIT_KIND, {}).items()))
    manifest_head = _head_of(lines)
    await asyncio.to_thread(_stage_audit_log, runtime.config.kms_dir, lines, backup_key.backup_id)
    try:
        written = await runtime.store.transact(commit)
    except BaseException:
        await asyncio.to_thread(_unstage_audit_log, runtime.config.kms_dir)
        raise
    log.warning(
        "backup %s restored into this instance (kms_id %s): restart the KMS to serve it",
        backup_key.backup_id,
        kms_id,
    )
    return RestoreReport(backup_key.backup_id, kms_id, written, imported, checked, manifest_head)


async def _check_canaries(
    runtime: KmsRuntime, by_kind: Mapping[str, Mapping[str, bytes]], keks: Mapping[str, KeyMetadata]
) -> int:
    count = 0
    for key_id, value in by_kind.get(CANARY_KIND, {}).items():
        canary = _parse(value, "canary")
        source = by_kind.get(str(canary["kind"]), {}).get(key_id)
        if source is None:
            raise RestoreCheckFailed(f"the canary of {key_id} names a key the bundle lacks")
        metadata = KeyMetadata.from_dict(json.loads(source))
        version = metadata.version(int(canary["version"]))
        try:
            kek = _kek_version(keks, version)
            plaintext = await runtime.hierarchy.decrypt(
                metadata, kek, bytes.fromhex(str(canary["ciphertext"])), CANARY_CONTEXT
            )
        except (KeyHierarchyError, ValueError):
            raise RestoreCheckFailed(f"the canary of {key_id} does not decrypt") from None
        if hashlib.sha256(plaintext).hexdigest() != canary["sha256"]:
            raise RestoreCheckFailed(f"the canary of {key_id} decrypts to another value")
        count += 1
    return count


async def _check_identity(
    runtime: KmsRuntime,
    by_kind: Mapping[str, Mapping[str, bytes]],
    keks: Mapping[str, KeyMetadata],
    identity_key: bytes,
    kms_id: str,
) -> None:
    raw = by_kind.get(SYSTEM_KIND, {}).get("identity")
    if raw is None:
        raise RestoreCheckFailed("the bundle holds no system identity")
    record = IdentityRecord.from_json(raw)
    source = by_kind.get(SYSTEM_KEYS_KIND, {}).get(record.signing_key_id)
    if record.kms_id != kms_id or source is None:
        raise RestoreCheckFailed("the bundle's identity is not the approved one")
    metadata = KeyMetadata.from_dict(json.loads(source))
    version = metadata.primary
    if version is None or version.public_key is None:
        raise RestoreCheckFailed("the restored identity key has no active version")
    try:
        signer = await runtime.hierarchy.unwrap_for_use(version, _kek_version(keks, version))
    except (KeyHierarchyError, ValueError):
        raise RestoreCheckFailed("the restored identity key does not unwrap") from None
    if (
        not isinstance(signer, Ed25519Signer)
        or kms_id_for(version.public_key) != kms_id
        or raw_ed25519_public(version.public_key) != identity_key
    ):
        raise RestoreCheckFailed("the restored identity key is not the approved one")
    probe = secrets.token_bytes(32)
    Ed25519PublicKey.from_public_bytes(identity_key).verify(signer.sign(probe), probe)


def _kek_version(keks: Mapping[str, KeyMetadata], version: KeyVersion) -> KeyVersion:
    kek = keks.get(version.wrapped_by.key_id)
    if kek is None:
        raise RestoreCheckFailed(f"{version.cache_id} is wrapped by a KEK the bundle lacks")
    return kek.version(version.wrapped_by.version)


def _head_of(lines: bytes) -> AuditHead | None:
    parts = [p for p in lines.split(b"\n") if p]
    if not parts:
        return None
    last = json.loads(parts[-1])
    return AuditHead(seq=int(last["seq"]), hash=str(last["hash"]))


# -- the audit log swap --------------------------------------------------------------------------


def _stage_audit_log(kms_dir: Path, lines: bytes, backup_id: str) -> None:
    from enclave.bootstrap import write_atomically

    write_atomically(kms_dir / RESTORE_PENDING_LOG, lines)
    write_atomically(kms_dir / RESTORE_PENDING_MARKER, _dump({"backup_id": backup_id}))


def _unstage_audit_log(kms_dir: Path) -> None:
    for name in (RESTORE_PENDING_MARKER, RESTORE_PENDING_LOG):
        with contextlib.suppress(FileNotFoundError):
            (kms_dir / name).unlink()


def finish_pending_restore(kms_dir: Path) -> str | None:
    """At start, before the bootstrap opens the audit log: swap a staged restored audit
    log in (the live one is archived). Returns the backup id, or None when nothing was
    pending."""
    marker = kms_dir / RESTORE_PENDING_MARKER
    staged = kms_dir / RESTORE_PENDING_LOG
    if not marker.exists():
        return None
    try:
        backup_id = str(json.loads(marker.read_bytes())["backup_id"])
    except (ValueError, KeyError, TypeError):
        raise BackupError("the pending-restore marker is malformed") from None
    live = kms_dir / AUDIT_LOG_FILE
    if staged.exists():
        if live.exists():
            os.replace(live, live.with_name(f"pre-restore-{backup_id}.log"))
        os.replace(staged, live)
    marker.unlink()
    log.warning("restored audit log of backup %s swapped in", backup_id)
    return backup_id


# -- helpers ---------------------------------------------------------------------------------------


def _dump(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _parse(value: bytes | None, what: str) -> dict[str, Any]:
    if value is None:
        raise RestoreCheckFailed(f"the bundle lacks its {what} record")
    try:
        document = json.loads(value)
    except ValueError:
        raise RestoreCheckFailed(f"the bundle's {what} record is malformed") from None
    if not isinstance(document, dict):
        raise RestoreCheckFailed(f"the bundle's {what} record is malformed")
    return document


def bundle_digest(bundle: bytes) -> str:
    return hashlib.sha256(bundle).hexdigest()


def latest(items: Iterable[tuple[datetime, str]]) -> str | None:
    ordered = sorted(items)
    return ordered[-1][1] if ordered else None
