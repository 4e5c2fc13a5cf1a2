"""Backup bundles: verify without a key, tamper anywhere fails, restore needs M shares."""

from __future__ import annotations

import random

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.backup.bundle import (
    BackupRecord,
    Bundle,
    CreatedBackup,
    decrypt_bundle,
    restore_bundle,
    verify_bundle,
)
from enclave.backup.custodians import custodian_policy_from_config, open_share
from enclave.backup.errors import (
    BundleInvalid,
    BundleMalformed,
    CustodianError,
    InsufficientShares,
    IntegrityMismatch,
    ManifestInconsistent,
    RestoreFailed,
    SignatureInvalid,
)
from enclave.backup.manifest import BUNDLE_FORMAT, Manifest
from enclave.sealing.providers.quorum import CustodianShare, QuorumPolicy
from tests.backup.conftest import CREATED, HEAD, KMS_ID, MEASUREMENT, Identity


def shares(created: CreatedBackup, keys: list[X25519PrivateKey]) -> list[CustodianShare]:
    return [open_share(created.bundle, k) for k in keys]


def test_verify_returns_the_manifest(
    created: CreatedBackup, identity: Identity, records: list[BackupRecord]
) -> None:
    manifest = verify_bundle(created.bundle, identity.public, kms_identity=KMS_ID)
    assert manifest == created.manifest
    assert manifest.format == BUNDLE_FORMAT
    assert manifest.kms_identity == KMS_ID and manifest.measurement == MEASUREMENT
    assert manifest.created_at == CREATED and manifest.audit_head == HEAD
    assert dict(manifest.record_counts) == {
        "grants": 1, "key_versions": 20, "keys": 20, "principals": 1,
    }  # fmt: skip
    assert len(manifest.records) == len(records)
    assert manifest.threshold == 3 and len(manifest.custodians) == 5
    assert "records" not in manifest.summary()


def test_verify_refuses_another_identity_key(created: CreatedBackup) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(SignatureInvalid):
        verify_bundle(created.bundle, other)


def test_verify_refuses_another_kms(created: CreatedBackup, identity: Identity) -> None:
    with pytest.raises(ManifestInconsistent):
        verify_bundle(created.bundle, identity.public, kms_identity="kms-other")


def test_every_single_byte_tamper_fails_verification(
    created: CreatedBackup, identity: Identity
) -> None:
    data = created.bundle
    rng = random.Random(1234)
    # Every byte of the structure (first and last 512) and a sample of the rest.
    positions = set(range(min(512, len(data)))) | set(range(max(0, len(data) - 512), len(data)))
    positions |= set(rng.sample(range(len(data)), min(1500, len(data))))
    for position in sorted(positions):
        tampered = bytearray(data)
        tampered[position] ^= 1 << rng.randrange(8)
        with pytest.raises(BundleInvalid):
            verify_bundle(bytes(tampered), identity.public)


def test_truncation_and_extension_fail(created: CreatedBackup, identity: Identity) -> None:
    for bad in (created.bundle[:-1], created.bundle + b"\x00", b"", b"\xa0"):
        with pytest.raises(BundleInvalid):
            verify_bundle(bad, identity.public)


def resign(bundle: Bundle, identity: Identity, **changes: object) -> bytes:
    """An attacker who holds the identity key (or a bug) re-signs a changed bundle: the
    manifest consistency checks still catch it."""
    from dataclasses import replace

    from enclave.backup.bundle import signature_message

    changed = replace(bundle, **changes)
    integrity = changed.computed_integrity()
    return replace(
        changed, integrity=integrity, signature=identity.sign(signature_message(integrity))
    ).to_bytes()


