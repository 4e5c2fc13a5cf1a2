"""The embedded store: SQLite (WAL, synchronous=FULL) with rollback protection.

Owns the database file. Must never: acknowledge a write before it is on disk and the
counter has advanced; accept at open a state other than the last one committed; put a key
or a plaintext value in an error, a log or a repr.

Layout: one generic table ``records(kind, id, version, ciphertext)`` (the namespaces
``keys``, ``key_versions``, ``principals``, ``grants``, ``audit``... are kinds) and one
``head`` row ``{counter, digest, count}`` + MAC (see ``records``).

Commit protocol (one writer; the state counter lives in the HSM):

1. in one SQLite transaction: write the records and the new head with counter ``c + 1``,
   COMMIT (WAL + synchronous=FULL: the WAL is fsynced before COMMIT returns);
2. advance the monotonic counter from ``c`` to ``c + 1``;
3. only then return: the write is acknowledged.

Open: verify the schema, the head's MAC, that the head counter ``h`` is the counter value
``v`` (or ``v + 1``, below), and recompute the digest and count over every row. ``h < v``
is a rollback (an older copy of the file); a digest or count mismatch is tampering.

Crash between 1 and 2 leaves ``h = v + 1``. That head can only have been written by this
store key while the counter was at ``v``, on top of the state at ``v``, which held every
acknowledged write; so it is accepted, and the counter advanced to ``h`` (once: afterwards
``h = v``). Dropping it instead would also be safe (it was never acknowledged), which is
why the host presenting the older ``h = v`` file in that case is not a rollback either.

Re-head at every open. The acceptance of ``v + 1`` has one trap: after a crash that left a
file F1 at ``v + 1``, the host may present the older F0 at ``v``; if the store then
committed a user write at ``v + 1`` and acknowledged it, F1 (also at ``v + 1``) would be
accepted later and that acknowledged write lost. So the first commit after every open is a
re-head: same records, counter ``v + 1``, no user write. Any head written before this open
has a counter of at most ``v + 1`` (a head ``h`` is only written while the counter is
``h - 1``), so user commits, which start at ``v + 2``, never share a counter value with an
older head; and the only older state that can tie with the re-head (F1) holds every
acknowledged write. Each open costs one extra commit and counter advance.

Runtime: the host can change the file under a running store too, so the store keeps an
in-memory index (kind, id) -> (version, SHA-256(ciphertext)) and checks every row it reads
against it (``StateTampered``); the index is also what the incremental digest updates.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import constant_time

from enclave.storage.counter import MonotonicCounter
from enclave.storage.errors import (
    InvalidRecord,
    RollbackDetected,
    StateTampered,
    StoreUnavailable,
    VersionConflict,
)
from enclave.storage.records import (
    DIGEST_MODULUS,
    KIND_RE,
    MAX_ID_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    Head,
    Record,
    RecordRef,
    StorageKey,
    check_id,
    check_kind,
    check_value,
)

SCHEMA_VERSION = 1
APPLICATION_ID = 0x4B4D5331  # "KMS1"
_SCHEMA = (
    "CREATE TABLE records (kind TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, "
    "ciphertext BLOB NOT NULL, PRIMARY KEY (kind, id)) WITHOUT ROWID",
    "CREATE TABLE head (slot INTEGER PRIMARY KEY CHECK (slot = 1), body BLOB NOT NULL, "
    "mac BLOB NOT NULL)",
)
_SQLITE_SYNCHRONOUS_FULL = 2


@dataclass(frozen=True)
class SqliteStoreConfig:
    """Named limits of the SQLite store."""

    busy_timeout_ms: int = 5000
    max_records_per_transaction: int = 10_000


@dataclass(frozen=True)
class _Entry:
    version: int
    ciphertext_hash: bytes
    element: int


@dataclass(frozen=True)
class _PendingWrite:
    version: int
    value: bytes | None  # None: delete


class SqliteStore:
    """``Store`` on one SQLite file. Thread-safe (one lock); one writer process."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        key: StorageKey,
        counter: MonotonicCounter,
        path: Path,
        head: Head,
        index: dict[str, dict[str, _Entry]],
        config: SqliteStoreConfig,
    ) -> None:
        self._conn = conn
        self._key = key
        self._counter = counter
        self._path = path
        self._head = head
        self._index = index
        self._config = config
        self._lock = threading.RLock()
        self._unusable: str | None = None
        self._in_transaction = False

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path | str,
        storage_key: StorageKey | bytes,
        counter: MonotonicCounter,
        *,
        create: bool = False,
        config: SqliteStoreConfig | None = None,
    ) -> SqliteStore:
        """Open (and verify) the store at ``path``; ``create`` initialises a missing one,
        only while the counter is still 0 (a missing file with a used counter is a
        deleted state: ``RollbackDetected``)."""
        path = Path(path)
        config = config or SqliteStoreConfig()
        key = storage_key if isinstance(storage_key, StorageKey) else StorageKey(storage_key)
        counter_value = counter.read()
        existed = path.exists()
        if not existed and counter_value != 0:
            raise RollbackDetected(
                f"no database at {path}, but the monotonic counter is at {counter_value}: "
                "the stored state was deleted or moved"
            )
        if not existed and not create:
            raise StoreUnavailable(f"no store at {path}; open with create=True to initialise")
        conn = _connect(path, config)
        try:
            if not _has_schema(conn):
                if counter_value != 0:
                    raise RollbackDetected(
                        f"the database at {path} is empty, but the monotonic counter is at "
                        f"{counter_value}: the stored state was replaced by an empty file"
                    )
                if not create:
                    raise StoreUnavailable(f"the database at {path} is not initialised")
                _initialise(conn, key)
                _fsync_directory(path.parent)
            return cls._verify_and_recover(conn, key, counter, path, config)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StateTampered(
                f"the database at {path} is damaged or not the store's: {exc}"
            ) from None
        except BaseException:
            conn.close()
            raise

    @classmethod
    def _verify_and_recover(
        cls,
        conn: sqlite3.Connection,
        key: StorageKey,
        counter: MonotonicCounter,
        path: Path,
        config: SqliteStoreConfig,
    ) -> SqliteStore:
        _check_schema(conn)
        heads = conn.execute("SELECT slot, body, mac FROM head").fetchall()
        if len(heads) != 1 or heads[0][0] != 1:
            raise StateTampered(f"the database holds {len(heads)} head rows, not exactly one")
        head = key.verify_head(heads[0][1], heads[0][2])
        value = counter.read()
        if head.counter < value:
            raise RollbackDetected(
                f"the database is at state {head.counter} but the monotonic counter is at "
                f"{value}: an older copy of the database was put back "
                f"({value - head.counter} committed state(s) missing)"
            )
        if head.counter > value + 1:
            raise StateTampered(
                f"the database is at state {head.counter}, ahead of the monotonic counter "
                f"({value}) by more than one commit: the counter was reset, or belongs to "
                "another store"
            )
        index, digest, count = _scan(conn, key)
        if count != head.count:
            raise StateTampered(
                f"the head lists {head.count} records but the database holds {count}: "
                "records were deleted or inserted behind the store's back"
            )
        if digest != head.digest:
            raise StateTampered(
                f"the {count} records do not match the head's digest: a record was altered, "
                "swapped with another, or replaced by an older version"
            )
        store = cls(
            conn, key=key, counter=counter, path=path, head=head, index=index, config=config
        )
        if head.counter == value + 1:
            # The last commit reached disk but the counter did not advance (crash between
            # the two steps): it is the latest state; make the counter say so.
            store._advance_counter(head.counter)
        store._commit({})  # re-head: see the module docstring
        return store

    # -- Store protocol ---------------------------------------------------------------------

    def get(self, kind: str, record_id: str) -> Record | None:
        with self._lock:
            self._check_usable()
            return self._read(check_kind(kind), check_id(record_id))

    def list(self, kind: str) -> list[RecordRef]:
        with self._lock:
            self._check_usable()
            entries = self._index.get(check_kind(kind), {})
            return [RecordRef(kind, rid, e.version) for rid, e in sorted(entries.items())]

    def put(
        self, kind: str, record_id: str, value: bytes, *, expected_version: int | None = None
    ) -> int:
        with self.transaction() as tx:
            return tx.put(kind, record_id, value, expected_version=expected_version)

    def delete(self, kind: str, record_id: str, *, expected_version: int | None = None) -> bool:
        with self.transaction() as tx:
            return tx.delete(kind, record_id, expected_version=expected_version)

    @contextmanager
    def transaction(self) -> Iterator[SqliteTransaction]:
        """A transaction: holds the store's lock; commits on normal exit, else discards."""
        with self._lock:
            self._check_usable()
            if self._in_transaction:
                raise StoreUnavailable("transactions do not nest; use the open transaction")
            tx = SqliteTransaction(self)
            self._in_transaction = True
            try:
                yield tx
            finally:
                tx._closed = True
                self._in_transaction = False
            self._commit(tx._writes)

    def close(self) -> None:
        with self._lock:
            if self._unusable != "closed":
                self._unusable = "closed"
                self._conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SqliteStore(path={str(self._path)!r}, state={self._head.counter}, "
            f"records={self._head.count})"
        )

    @property
    def state_counter(self) -> int:
        """The counter value of the state in force (equal to the monotonic counter)."""
        return self._head.counter

    @property
    def record_count(self) -> int:
        return self._head.count

    # -- internals -----------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._unusable == "closed":
            raise StoreUnavailable("the store is closed")
        if self._unusable is not None:
            raise StoreUnavailable(self._unusable)

    def _entry(self, kind: str, record_id: str) -> _Entry | None:
        return self._index.get(kind, {}).get(record_id)

    def _read(self, kind: str, record_id: str) -> Record | None:
        entry = self._entry(kind, record_id)
        if entry is None:
            return None
        try:
            row = self._conn.execute(
                "SELECT version, ciphertext FROM records WHERE kind = ? AND id = ?",
                (kind, record_id),
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"reading ({kind!r}, {record_id!r}) failed: {exc}") from None
        if (
            row is None
            or row[0] != entry.version
            or not isinstance(row[1], bytes)
            or not constant_time.bytes_eq(hashlib.sha256(row[1]).digest(), entry.ciphertext_hash)
        ):
            raise StateTampered(
                f"record ({kind!r}, {record_id!r}) changed on disk under the running store"
            )
        value = self._key.decrypt_record(kind, record_id, entry.version, row[1])
        return Record(kind, record_id, entry.version, value)

    def _commit(self, writes: dict[tuple[str, str], _PendingWrite]) -> None:
        """Steps 1-3 of the commit protocol. ``writes`` empty: a re-head."""
        self._check_usable()
        if len(writes) > self._config.max_records_per_transaction:
            raise InvalidRecord(
                f"a transaction writes at most {self._config.max_records_per_transaction} records"
            )
        digest, count = self._head.digest, self._head.count
        upserts: builtins.list[tuple[str, str, int, bytes]] = []
        deletes: builtins.list[tuple[str, str]] = []
        changes: builtins.list[tuple[str, str, _Entry | None]] = []
        for (kind, record_id), write in writes.items():
            old = self._entry(kind, record_id)
            if old is not None:
                digest -= old.element
                count -= 1
            if write.value is None:
                if old is not None:
                    deletes.append((kind, record_id))
                    changes.append((kind, record_id, None))
                continue
            ciphertext = self._key.encrypt_record(kind, record_id, write.version, write.value)
            element = self._key.element_hash(kind, record_id, write.version, ciphertext)
            digest += element
            count += 1
            upserts.append((kind, record_id, write.version, ciphertext))
            entry = _Entry(write.version, hashlib.sha256(ciphertext).digest(), element)
            changes.append((kind, record_id, entry))
        new_head = Head(self._head.counter + 1, digest % DIGEST_MODULUS, count)
        self._write(upserts, deletes, new_head)
        self._advance_counter(new_head.counter)
        for kind, record_id, change in changes:
            if change is None:
                del self._index[kind][record_id]
            else:
                self._index.setdefault(kind, {})[record_id] = change
        self._head = new_head

    def _write(
        self,
        upserts: builtins.list[tuple[str, str, int, bytes]],
        deletes: builtins.list[tuple[str, str]],
        head: Head,
    ) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO records (kind, id, version, ciphertext) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (kind, id) DO UPDATE SET version = excluded.version, "
                "ciphertext = excluded.ciphertext",
                upserts,
            )
            for kind, record_id in deletes:
                gone = conn.execute(
                    "DELETE FROM records WHERE kind = ? AND id = ?", (kind, record_id)
                ).rowcount
                if gone != 1:
                    raise StateTampered(
                        f"record ({kind!r}, {record_id!r}) vanished from disk under the store"
                    )
            updated = conn.execute(
                "UPDATE head SET body = ?, mac = ? WHERE slot = 1",
                (head.body(), self._key.head_mac(head)),
            ).rowcount
            if updated != 1:
                raise StateTampered("the head row vanished from disk under the running store")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                # Nothing was written and nothing acknowledged; the store stays usable.
                raise StoreUnavailable(f"the commit failed and was rolled back: {exc}") from None
            raise

    def _advance_counter(self, target: int) -> None:
        try:
            reached = self._counter.advance(target - 1)
        except Exception as exc:
            self._unusable = (
                f"state {target} is on disk but the monotonic counter did not advance "
                f"({type(exc).__name__}); reopen the store to recover"
            )
            raise StoreUnavailable(self._unusable) from exc
        if reached != target:
            self._unusable = f"the monotonic counter moved to {reached}, not {target}"
            raise StoreUnavailable(self._unusable)


