"""The service's synchronous ``Store``: the runtime's ``SqliteStore`` with a record cache.

``KmsService`` is written for the synchronous ``Store`` protocol; the runtime holds the
``SqliteStore`` (thread-safe, one lock) behind its ``AsyncStore``. The service uses it
directly from the event loop: a read is an index look-up plus one SQLite row, cheaper than a
thread hop; a write (lifecycle, grants, principals: rare) blocks the loop for one commit.

``CachedReadStore`` keeps the last ``Record`` read of each (kind, id) and serves it again
while the store's in-memory index still names the same version, so the crypto path's key
read costs no SQLite query and no record decryption. Whoever writes (this adapter, the
``AsyncStore`` of another feature), the index moves and the cached copy is dropped: it can
never serve a state older than the store's.

Must never: serve a record whose version the store no longer holds.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from enclave.storage.records import Record, RecordRef
from enclave.storage.sqlite import SqliteStore
from enclave.storage.store import Transaction

MAX_CACHED_RECORDS = 4096


class CachedReadStore:
    """``Store`` over an ``SqliteStore``; see the module docstring."""

    def __init__(self, inner: SqliteStore, *, max_records: int = MAX_CACHED_RECORDS) -> None:
        self._inner = inner
        self._cache: dict[tuple[str, str], Record] = {}
        self._max = max_records
        # The store's index version of a record (0: absent); None: no cache (fail safe).
        entry = getattr(inner, "_entry", None)
        self._version_of: Callable[[str, str], Any] | None = entry if callable(entry) else None

    def __repr__(self) -> str:
        return f"CachedReadStore({self._inner!r})"

    def get(self, kind: str, record_id: str) -> Record | None:
        if self._version_of is None:
            return self._inner.get(kind, record_id)
        key = (kind, record_id)
        cached = self._cache.get(key)
        if cached is not None:
            entry = self._version_of(kind, record_id)
            if entry is not None and entry.version == cached.version:
                return cached
        record = self._inner.get(kind, record_id)
        if record is None:
            self._cache.pop(key, None)
            return None
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[key] = record
        return record

    def list(self, kind: str) -> list[RecordRef]:
        return self._inner.list(kind)

    def put(
        self, kind: str, record_id: str, value: bytes, *, expected_version: int | None = None
    ) -> int:
        return self._inner.put(kind, record_id, value, expected_version=expected_version)

    def delete(self, kind: str, record_id: str, *, expected_version: int | None = None) -> bool:
        return self._inner.delete(kind, record_id, expected_version=expected_version)

    def transaction(self) -> AbstractContextManager[Transaction]:
        return self._inner.transaction()

    def close(self) -> None:  # the runtime owns and closes the store
        return None
