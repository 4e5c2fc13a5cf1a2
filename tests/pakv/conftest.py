"""Fixtures for the K/V request-key tests: an in-memory Store, a settable clock, a simulated
SEV-SNP machine, a KMS identity key, loopback TLS, and a real audit log on a temp file."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.attestation.launch import LaunchIdentity
from enclave.attestation.simulated.snp import SimulatedSnp
from enclave.audit.log import AuditLog
from enclave.audit.sink import FileAuditSink
from enclave.storage.records import Record, RecordRef
from enclave.storage.sqlite import SqliteStore
from tests.storage.file_counter import FileCounter
from tests.support.tls import write_self_signed
from verifier.roots import TrustRoots
from verifier.verify import Verifier

GOOD_LAUNCH = LaunchIdentity(measurement=bytes(range(48)), config=b'{"kv": "server"}')
BAD_LAUNCH = LaunchIdentity(measurement=bytes(range(1, 49)), config=b'{"kv": "server"}')
START = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


class MemoryStore:
    """The Store protocol in memory, for tests of logic only; tests of persistence use the
    real ``SqliteStore`` (``sqlite_store``), as the enclave does."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[int, bytes]] = {}

    def get(self, kind: str, record_id: str) -> Record | None:
        row = self.rows.get((kind, record_id))
        return Record(kind, record_id, row[0], row[1]) if row else None

    def list(self, kind: str) -> list[RecordRef]:
        return [RecordRef(k, i, v) for (k, i), (v, _) in sorted(self.rows.items()) if k == kind]

    def put(
        self, kind: str, record_id: str, value: bytes, *, expected_version: int | None = None
    ) -> int:
        current = self.rows.get((kind, record_id), (0, b""))[0]
        if expected_version is not None and expected_version != current:
            raise ValueError("version conflict")
        self.rows[(kind, record_id)] = (current + 1, value)
        return current + 1

    def delete(self, kind: str, record_id: str, *, expected_version: int | None = None) -> bool:
        return self.rows.pop((kind, record_id), None) is not None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[MemoryStore]:
        saved = dict(self.rows)
        try:
            yield self
        except BaseException:
            self.rows = saved
            raise

    def close(self) -> None:
        pass


@dataclass
class Clock:
    now: dt.datetime = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += dt.timedelta(**kwargs)


@dataclass
class Identity:
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public(self) -> bytes:
        return self.key.public_key().public_bytes_raw()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@dataclass
class SqliteFixture:
    """A real ``SqliteStore`` (AEAD records, counter-bound head) that tests can reopen."""

    path: Path
    key: bytes
    counter: FileCounter
    store: SqliteStore

    def reopen(self) -> SqliteStore:
        self.store.close()
        self.store = SqliteStore.open(self.path, self.key, self.counter)
        return self.store


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteFixture]:
    path, key, counter = tmp_path / "kms.db", os.urandom(32), FileCounter(tmp_path / "counter")
    fixture = SqliteFixture(path, key, counter, SqliteStore.open(path, key, counter, create=True))
    yield fixture
    fixture.store.close()


@pytest.fixture
def identity() -> Identity:
    return Identity()


@pytest.fixture(scope="session")
def snp(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("pakv-snp"))


@pytest.fixture(scope="session")
def sim_verifier(snp: SimulatedSnp) -> Verifier:
    return Verifier(
        TrustRoots.from_pem({"sev-snp": snp.roots_pem()}, simulated=True, label="pakv-sim")
    )


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    directory = tmp_path_factory.mktemp("pakv-tls")
    cert_path, key_path, _ = write_self_signed(directory, "pakv-test", days=2)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return Tls(server, client)


@pytest.fixture
def audit_log(tmp_path: Path) -> Iterator[AuditLog]:
    signing = Ed25519PrivateKey.generate()
    log = AuditLog(
        FileAuditSink(tmp_path / "audit.jsonl"),
        sign=signing.sign,
        public_key=signing.public_key().public_bytes_raw(),
        hmac_key=b"k" * 32,
        kms_id="kms-a",
    )
    log.start()
    yield log
    log.stop()


def audit_records(log: AuditLog) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.export_lines()[1:]]
    return [r for r in lines if r["operation"] != "audit.checkpoint"]
