"""Fixtures: a 3-admin quorum (threshold 2) from a launch config, a real SQLite store."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave.governance.operations import (
    EXPORT_BACKUP,
    ROTATE_MASTER_KEY,
    ExecutorRegistry,
    Governance,
)
from enclave.governance.proposals import Proposal
from enclave.governance.quorum import QuorumConfig
from enclave.storage.sqlite import SqliteStore
from tests.storage.file_counter import FileCounter

KMS_ID = "kms-test-eu-1"
MEASUREMENT = bytes(range(48))
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Recorder:
    """The audit callable: keeps every record it was given."""

    records: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, **kwargs: Any) -> None:
        self.records.append(kwargs)

    def of(self, operation: str, outcome: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records
            if r["operation"] == operation and (outcome is None or r["outcome"] == outcome)
        ]


@dataclass
class Calls:
    """Executors that count their calls."""

    seen: list[Proposal] = field(default_factory=list)

    async def rotate(self, proposal: Proposal) -> Mapping[str, Any]:
        self.seen.append(proposal)
        return {"new_version": len(self.seen)}

    async def slow_export(self, proposal: Proposal) -> Mapping[str, Any]:
        import asyncio

        await asyncio.sleep(0.01)
        self.seen.append(proposal)
        return {"bundle": "b1"}

    def registry(self) -> ExecutorRegistry:
        return ExecutorRegistry({ROTATE_MASTER_KEY: self.rotate, EXPORT_BACKUP: self.slow_export})


@pytest.fixture(scope="session")
def admin_keys() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(3)]


@pytest.fixture
def launch_config(admin_keys: list[Ed25519PrivateKey]) -> dict[str, Any]:
    names = ["alice", "bob", "carol"]
    return {
        "version": 1,
        "platform": "sev-snp",
        "quorum": {
            "threshold": 2,
            "admins": [
                {"name": n, "public_key": raw_public(k).hex()}
                for n, k in zip(names, admin_keys, strict=True)
            ],
        },
    }


@pytest.fixture
def quorum(launch_config: dict[str, Any]) -> QuorumConfig:
    return QuorumConfig.from_launch_config(launch_config)


@dataclass
class Env:
    path: Path
    key: bytes
    counter: FileCounter
    store: SqliteStore
    clock: Clock
    audit: Recorder
    calls: Calls
    quorum: QuorumConfig

    def governance(self, **overrides: Any) -> Governance:
        kwargs: dict[str, Any] = {
            "kms_identity": KMS_ID,
            "measurement": MEASUREMENT,
            "store": self.store,
            "executors": self.calls.registry(),
            "audit": self.audit,
            "clock": self.clock,
        }
        kwargs.update(overrides)
        return Governance(self.quorum, **kwargs)

    def restart(self) -> Governance:
        """Close the store and open it again: all in-memory state is gone."""
        self.store.close()
        self.store = SqliteStore.open(self.path, self.key, self.counter)
        return self.governance()


@pytest.fixture
def env(tmp_path: Path, quorum: QuorumConfig) -> Iterator[Env]:
    key = os.urandom(32)
    counter = FileCounter(tmp_path / "counter")
    path = tmp_path / "kms.sqlite"
    store = SqliteStore.open(path, key, counter, create=True)
    environment = Env(path, key, counter, store, Clock(), Recorder(), Calls(), quorum)
    yield environment
    environment.store.close()
