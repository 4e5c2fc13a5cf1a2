"""A whole KmsService on real parts: SoftHSM2 (shared backend), an SqliteStore on a file
counter, a real AuditLog on a file, the real verifier with simulated SNP roots, and one
injected clock shared by the hierarchy and the service."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.attestation.simulated.snp import SimulatedSnp
from enclave.audit.log import AuditLog
from enclave.audit.records import AuditRecord
from enclave.audit.sink import FileAuditSink
from enclave.auth.principals import Level, Principal
from enclave.keys.hierarchy import KeyHierarchy
from enclave.kms.principals import identity_proof_message
from enclave.kms.service import KmsService
from enclave.storage.sqlite import SqliteStore
from tests.hsm import support
from tests.storage.file_counter import FileCounter
from verifier.roots import TrustRoots
from verifier.verify import Verifier


class Clock:
    """The injected clock: starts at the real time (simulated certificates are valid from
    yesterday) and moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture(scope="session")
def shared_hsm() -> Iterator[support.SharedHsm]:
    shared = support.acquire()
    yield shared
    support.release()


@pytest.fixture(scope="session")
def snp(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("kms-service-snp"))


@pytest.fixture(scope="session")
def verifier(snp: SimulatedSnp) -> Verifier:
    roots = TrustRoots.from_pem({"sev-snp": snp.roots_pem()}, simulated=True, label="kms-sim")
    return Verifier(roots)


@dataclass
class Env:
    kms: KmsService
    store: SqliteStore
    clock: Clock
    audit_path: Path
    admin: Principal
    admin_key: Ed25519PrivateKey

    def audit_records(self) -> list[AuditRecord]:
        out = []
        for line in self.audit_path.read_bytes().splitlines():
            if line.strip():
                record = AuditRecord.from_json(json.loads(line))
                if not record.is_checkpoint:
                    out.append(record)
        return out

    def last_audit(self) -> AuditRecord:
        return self.audit_records()[-1]

    async def new_principal(
        self, name: str, *, kind: str = "service", level: Level | None = None
    ) -> tuple[Principal, Ed25519PrivateKey]:
        key = Ed25519PrivateKey.generate()
        public = raw_public(key)
        challenge = self.kms.principals.identity_challenge()
        proof = key.sign(identity_proof_message(challenge, public, name))
        principal = await self.kms.principals.register(
            self.admin, name=name, kind=kind, public_key=public, challenge=challenge,
            proof=proof, system_level=level,
        )  # fmt: skip
        return principal, key


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture
async def env(
    shared_hsm: support.SharedHsm, verifier: Verifier, tmp_path: Path
) -> AsyncIterator[Env]:
    clock = Clock()
    store = SqliteStore.open(
        tmp_path / "kms.sqlite", os.urandom(32), FileCounter(tmp_path / "counter"), create=True
    )
    audit_key = Ed25519PrivateKey.generate()
    audit_path = tmp_path / "audit.log"
    audit = AuditLog(
        FileAuditSink(audit_path),
        sign=audit_key.sign,
        public_key=raw_public(audit_key),
        hmac_key=os.urandom(32),
        kms_id="kms-service-tests",
    )
    audit.start()
    hierarchy = KeyHierarchy(shared_hsm.backend, clock=clock)
    kms = KmsService(hierarchy=hierarchy, store=store, audit=audit, verifier=verifier, clock=clock)
    await kms.start()
    admin_key = Ed25519PrivateKey.generate()
    admin = await kms.bootstrap_admin("root-admin", raw_public(admin_key))
    try:
        yield Env(kms, store, clock, audit_path, admin, admin_key)
    finally:
        audit.stop()
        store.close()
