"""Backup bundles: all key material and metadata, encrypted, signed, and checkable offline.

A bundle is one canonical CBOR map (RFC 8949 section 4.2.3 ordering, as cbor2 writes it
with ``canonical=True``)::

    {"format": "enclave-kms-backup/v1",
     "manifest": bstr,        ; canonical JSON, see enclave.backup.manifest
     "nonce": bstr .size 12,
     "ciphertext": bstr,      ; AES-256-GCM(enc_key, nonce, payload, aad)
     "shares": [bstr, ...],   ; EncryptedShare.to_bytes(), custodian i at position i-1
     "integrity": bstr .size 32,
     "signature": bstr .size 64}

* payload = canonical CBOR ``[[kind, id, value], ...]`` in (kind, id) order;
  aad = ``"enclave-kms/backup-payload/v1" 0x00 || manifest``.
* integrity = SHA-256(``"enclave-kms/backup-integrity/v1" 0x00`` || u64be(len manifest) ||
  manifest || nonce || u64be(len ciphertext) || ciphertext || u64be(share count) ||
  for each share u64be(len) || share).
* signature = Ed25519 by the KMS identity key over
  ``"enclave-kms/backup-signature/v1" 0x00 || integrity``.

The backup key: a fresh 32-byte quorum secret per bundle (``create_quorum`` of the sealing
code splits it M-of-N and encrypts share i to custodian i), and
``backup_key = HKDF-SHA256(secret, info = Binding("kms-backup", SHA-384(label || backup
id), SHA-256(label || quorum id)))`` (the quorum provider's ``derive_seal_key``). From it,
HKDF gives the AES-256-GCM key and the HMAC key of the per-record digests.

``verify_bundle`` needs no key and no share: it checks the encoding, the integrity hash,
the signature under the pinned identity key and the manifest against the bundle (share
count, custodians, quorum id, threshold, ciphertext size). ``restore_bundle`` rebuilds the
backup key from M custodian shares, decrypts, and checks every record against its digest
and the record list; the caller then writes the records into a fresh store or token.
Restore is a privileged operation: run it only as the executor of an approved
``backup.restore`` proposal (``enclave.governance``).

Must never: write key material or the backup key anywhere in the clear; return a record
that the manifest does not list; say which share or which byte was wrong when a restore
fails (one opaque ``RestoreFailed``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import cbor2
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave.backup.errors import (
    BundleInvalid,
    BundleMalformed,
    InsufficientShares,
    IntegrityMismatch,
    ManifestInconsistent,
    RestoreFailed,
    SignatureInvalid,
)
from enclave.backup.manifest import (
    BUNDLE_FORMAT,
    AuditHead,
    CustodianEntry,
    Manifest,
    ManifestError,
    RecordDigest,
    check_kind,
    check_record_id,
)
from enclave.sealing.errors import QuorumError
from enclave.sealing.format import Binding
from enclave.sealing.providers.quorum import (
    CustodianShare,
    EncryptedShare,
    QuorumPolicy,
    QuorumSealKeyProvider,
    create_quorum,
)
from enclave.storage.store import Store

BACKUP_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
INTEGRITY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_VALUE_BYTES = 1024 * 1024
MAX_BUNDLE_BYTES = 1024 * 1024 * 1024
_BINDING_PLATFORM = "kms-backup"
_BINDING_LABEL = b"enclave-kms/backup-key-binding/v1\x00"
_PAYLOAD_AAD_LABEL = b"enclave-kms/backup-payload/v1\x00"
_INTEGRITY_LABEL = b"enclave-kms/backup-integrity/v1\x00"
_SIGNATURE_LABEL = b"enclave-kms/backup-signature/v1\x00"
_ENC_INFO = b"enclave-kms/backup-encryption-key/v1"
_DIGEST_INFO = b"enclave-kms/backup-record-digest-key/v1"
_TRANSPORT_INFO = b"enclave-kms/backup-kek-transport-key/v1"
_BUNDLE_KEYS = frozenset(
    {"format", "manifest", "nonce", "ciphertext", "shares", "integrity", "signature"}
)

Signer = Callable[[bytes], bytes]


class RecordLike(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def id(self) -> str: ...

    @property
    def value(self) -> bytes: ...


@dataclass(frozen=True)
class BackupRecord:
    """One stored record to back up or restore: ``(kind, id) -> value``. Value not in repr."""

    kind: str
    id: str
    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        try:
            check_kind(self.kind)
            check_record_id(self.id)
        except ManifestError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(self.value, bytes) or len(self.value) > MAX_VALUE_BYTES:
            raise ValueError(f"a record value is bytes of at most {MAX_VALUE_BYTES}")

    @classmethod
    def of(cls, item: RecordLike | tuple[str, str, bytes]) -> BackupRecord:
        if isinstance(item, BackupRecord):
            return item
        if isinstance(item, tuple):
            kind, record_id, value = item
            return cls(kind, record_id, value)
        return cls(item.kind, item.id, item.value)


@dataclass(frozen=True)
class BackupKey:
    """The key of one bundle (for attested replication). Secret: never logged or shown."""

    backup_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != BACKUP_KEY_BYTES:
            raise ValueError("a backup key is 32 bytes")

    def _derive(self, info: bytes) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(self.secret)

    def encryption_key(self) -> bytes:
        return self._derive(_ENC_INFO)

    def transport_key(self) -> bytes:
        """The AES-256 key the KEKs travel under in this bundle (imported into the HSM as
        a wrapping key at export and at restore; see ``enclave.backup.state``)."""
        return self._derive(_TRANSPORT_INFO)

    def record_digest(self, kind: str, record_id: str, value: bytes) -> bytes:
        message = _lp(kind.encode()) + _lp(record_id.encode()) + _lp(value)
        return hmac.new(self._derive(_DIGEST_INFO), message, hashlib.sha256).digest()


@dataclass(frozen=True)
class PreparedBackup:
    """A backup id, its fresh quorum-split key and the custodians' encrypted shares, made
    before the records are gathered (the KEKs are re-wrapped under the key's transport
    key first). Pass it to ``create_bundle(prepared=...)``; use it for one bundle only."""

    backup_id: str
    custodians: QuorumPolicy
    quorum_id: bytes
    shares: tuple[EncryptedShare, ...] = field(repr=False)
    backup_key: BackupKey = field(repr=False)


def prepare_backup(custodians: QuorumPolicy) -> PreparedBackup:
    """A fresh backup key for one bundle, split M-of-N among ``custodians``."""
    backup_id = "bak_" + secrets.token_hex(16)
    provider, encrypted = create_quorum(custodians)
    key = _backup_key(provider, backup_id)
    return PreparedBackup(backup_id, custodians, provider.quorum_id, tuple(encrypted), key)


@dataclass(frozen=True)
class CreatedBackup:
    """What ``create_bundle`` returns: the bundle bytes (safe to store anywhere), its
    manifest, and the backup key (keep in enclave memory only, for attested replication)."""

    bundle: bytes
    manifest: Manifest
    backup_key: BackupKey = field(repr=False)


@dataclass(frozen=True)
class Bundle:
    """A parsed bundle: its fields as bytes, nothing checked beyond the encoding."""

    manifest_bytes: bytes
    nonce: bytes
    ciphertext: bytes
    shares: tuple[bytes, ...]
    integrity: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return cbor2.dumps(
            {
                "format": BUNDLE_FORMAT,
                "manifest": self.manifest_bytes,
                "nonce": self.nonce,
                "ciphertext": self.ciphertext,
                "shares": list(self.shares),
                "integrity": self.integrity,
                "signature": self.signature,
            },
            canonical=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Bundle:
        if not isinstance(data, bytes) or not 0 < len(data) <= MAX_BUNDLE_BYTES:
            raise BundleMalformed("a bundle is non-empty bytes of bounded size")
        try:
            value = cbor2.loads(data, tag_hook=_reject_tag)
        except Exception:  # cbor2 raises several types on garbage: all mean "not a bundle"
            raise BundleMalformed("the bundle is not one CBOR map") from None
        if not isinstance(value, dict) or set(value) != _BUNDLE_KEYS:
            raise BundleMalformed("the bundle has exactly the fields of its format")
        if value["format"] != BUNDLE_FORMAT:
            raise BundleMalformed(f"not a {BUNDLE_FORMAT} bundle")
        shares = value["shares"]
        fields_ok = (
            all(
                isinstance(value[k], bytes)
                for k in ("manifest", "nonce", "ciphertext", "integrity", "signature")
            )
            and isinstance(shares, list)
            and all(isinstance(s, bytes) for s in shares)
            and len(value["nonce"]) == NONCE_BYTES
            and len(value["integrity"]) == INTEGRITY_BYTES
            and len(value["signature"]) == SIGNATURE_BYTES
            and len(value["ciphertext"]) >= TAG_BYTES
        )
        if not fields_ok:
            raise BundleMalformed("a bundle field has the wrong type or size")
        bundle = cls(
            value["manifest"],
            value["nonce"],
            value["ciphertext"],
            tuple(shares),
            value["integrity"],
            value["signature"],
        )
        # One bundle, one encoding: no byte of the file escapes the checks below.
        if bundle.to_bytes() != data:
            raise BundleMalformed("the bundle is not canonically encoded")
        return bundle

    def computed_integrity(self) -> bytes:
        return integrity_hash(self.manifest_bytes, self.nonce, self.ciphertext, self.shares)

    def encrypted_shares(self) -> tuple[EncryptedShare, ...]:
        try:
            return tuple(EncryptedShare.from_bytes(s) for s in self.shares)
        except QuorumError:
            raise ManifestInconsistent("a custodian share is malformed") from None


def integrity_hash(
    manifest: bytes, nonce: bytes, ciphertext: bytes, shares: Sequence[bytes]
) -> bytes:
    hasher = hashlib.sha256(_INTEGRITY_LABEL)
    hasher.update(_lp(manifest) + nonce + _lp(ciphertext) + struct.pack(">Q", len(shares)))
    for share in shares:
        hasher.update(_lp(share))
    return hasher.digest()


def signature_message(integrity: bytes) -> bytes:
    return _SIGNATURE_LABEL + integrity


def create_bundle(
    records: Iterable[RecordLike | tuple[str, str, bytes]],
    *,
    custodians: QuorumPolicy | None = None,
    kms_identity: str,
    measurement: bytes,
    sign: Signer,
    created_at: datetime,
    audit_head: AuditHead | None = None,
    prepared: PreparedBackup | None = None,
) -> CreatedBackup:
    """Encrypt and sign ``records`` under a fresh backup key split among ``custodians``
    (or under the key of ``prepared``, made earlier by ``prepare_backup``).

    ``sign`` is the KMS identity key's Ed25519 signing callable (the key never leaves
    it). ``created_at`` comes from the caller's (injected) clock.
    """
    items = sorted((BackupRecord.of(r) for r in records), key=lambda r: (r.kind, r.id))
    addresses = [(r.kind, r.id) for r in items]
    if len(set(addresses)) != len(addresses):
        raise ValueError("a record (kind, id) appears twice")
    if prepared is None:
        if custodians is None:
            raise ValueError("create_bundle needs custodians or a prepared backup")
        prepared = prepare_backup(custodians)
    elif custodians is not None and custodians != prepared.custodians:
        raise ValueError("the prepared backup was made for other custodians")
    custodians = prepared.custodians
    backup_id, key, encrypted = prepared.backup_id, prepared.backup_key, prepared.shares
    payload = cbor2.dumps([[r.kind, r.id, r.value] for r in items], canonical=True)
    manifest = Manifest(
        backup_id=backup_id,
        kms_identity=kms_identity,
        measurement=measurement,
        created_at=created_at,
        records=tuple(
            RecordDigest(r.kind, r.id, key.record_digest(r.kind, r.id, r.value)) for r in items
        ),
        audit_head=audit_head,
        payload_bytes=len(payload),
        threshold=custodians.threshold,
        quorum_id=prepared.quorum_id,
        custodians=tuple(
            CustodianEntry(s.custodian, s.custodian_key_id, s.index) for s in encrypted
        ),
    )
    manifest_bytes = manifest.to_bytes()
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(key.encryption_key()).encrypt(
        nonce, payload, _PAYLOAD_AAD_LABEL + manifest_bytes
    )
    shares = tuple(s.to_bytes() for s in encrypted)
    integrity = integrity_hash(manifest_bytes, nonce, ciphertext, shares)
    signature = sign(signature_message(integrity))
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise ValueError("the identity signer must return a 64-byte Ed25519 signature")
    bundle = Bundle(manifest_bytes, nonce, ciphertext, shares, integrity, signature)
    return CreatedBackup(bundle.to_bytes(), manifest, key)


def verify_bundle(
    bundle: bytes,
    identity_public_key: bytes | Ed25519PublicKey,
    *,
    kms_identity: str | None = None,
) -> Manifest:
    """Check ``bundle`` without restoring it; return its manifest, or raise ``BundleInvalid``.

    Checks, in order: canonical encoding; integrity hash; Ed25519 signature under the
    pinned identity key; manifest well-formed and consistent with the bundle (the shares
    are the custodians' it lists, of its quorum and threshold, in order; the ciphertext
    has the size the manifest declares); and, when given, the expected ``kms_identity``.
    """
    parsed = Bundle.from_bytes(bundle)
    _check_integrity_and_signature(parsed, identity_public_key)
    return _consistent_manifest(parsed, kms_identity)


def restore_bundle(
    bundle: bytes,
    shares: Iterable[CustodianShare | bytes],
    identity_public_key: bytes | Ed25519PublicKey | None = None,
    *,
    kms_identity: str | None = None,
) -> tuple[BackupRecord, ...]:
    """The records of ``bundle``, from at least M custodians' decrypted shares.

    With ``identity_public_key`` (recommended) the bundle is first verified completely
    (``verify_bundle``); without it the signature is skipped, and authenticity rests on
    the AEAD under the quorum-held key alone. Raises ``BundleInvalid`` for a bad bundle,
    ``InsufficientShares`` below the threshold, ``RestoreFailed`` otherwise (opaque).
    """
    parsed = Bundle.from_bytes(bundle)
    if identity_public_key is not None:
        _check_integrity_and_signature(parsed, identity_public_key)
    elif not constant_time.bytes_eq(parsed.computed_integrity(), parsed.integrity):
        raise IntegrityMismatch("the bundle's integrity hash does not match its content")
    manifest = _consistent_manifest(parsed, kms_identity)
    key = backup_key_from_shares(manifest, shares)
    return _open(parsed, manifest, key)


def decrypt_bundle(
    bundle: bytes,
    backup_key: BackupKey,
    identity_public_key: bytes | Ed25519PublicKey,
    *,
    kms_identity: str | None = None,
) -> tuple[BackupRecord, ...]:
    """The records of ``bundle`` with its backup key (released by attested replication)."""
    parsed = Bundle.from_bytes(bundle)
    _check_integrity_and_signature(parsed, identity_public_key)
    manifest = _consistent_manifest(parsed, kms_identity)
    if backup_key.backup_id != manifest.backup_id:
        raise RestoreFailed()
    return _open(parsed, manifest, backup_key)


def backup_key_from_shares(
    manifest: Manifest, shares: Iterable[CustodianShare | bytes]
) -> BackupKey:
    """Rebuild a bundle's backup key from M custodians' shares (checked by commitment)."""
    parsed: list[CustodianShare] = []
    for share in shares:
        if isinstance(share, CustodianShare):
            parsed.append(share)
        else:
            try:
                parsed.append(CustodianShare.from_bytes(share))
            except QuorumError:
                raise RestoreFailed() from None
    for share in parsed:
        header = share.header
        if (
            header.quorum_id != manifest.quorum_id
            or header.threshold != manifest.threshold
            or header.share_count != len(manifest.custodians)
        ):
            raise RestoreFailed()
    distinct = len({s.index for s in parsed})
    if distinct < manifest.threshold:
        raise InsufficientShares(distinct, manifest.threshold)
    try:
        provider = QuorumSealKeyProvider.from_shares(parsed)
    except QuorumError:
        raise RestoreFailed() from None
    return _backup_key(provider, manifest.backup_id)


def records_from_store(store: Store, kinds: Iterable[str]) -> list[BackupRecord]:
    """Every record of ``kinds`` in ``store`` (read one by one; run it in one quiet moment
    or inside the caller's consistency scheme)."""
    out: list[BackupRecord] = []
    for kind in kinds:
        for ref in store.list(kind):
            record = store.get(kind, ref.id)
            if record is not None:
                out.append(BackupRecord(record.kind, record.id, record.value))
    return out


def write_records(store: Store, records: Iterable[BackupRecord]) -> int:
    """Write restored records into a fresh ``store`` in one transaction; refuse to
    overwrite (every write expects the record not to exist). Returns the count."""
    count = 0
    with store.transaction() as txn:
        for record in records:
            txn.put(record.kind, record.id, record.value, expected_version=0)
            count += 1
    return count


# -- internals ---------------------------------------------------------------------------


def _backup_key(provider: QuorumSealKeyProvider, backup_id: str) -> BackupKey:
    binding = Binding(
        _BINDING_PLATFORM,
        hashlib.sha384(_BINDING_LABEL + backup_id.encode()).digest(),
        hashlib.sha256(_BINDING_LABEL + provider.quorum_id).digest(),
    )
    return BackupKey(backup_id, provider.derive_seal_key(binding))


def _check_integrity_and_signature(
    bundle: Bundle, identity_public_key: bytes | Ed25519PublicKey
) -> None:
    if not constant_time.bytes_eq(bundle.computed_integrity(), bundle.integrity):
        raise IntegrityMismatch("the bundle's integrity hash does not match its content")
    try:
        key = (
            identity_public_key
            if isinstance(identity_public_key, Ed25519PublicKey)
            else Ed25519PublicKey.from_public_bytes(identity_public_key)
        )
        key.verify(bundle.signature, signature_message(bundle.integrity))
    except (InvalidSignature, ValueError, TypeError):
        raise SignatureInvalid(
            "the bundle's signature does not verify under the KMS identity key"
        ) from None


def _consistent_manifest(bundle: Bundle, kms_identity: str | None) -> Manifest:
    try:
        manifest = Manifest.from_bytes(bundle.manifest_bytes)
    except ManifestError as exc:
        raise ManifestInconsistent(f"manifest: {exc}") from None
    if kms_identity is not None and manifest.kms_identity != kms_identity:
        raise ManifestInconsistent(
            f"the bundle is from KMS {manifest.kms_identity!r}, not {kms_identity!r}"
        )
    if len(bundle.ciphertext) != manifest.payload_bytes + TAG_BYTES:
        raise ManifestInconsistent("the ciphertext is not the size the manifest declares")
    shares = bundle.encrypted_shares()
    if len(shares) != len(manifest.custodians):
        raise ManifestInconsistent("the bundle does not hold one share per custodian")
    commitments = {s.header.commitment for s in shares}
    for share, custodian in zip(shares, manifest.custodians, strict=True):
        header = share.header
        if (
            share.custodian != custodian.name
            or share.custodian_key_id != custodian.key_id
            or header.index != custodian.index
            or header.quorum_id != manifest.quorum_id
            or header.threshold != manifest.threshold
            or header.share_count != len(manifest.custodians)
            or len(commitments) != 1
        ):
            raise ManifestInconsistent(
                f"share {header.index} does not match the manifest's custodian list"
            )
    return manifest


def _open(bundle: Bundle, manifest: Manifest, key: BackupKey) -> tuple[BackupRecord, ...]:
    try:
        payload = AESGCM(key.encryption_key()).decrypt(
            bundle.nonce, bundle.ciphertext, _PAYLOAD_AAD_LABEL + bundle.manifest_bytes
        )
    except InvalidTag:
        raise RestoreFailed() from None
    records = _parse_payload(payload)
    if len(records) != len(manifest.records):
        raise RestoreFailed()
    for record, listed in zip(records, manifest.records, strict=True):
        digest = key.record_digest(record.kind, record.id, record.value)
        if (record.kind, record.id) != (listed.kind, listed.id) or not constant_time.bytes_eq(
            digest, listed.digest
        ):
            raise RestoreFailed()
    return records


def _parse_payload(payload: bytes) -> tuple[BackupRecord, ...]:
    try:
        value: Any = cbor2.loads(payload, tag_hook=_reject_tag)
        if not isinstance(value, list):
            raise ValueError("payload")
        records = []
        for item in value:
            if not isinstance(item, list) or len(item) != 3:
                raise ValueError("record")
            records.append(BackupRecord(item[0], item[1], item[2]))
    except Exception:  # whatever is wrong inside an authenticated payload: one opaque error
        raise RestoreFailed() from None
    return tuple(records)


def _lp(data: bytes) -> bytes:
    return struct.pack(">Q", len(data)) + data


def _reject_tag(_decoder: object, _tag: object) -> object:
    raise ValueError("CBOR tags are not allowed")


@dataclass(frozen=True)
class BundleCheck:
    """One bundle's result in the scheduled verification job."""

    name: str
    ok: bool
    backup_id: str | None = None
    created_at: datetime | None = None
    error: str | None = None


async def verify_stored_bundles(
    bundles: Iterable[tuple[str, bytes]],
    identity_public_key: bytes | Ed25519PublicKey,
    *,
    audit: Callable[..., Awaitable[object]],
    kms_identity: str | None = None,
) -> tuple[BundleCheck, ...]:
    """The daily job: verify every stored bundle (no key, no share needed) and audit each
    result (``backup.verify``: allowed, or denied with the failed check's type). The
    caller alerts on any ``ok=False`` and on a newest ``created_at`` that is too old."""
    results: list[BundleCheck] = []
    for name, data in bundles:
        try:
            manifest = verify_bundle(data, identity_public_key, kms_identity=kms_identity)
        except BundleInvalid as exc:
            results.append(BundleCheck(name, False, error=exc.type))
            await audit(
                principal="kms",
                operation="backup.verify",
                outcome="denied",
                details={"bundle": name[:256], "reason": exc.type},
            )
            continue
        results.append(BundleCheck(name, True, manifest.backup_id, manifest.created_at))
        await audit(
            principal="kms",
            operation="backup.verify",
            outcome="allowed",
            details={
                "bundle": name[:256],
                "backup_id": manifest.backup_id,
                "records": len(manifest.records),
            },
        )
    return tuple(results)
