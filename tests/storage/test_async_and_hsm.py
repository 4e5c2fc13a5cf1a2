"""AsyncStore from the event loop, and the store on the real HSM counter (SoftHSM2)."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave.storage import RollbackDetected, VersionConflict
from enclave.storage.aio import AsyncStore
from enclave.storage.sqlite import SqliteStore, SqliteTransaction
from tests.storage.file_counter import FileCounter


async def test_async_store_round_trip(tmp_path: Path) -> None:
    key = os.urandom(32)
    counter = FileCounter(tmp_path / "counter")
    store = await AsyncStore.open(tmp_path / "kms.sqlite", key, counter, create=True)
    try:
        versions = await asyncio.gather(
            *(store.put("grants", f"g{i}", f"grant {i}".encode()) for i in range(10))
        )
        assert versions == [1] * 10

        def move(tx: SqliteTransaction) -> int:
            tx.delete("grants", "g0")
            return tx.put("grants", "g1", b"changed", expected_version=1)

        assert await store.transact(move) == 2
        with pytest.raises(VersionConflict):
            await store.put("grants", "g1", b"x", expected_version=1)
        assert [r.id for r in await store.list("grants")][:2] == ["g1", "g2"]
        record = await store.get("grants", "g1")
        assert record is not None and record.value == b"changed"
        assert await store.delete("grants", "g9")
    finally:
        await store.close()
    assert counter.read() == store.store.state_counter


@pytest.fixture(scope="module")
def hsm_backend() -> Iterator[object]:
    from tests.hsm import support

    shared = support.acquire()
    try:
        yield shared.backend
    finally:
        support.release()


def _fresh_hsm_counter(backend: object) -> object:
    from enclave.hsm.counter import HsmMonotonicCounter

    if "label" not in inspect.signature(HsmMonotonicCounter).parameters:
        pytest.skip("HsmMonotonicCounter has no per-test label yet")
    return HsmMonotonicCounter(backend, label=f"storage-test-{os.urandom(4).hex()}")  # type: ignore[arg-type,call-arg]


def test_store_on_hsm_counter_detects_rollback(tmp_path: Path, hsm_backend: object) -> None:
    counter = _fresh_hsm_counter(hsm_backend)
    key = os.urandom(32)
    db = tmp_path / "kms.sqlite"
    with SqliteStore.open(db, key, counter, create=True) as store:  # type: ignore[arg-type]
        store.put("keys", "key_a", b"alpha")
        assert store.state_counter == counter.read()  # type: ignore[attr-defined]
    shutil.copy2(db, tmp_path / "old.sqlite")
    with SqliteStore.open(db, key, counter) as store:  # type: ignore[arg-type]
        record = store.get("keys", "key_a")
        assert record is not None and record.value == b"alpha"
        store.put("keys", "key_a", b"alpha rotated")
    Path(f"{db}-wal").unlink(missing_ok=True)
    Path(f"{db}-shm").unlink(missing_ok=True)
    shutil.copy2(tmp_path / "old.sqlite", db)
    with pytest.raises(RollbackDetected):
        SqliteStore.open(db, key, counter)  # type: ignore[arg-type]
