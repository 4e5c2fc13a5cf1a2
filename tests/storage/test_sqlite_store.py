"""SqliteStore: records, transactions, restart, and every way the host can present a
state other than the last one committed (named after the attack)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from enclave.storage import (
    InvalidRecord,
    RollbackDetected,
    StateTampered,
    StoreUnavailable,
    VersionConflict,
)
from enclave.storage.sqlite import SqliteStore
from tests.storage.file_counter import CrashingCounter, FileCounter

SUFFIXES = ("", "-wal", "-shm")


def snapshot(db: Path, into: Path) -> None:
    """Copy the database as the host would (the -shm index is rebuilt from the WAL)."""
    into.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        source = Path(f"{db}{suffix}")
        if source.exists():
            shutil.copy2(source, into / f"db{suffix}")


def restore(db: Path, from_dir: Path) -> None:
    for suffix in SUFFIXES:
        Path(f"{db}{suffix}").unlink(missing_ok=True)
        source = from_dir / f"db{suffix}"
        if source.exists():
            shutil.copy2(source, f"{db}{suffix}")


def raw(db: Path) -> sqlite3.Connection:
    """The host's view: the file, without the store's keys."""
    return sqlite3.connect(db, isolation_level=None)


def open_store(db: Path, key: bytes, counter: object, create: bool = False) -> SqliteStore:
    return SqliteStore.open(db, key, counter, create=create)  # type: ignore[arg-type]


def filled(db: Path, key: bytes, counter: FileCounter) -> SqliteStore:
    store = open_store(db, key, counter, create=True)
    store.put("keys", "key_a", b"alpha")
    store.put("keys", "key_b", b"bravo")
    store.put("principals", "svc", b"service")
    return store


# -- records and transactions ----------------------------------------------------------------


def test_round_trip(db_path: Path, storage_key: bytes, counter: FileCounter) -> None:
    with open_store(db_path, storage_key, counter, create=True) as store:
        assert store.get("keys", "key_1") is None
        assert store.put("keys", "key_1", b"v1") == 1
        assert store.put("keys", "key_1", b"v2") == 2
        record = store.get("keys", "key_1")
        assert record is not None and (record.version, record.value) == (2, b"v2")
        store.put("keys", "key_0", b"")
        store.put("grants", "g", b"grant")
        assert [(r.id, r.version) for r in store.list("keys")] == [("key_0", 1), ("key_1", 2)]
        assert store.delete("keys", "key_1") is True
        assert store.delete("keys", "key_1") is False
        assert store.get("keys", "key_1") is None
        assert [r.id for r in store.list("keys")] == ["key_0"]
        assert store.list("audit") == []
        assert store.state_counter == counter.read()


def test_values_are_encrypted_on_disk(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    with open_store(db_path, storage_key, counter, create=True) as store:
        store.put("keys", "key_1", b"PLAINTEXT-MARKER" * 4)
    for suffix in SUFFIXES:
        path = Path(f"{db_path}{suffix}")
        if path.exists():
            assert b"PLAINTEXT-MARKER" not in path.read_bytes()


def test_conditional_writes(db_path: Path, storage_key: bytes, counter: FileCounter) -> None:
    with open_store(db_path, storage_key, counter, create=True) as store:
        assert store.put("keys", "k", b"1", expected_version=0) == 1
        with pytest.raises(VersionConflict, match="at version 1, not at version 0"):
            store.put("keys", "k", b"x", expected_version=0)
        assert store.put("keys", "k", b"2", expected_version=1) == 2
        with pytest.raises(VersionConflict):
            store.delete("keys", "k", expected_version=1)
        assert store.delete("keys", "k", expected_version=2)
        with pytest.raises(VersionConflict, match="absent"):
            store.put("keys", "k", b"x", expected_version=2)


def test_transaction_is_atomic_and_reads_its_writes(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    with open_store(db_path, storage_key, counter, create=True) as store:
        store.put("keys", "a", b"a1")
        before = counter.read()
        with store.transaction() as tx:
            tx.put("keys", "b", b"b1")
            tx.delete("keys", "a")
            assert tx.get("keys", "a") is None
            got = tx.get("keys", "b")
            assert got is not None and got.value == b"b1"
            assert [r.id for r in tx.list("keys")] == ["b"]
        assert counter.read() == before + 1  # one commit for the whole transaction
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.put("keys", "c", b"c1")
            tx.delete("keys", "b")
            raise RuntimeError("caller changed its mind")
        assert store.get("keys", "c") is None and store.get("keys", "b") is not None
        assert counter.read() == before + 1


@pytest.mark.parametrize(
    ("kind", "record_id", "value"),
    [
        ("Keys", "a", b""),
        ("keys;drop", "a", b""),
        ("", "a", b""),
        ("keys", "", b""),
        ("keys", "x" * 257, b""),
        ("keys", "a\x00b", b""),
        ("keys", "a", "text"),
        ("keys", "a", b"x" * (1024 * 1024 + 1)),
    ],
    ids=["upper", "punct", "empty-kind", "empty-id", "long-id", "nul-id", "str", "huge"],
)
def test_invalid_records_are_refused(
    db_path: Path, storage_key: bytes, counter: FileCounter, kind: str, record_id: str, value: bytes
) -> None:
    with open_store(db_path, storage_key, counter, create=True) as store:
        with pytest.raises(InvalidRecord):
            store.put(kind, record_id, value)
        assert store.record_count == 0


def test_restart_keeps_everything(db_path: Path, storage_key: bytes, counter: FileCounter) -> None:
    filled(db_path, storage_key, counter).close()
    with open_store(db_path, storage_key, counter) as store:
        assert [r.id for r in store.list("keys")] == ["key_a", "key_b"]
        record = store.get("principals", "svc")
        assert record is not None and record.value == b"service"
        store.put("keys", "key_c", b"charlie")
    with open_store(db_path, storage_key, counter) as store:
        assert store.record_count == 4
        assert store.state_counter == counter.read()


def test_reprs_hold_no_secrets(db_path: Path, storage_key: bytes, counter: FileCounter) -> None:
    with filled(db_path, storage_key, counter) as store:
        record = store.get("keys", "key_a")
        texts = [repr(store), repr(record), repr(store._key)]
        assert not any("alpha" in t or storage_key.hex() in t for t in texts)


def test_missing_store_needs_create(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    with pytest.raises(StoreUnavailable, match="create=True"):
        open_store(db_path, storage_key, counter)
    assert not db_path.exists()


# -- attacks at open ------------------------------------------------------------------------


def test_old_copy_of_database_is_rollback(
    tmp_path: Path, db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    filled(db_path, storage_key, counter).close()
    snapshot(db_path, tmp_path / "old")
    with open_store(db_path, storage_key, counter) as store:
        store.delete("keys", "key_a")  # e.g. a revoked key the host wants back
    restore(db_path, tmp_path / "old")
    with pytest.raises(RollbackDetected, match="an older copy of the database was put back"):
        open_store(db_path, storage_key, counter)


def test_deleted_database_with_used_counter_is_rollback(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    filled(db_path, storage_key, counter).close()
    for suffix in SUFFIXES:
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(RollbackDetected, match="deleted"):
        open_store(db_path, storage_key, counter, create=True)
    db_path.write_bytes(b"")
    with pytest.raises(RollbackDetected, match="empty"):
        open_store(db_path, storage_key, counter, create=True)


def test_swapped_ciphertexts_are_tampering(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    filled(db_path, storage_key, counter).close()
    with raw(db_path) as conn:
        rows = dict(conn.execute("SELECT id, ciphertext FROM records WHERE kind = 'keys'"))
        conn.execute("UPDATE records SET ciphertext = ? WHERE id = 'key_a'", (rows["key_b"],))
        conn.execute("UPDATE records SET ciphertext = ? WHERE id = 'key_b'", (rows["key_a"],))
    with pytest.raises(StateTampered, match="do not match the head's digest"):
        open_store(db_path, storage_key, counter)


def test_deleted_row_is_tampering(db_path: Path, storage_key: bytes, counter: FileCounter) -> None:
    filled(db_path, storage_key, counter).close()
    with raw(db_path) as conn:
        conn.execute("DELETE FROM records WHERE id = 'key_b'")
    with pytest.raises(StateTampered, match="lists 3 records but the database holds 2"):
        open_store(db_path, storage_key, counter)


def test_inserted_row_is_tampering(
    tmp_path: Path, db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    filled(db_path, storage_key, counter).close()
    with raw(db_path) as conn:
        ciphertext = conn.execute("SELECT ciphertext FROM records WHERE id = 'svc'").fetchone()[0]
        conn.execute("INSERT INTO records VALUES ('principals', 'admin', 1, ?)", (ciphertext,))
    with pytest.raises(StateTampered, match="lists 3 records but the database holds 4"):
        open_store(db_path, storage_key, counter)


def test_record_replaced_by_its_older_version_is_tampering(
    tmp_path: Path, db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    filled(db_path, storage_key, counter).close()
    with raw(db_path) as conn:
        old = conn.execute("SELECT version, ciphertext FROM records WHERE id = 'key_a'").fetchone()
    with open_store(db_path, storage_key, counter) as store:
        store.put("keys", "key_a", b"alpha rotated")
    with raw(db_path) as conn:
        conn.execute("UPDATE records SET version = ?, ciphertext = ? WHERE id = 'key_a'", old)
    with pytest.raises(StateTampered, match="replaced by an older version"):
        open_store(db_path, storage_key, counter)


def test_record_moved_to_another_id_fails_aead(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    store = filled(db_path, storage_key, counter)
    with pytest.raises(StateTampered, match="does not decrypt"):
        store._key.decrypt_record("keys", "key_b", 1, _ciphertext(db_path, "key_a"))
    with pytest.raises(StateTampered, match="does not decrypt"):
        store._key.decrypt_record("keys", "key_a", 2, _ciphertext(db_path, "key_a"))
    store.close()


def _ciphertext(db: Path, record_id: str) -> bytes:
    with raw(db) as conn:
        value = conn.execute("SELECT ciphertext FROM records WHERE id = ?", (record_id,)).fetchone()
    return bytes(value[0])


def test_altered_head_is_tampering(db_path: Path, storage_key: bytes, counter: FileCounter) -> None:
    filled(db_path, storage_key, counter).close()
    with raw(db_path) as conn:
        conn.execute("UPDATE head SET mac = zeroblob(32)")
    with pytest.raises(StateTampered, match="head's MAC does not verify"):
        open_store(db_path, storage_key, counter)


def test_other_storage_key_is_refused(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    filled(db_path, storage_key, counter).close()
    with pytest.raises(StateTampered, match="another storage key"):
        open_store(db_path, bytes(32), counter)


def test_extra_schema_object_is_tampering(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    filled(db_path, storage_key, counter).close()
    with raw(db_path) as conn:
        conn.execute("CREATE TRIGGER spy AFTER INSERT ON records BEGIN DELETE FROM records; END")
    with pytest.raises(StateTampered, match="unexpected objects: spy"):
        open_store(db_path, storage_key, counter)


def test_garbage_file_is_refused(db_path: Path, storage_key: bytes, counter: FileCounter) -> None:
    db_path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StateTampered, match="not a readable SQLite database"):
        open_store(db_path, storage_key, counter, create=True)


def test_counter_behind_the_database_is_refused(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    filled(db_path, storage_key, counter).close()
    counter.force(1)
    with pytest.raises(StateTampered, match="ahead of the monotonic counter"):
        open_store(db_path, storage_key, counter)


# -- attacks and failures at runtime -----------------------------------------------------------


def test_row_swapped_under_a_running_store_is_caught_on_read(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    with filled(db_path, storage_key, counter) as store, raw(db_path) as conn:
        other = conn.execute("SELECT ciphertext FROM records WHERE id = 'key_b'").fetchone()[0]
        conn.execute("UPDATE records SET ciphertext = ? WHERE id = 'key_a'", (other,))
        with pytest.raises(StateTampered, match="changed on disk under the running store"):
            store.get("keys", "key_a")
        record = store.get("keys", "key_b")
        assert record is not None and record.value == b"bravo"


# -- crash between the SQLite commit and the counter advance ----------------------------------


def test_crash_between_commit_and_counter_advance_recovers(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    filled(db_path, storage_key, counter).close()
    crashing = CrashingCounter(counter)
    store = open_store(db_path, storage_key, crashing)
    value_before = counter.read()
    crashing.crash = True
    with pytest.raises(StoreUnavailable, match="reopen the store to recover"):
        store.put("keys", "key_c", b"charlie")
    # The store refuses further work until reopened.
    with pytest.raises(StoreUnavailable):
        store.get("keys", "key_a")
    store.close()
    assert counter.read() == value_before  # the head on disk is one ahead
    with open_store(db_path, storage_key, counter) as reopened:
        record = reopened.get("keys", "key_c")
        assert record is not None and record.value == b"charlie"  # the durable write is kept
        assert reopened.state_counter == counter.read() == value_before + 2  # recovery + re-head
    # Accepted once: the same file opens normally afterwards.
    open_store(db_path, storage_key, counter).close()


def test_fork_after_crash_cannot_lose_an_acknowledged_write(
    tmp_path: Path, db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    """The host keeps F1 (written, counter not advanced), presents the older F0, lets the
    store acknowledge a write, then swaps F1 back in: refused, thanks to the re-head."""
    filled(db_path, storage_key, counter).close()
    crashing = CrashingCounter(counter)
    store = open_store(db_path, storage_key, crashing)
    snapshot(db_path, tmp_path / "f0")  # F0: the state in force when the crash comes
    crashing.crash = True
    with pytest.raises(StoreUnavailable):
        store.put("keys", "unacknowledged", b"x")
    store.close()
    snapshot(db_path, tmp_path / "f1")
    restore(db_path, tmp_path / "f0")
    with open_store(db_path, storage_key, counter) as store:  # F0: the crashed write is gone
        assert store.get("keys", "unacknowledged") is None
        store.put("keys", "acknowledged", b"must survive")
    restore(db_path, tmp_path / "f1")
    with pytest.raises(RollbackDetected):
        open_store(db_path, storage_key, counter)


def test_counter_conflict_makes_the_store_unusable(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    store = filled(db_path, storage_key, counter)
    counter.advance(counter.read())  # another writer moved the counter
    with pytest.raises(StoreUnavailable, match="CounterConflict"):
        store.put("keys", "k", b"v")
    store.close()


def test_truncated_database_file_is_refused(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    store = filled(db_path, storage_key, counter)
    for i in range(200):  # enough pages that a cut loses rows
        store.put("audit", f"a{i:04d}", bytes(100))
    store.close()  # the last connection checkpoints the WAL into the file
    Path(f"{db_path}-wal").unlink(missing_ok=True)
    size = db_path.stat().st_size
    with open(db_path, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(StateTampered):
        open_store(db_path, storage_key, counter)


def test_transactions_do_not_nest(db_path: Path, storage_key: bytes, counter: FileCounter) -> None:
    with open_store(db_path, storage_key, counter, create=True) as store:
        with pytest.raises(StoreUnavailable, match="do not nest"), store.transaction() as tx:
            tx.put("keys", "a", b"1")
            store.put("keys", "b", b"2")
        assert store.get("keys", "a") is None and store.get("keys", "b") is None
        store.put("keys", "c", b"3")  # usable afterwards


def test_failed_commit_changes_nothing_and_store_stays_usable(
    db_path: Path, storage_key: bytes, counter: FileCounter
) -> None:
    from enclave.storage.sqlite import SqliteStoreConfig

    filled(db_path, storage_key, counter).close()
    store = SqliteStore.open(
        db_path, storage_key, counter, config=SqliteStoreConfig(busy_timeout_ms=50)
    )
    before = counter.read()
    blocker = raw(db_path)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        with pytest.raises(StoreUnavailable, match="rolled back"):
            store.put("keys", "key_c", b"charlie")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert counter.read() == before and store.get("keys", "key_c") is None
    store.put("keys", "key_c", b"charlie")
    store.close()
    with open_store(db_path, storage_key, counter) as reopened:
        assert reopened.record_count == 4