def test_consistent_manifest_is_required_even_when_signed(
    created: CreatedBackup, identity: Identity
) -> None:
    bundle = Bundle.from_bytes(created.bundle)
    dropped_share = resign(bundle, identity, shares=bundle.shares[:-1])
    with pytest.raises(ManifestInconsistent):
        verify_bundle(dropped_share, identity.public)
    swapped = resign(
        bundle, identity, shares=(bundle.shares[1], bundle.shares[0], *bundle.shares[2:])
    )
    with pytest.raises(ManifestInconsistent):
        verify_bundle(swapped, identity.public)
    value = Manifest.from_bytes(bundle.manifest_bytes).to_dict()
    value["record_counts"]["keys"] = 21
    from enclave.governance.proposals import canonical_json

    lying = resign(bundle, identity, manifest_bytes=canonical_json(value))
    with pytest.raises(ManifestInconsistent):
        verify_bundle(lying, identity.public)


def test_non_canonical_reencoding_is_refused(created: CreatedBackup, identity: Identity) -> None:
    value = cbor2.loads(created.bundle)
    reencoded = cbor2.dumps(dict(reversed(list(value.items()))))
    assert reencoded != created.bundle
    with pytest.raises(BundleMalformed):
        verify_bundle(reencoded, identity.public)


def test_restore_with_m_shares_round_trips_every_record(
    created: CreatedBackup,
    identity: Identity,
    records: list[BackupRecord],
    custodian_keys: list[X25519PrivateKey],
) -> None:
    expected = sorted(records, key=lambda r: (r.kind, r.id))
    for chosen in ([0, 1, 2], [4, 2, 0], [1, 3, 4], [0, 1, 2, 3, 4]):
        offered = shares(created, [custodian_keys[i] for i in chosen])
        restored = restore_bundle(created.bundle, offered, identity.public)
        assert list(restored) == expected
    # Shares also travel as bytes.
    as_bytes = [s.to_bytes() for s in shares(created, custodian_keys[:3])]
    assert list(restore_bundle(created.bundle, as_bytes)) == expected


def test_m_minus_one_shares_cannot_restore(
    created: CreatedBackup, identity: Identity, custodian_keys: list[X25519PrivateKey]
) -> None:
    two = shares(created, custodian_keys[:2])
    with pytest.raises(InsufficientShares):
        restore_bundle(created.bundle, two, identity.public)
    # The same share twice is still one custodian.
    with pytest.raises(InsufficientShares):
        restore_bundle(created.bundle, [*two, two[0]], identity.public)


def test_a_wrong_share_fails_opaquely(
    created: CreatedBackup, identity: Identity, custodian_keys: list[X25519PrivateKey]
) -> None:
    good = shares(created, custodian_keys[:3])
    forged = CustodianShare(good[2].header, bytes(32))
    with pytest.raises(RestoreFailed) as info:
        restore_bundle(created.bundle, [good[0], good[1], forged], identity.public)
    assert "share" not in str(info.value) or "offered" in str(info.value)


def test_shares_of_another_backup_do_not_open_this_one(
    created: CreatedBackup,
    identity: Identity,
    records: list[BackupRecord],
    policy: QuorumPolicy,
    custodian_keys: list[X25519PrivateKey],
) -> None:
    from enclave.backup.bundle import create_bundle

    other = create_bundle(
        records[:3],
        custodians=policy,
        kms_identity=KMS_ID,
        measurement=MEASUREMENT,
        sign=identity.sign,
        created_at=CREATED,
    )
    with pytest.raises(RestoreFailed):
        restore_bundle(created.bundle, shares(other, custodian_keys[:3]), identity.public)


