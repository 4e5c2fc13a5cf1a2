"""Fixtures: an identity key, 5 custodians (threshold 3), a realistic set of records."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave.backup.bundle import BackupRecord, CreatedBackup, create_bundle
from enclave.backup.manifest import AuditHead
from enclave.sealing.providers.quorum import Custodian, QuorumPolicy

KMS_ID = "kms-primary-eu-1"
MEASUREMENT = bytes(range(48))
CREATED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HEAD = AuditHead(seq=41, hash="ab" * 32)


@dataclass(frozen=True)
class Identity:
    key: Ed25519PrivateKey

    @property
    def public(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


@pytest.fixture(scope="session")
def identity() -> Identity:
    return Identity(Ed25519PrivateKey.generate())


@pytest.fixture(scope="session")
def custodian_keys() -> list[X25519PrivateKey]:
    return [X25519PrivateKey.generate() for _ in range(5)]


@pytest.fixture(scope="session")
def policy(custodian_keys: list[X25519PrivateKey]) -> QuorumPolicy:
    names = ["carol", "dave", "erin", "frank", "grace"]
    return QuorumPolicy(
        3,
        tuple(Custodian(n, k.public_key()) for n, k in zip(names, custodian_keys, strict=True)),
    )


@pytest.fixture(scope="session")
def records() -> list[BackupRecord]:
    out = [
        BackupRecord("keys", f"key_{i:032x}", f'{{"id":"key_{i:032x}","algo":"AES"}}'.encode())
        for i in range(20)
    ]
    out += [BackupRecord("key_versions", f"key_{i:032x}/1", os.urandom(40)) for i in range(20)]
    out += [BackupRecord("principals", "prn_admin", b'{"name":"alice"}')]
    out += [BackupRecord("grants", "empty", b"")]
    return out


@pytest.fixture(scope="session")
def created(records: list[BackupRecord], policy: QuorumPolicy, identity: Identity) -> CreatedBackup:
    return create_bundle(
        records,
        custodians=policy,
        kms_identity=KMS_ID,
        measurement=MEASUREMENT,
        sign=identity.sign,
        created_at=CREATED,
        audit_head=HEAD,
    )