class SqliteTransaction:
    """Buffers writes in memory (reads see them); the store applies them at commit."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._writes: dict[tuple[str, str], _PendingWrite] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the transaction is over")

    def _version(self, kind: str, record_id: str) -> int:
        pending = self._writes.get((kind, record_id))
        if pending is not None:
            return 0 if pending.value is None else pending.version
        entry = self._store._entry(kind, record_id)
        return 0 if entry is None else entry.version

    def get(self, kind: str, record_id: str) -> Record | None:
        self._check_open()
        kind, record_id = check_kind(kind), check_id(record_id)
        pending = self._writes.get((kind, record_id))
        if pending is not None:
            if pending.value is None:
                return None
            return Record(kind, record_id, pending.version, pending.value)
        return self._store._read(kind, record_id)

    def list(self, kind: str) -> list[RecordRef]:
        self._check_open()
        kind = check_kind(kind)
        versions = {rid: e.version for rid, e in self._store._index.get(kind, {}).items()}
        for (pending_kind, rid), pending in self._writes.items():
            if pending_kind != kind:
                continue
            if pending.value is None:
                versions.pop(rid, None)
            else:
                versions[rid] = pending.version
        return [RecordRef(kind, rid, version) for rid, version in sorted(versions.items())]

    def put(
        self, kind: str, record_id: str, value: bytes, *, expected_version: int | None = None
    ) -> int:
        self._check_open()
        kind, record_id, value = check_kind(kind), check_id(record_id), check_value(value)
        current = self._version(kind, record_id)
        _check_expected(kind, record_id, current, expected_version)
        self._writes[(kind, record_id)] = _PendingWrite(current + 1, value)
        return current + 1

    def delete(self, kind: str, record_id: str, *, expected_version: int | None = None) -> bool:
        self._check_open()
        kind, record_id = check_kind(kind), check_id(record_id)
        current = self._version(kind, record_id)
        _check_expected(kind, record_id, current, expected_version)
        if current == 0:
            return False
        self._writes[(kind, record_id)] = _PendingWrite(0, None)
        return True


def _check_expected(kind: str, record_id: str, current: int, expected: int | None) -> None:
    if expected is not None and expected != current:
        state = "absent" if current == 0 else f"at version {current}"
        raise VersionConflict(
            f"record ({kind!r}, {record_id!r}) is {state}, not at version {expected}"
        )


def _connect(path: Path, config: SqliteStoreConfig) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # The file is untrusted: no schema-defined code may run with privileges.
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute(f"PRAGMA busy_timeout = {int(config.busy_timeout_ms)}")
        conn.execute("PRAGMA cell_size_check = ON")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreUnavailable(f"SQLite refused WAL mode for {path} (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        if conn.execute("PRAGMA synchronous").fetchone()[0] != _SQLITE_SYNCHRONOUS_FULL:
            raise StoreUnavailable("SQLite refused synchronous=FULL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StateTampered(f"{path} is not a readable SQLite database: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _has_schema(conn: sqlite3.Connection) -> bool:
    try:
        count = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StateTampered(f"the database is not a readable SQLite database: {exc}") from None
    return bool(count)


def _initialise(conn: sqlite3.Connection, key: StorageKey) -> None:
    """The empty state at counter 0; the open that follows re-heads it to 1."""
    empty = Head(counter=0, digest=0, count=0)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(
            "INSERT INTO head (slot, body, mac) VALUES (1, ?, ?)",
            (empty.body(), key.head_mac(empty)),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _expected_schema() -> list[tuple[object, ...]]:
    reference = sqlite3.connect(":memory:")
    try:
        for statement in _SCHEMA:
            reference.execute(statement)
        return reference.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
        ).fetchall()
    finally:
        reference.close()


def _check_schema(conn: sqlite3.Connection) -> None:
    found = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
    ).fetchall()
    expected = _expected_schema()
    if found != expected:
        extra = sorted({str(r[1]) for r in found} - {str(r[1]) for r in expected})
        detail = f"; unexpected objects: {', '.join(extra)}" if extra else ""
        raise StateTampered(f"the database schema is not the store's{detail}")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    application = conn.execute("PRAGMA application_id").fetchone()[0]
    if (version, application) != (SCHEMA_VERSION, APPLICATION_ID):
        raise StateTampered(
            f"the database is schema {version} of application {application:#x}, "
            f"not schema {SCHEMA_VERSION} of {APPLICATION_ID:#x}"
        )


def _scan(
    conn: sqlite3.Connection, key: StorageKey
) -> tuple[dict[str, dict[str, _Entry]], int, int]:
    index: dict[str, dict[str, _Entry]] = {}
    digest = 0
    count = 0
    for kind, record_id, version, ciphertext in conn.execute(
        "SELECT kind, id, version, ciphertext FROM records"
    ):
        if (
            not isinstance(kind, str)
            or not KIND_RE.fullmatch(kind)
            or not isinstance(record_id, str)
            or not record_id
            or len(record_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES
            or type(version) is not int
            or version < 1
            or not isinstance(ciphertext, bytes)
            or len(ciphertext) < NONCE_BYTES + TAG_BYTES
        ):
            raise StateTampered(f"a malformed record row ({kind!r}, {record_id!r}) is stored")
        element = key.element_hash(kind, record_id, version, ciphertext)
        index.setdefault(kind, {})[record_id] = _Entry(
            version, hashlib.sha256(ciphertext).digest(), element
        )
        digest = (digest + element) % DIGEST_MODULUS
        count += 1
    return index, digest, count


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