def test_tampered_bundle_is_not_restored(
    created: CreatedBackup, identity: Identity, custodian_keys: list[X25519PrivateKey]
) -> None:
    offered = shares(created, custodian_keys[:3])
    tampered = bytearray(created.bundle)
    tampered[len(tampered) // 2] ^= 0x40
    with pytest.raises((BundleInvalid, RestoreFailed)):
        restore_bundle(bytes(tampered), offered, identity.public)
    with pytest.raises((BundleInvalid, RestoreFailed)):
        restore_bundle(bytes(tampered), offered)


def test_decrypt_with_the_backup_key(
    created: CreatedBackup, identity: Identity, records: list[BackupRecord]
) -> None:
    restored = decrypt_bundle(created.bundle, created.backup_key, identity.public)
    assert len(restored) == len(records)


def test_integrity_hash_is_checked_before_the_signature(
    created: CreatedBackup, identity: Identity
) -> None:
    bundle = Bundle.from_bytes(created.bundle)
    from dataclasses import replace

    flipped = replace(bundle, ciphertext=bytes([bundle.ciphertext[0] ^ 1]) + bundle.ciphertext[1:])
    with pytest.raises(IntegrityMismatch):
        verify_bundle(flipped.to_bytes(), identity.public)


def test_secrets_stay_out_of_reprs(created: CreatedBackup, records: list[BackupRecord]) -> None:
    assert created.backup_key.secret.hex() not in repr(created)
    assert "value" not in repr(records[0])


def test_custodian_side_refuses_a_foreign_key(created: CreatedBackup) -> None:
    with pytest.raises(CustodianError):
        open_share(created.bundle, X25519PrivateKey.generate())


def test_custodian_policy_from_launch_config(custodian_keys: list[X25519PrivateKey]) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    entries = [
        {
            "name": f"c{i}",
            "public_key": k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex(),
        }
        for i, k in enumerate(custodian_keys[:3])
    ]
    policy = custodian_policy_from_config({"backup": {"threshold": 2, "custodians": entries}})
    assert policy.threshold == 2 and len(policy.custodians) == 3
    with pytest.raises(CustodianError):
        custodian_policy_from_config({"backup": {"threshold": 4, "custodians": entries}})


def test_store_to_bundle_to_fresh_store(
    tmp_path: object,
    identity: Identity,
    policy: QuorumPolicy,
    custodian_keys: list[X25519PrivateKey],
) -> None:
    import os
    from pathlib import Path

    from enclave.backup.bundle import create_bundle, records_from_store, write_records
    from enclave.storage.sqlite import SqliteStore
    from tests.storage.file_counter import FileCounter

    base = Path(str(tmp_path))
    source = SqliteStore.open(
        base / "a.sqlite", os.urandom(32), FileCounter(base / "a"), create=True
    )
    source.put("keys", "key_1", b"meta-1")
    source.put("key_versions", "key_1/1", os.urandom(48))
    source.put("principals", "prn_1", b"{}")
    taken = records_from_store(source, ["keys", "key_versions", "principals"])
    backup = create_bundle(
        taken,
        custodians=policy,
        kms_identity=KMS_ID,
        measurement=MEASUREMENT,
        sign=identity.sign,
        created_at=CREATED,
    )
    restored = restore_bundle(backup.bundle, shares(backup, custodian_keys[2:]), identity.public)
    target = SqliteStore.open(
        base / "b.sqlite", os.urandom(32), FileCounter(base / "b"), create=True
    )
    assert write_records(target, restored) == 3
    for record in taken:
        got = target.get(record.kind, record.id)
        assert got is not None and got.value == record.value
    source.close()
    target.close()


async def test_scheduled_verification_reports_and_audits(
    created: CreatedBackup, identity: Identity
) -> None:
    from enclave.backup.bundle import verify_stored_bundles

    seen: list[dict[str, object]] = []

    async def audit(**kwargs: object) -> None:
        seen.append(kwargs)

    broken = bytearray(created.bundle)
    broken[-3] ^= 0x10
    results = await verify_stored_bundles(
        [("good.bak", created.bundle), ("bad.bak", bytes(broken))], identity.public, audit=audit
    )
    assert [(r.name, r.ok) for r in results] == [("good.bak", True), ("bad.bak", False)]
    assert results[0].backup_id == created.manifest.backup_id
    assert [r["outcome"] for r in seen] == ["allowed", "denied"]
