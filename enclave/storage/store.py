"""The storage protocol: namespaced, versioned, AEAD-protected records in transactions.

A record is ``(kind, id) -> (version, value)``; kinds are namespaces such as ``keys``,
``key_versions``, ``principals``, ``grants``, ``audit``. Versions start at 1 and grow by one
on every put; ``expected_version`` makes a write conditional (0 = "must not exist").

Implementations (``sqlite.SqliteStore`` now, PostgreSQL later) must: encrypt every value
with (kind, id, version) as AAD, bind every commit to the monotonic counter, refuse at open
a state that is not the last one committed (``RollbackDetected``, ``StateTampered``), and
return from a commit only once it is durable and the counter has advanced.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from enclave.storage.records import Record, RecordRef


class Transaction(Protocol):
    """Reads see the transaction's own writes; writes apply all at once, or not at all."""

    def get(self, kind: str, record_id: str) -> Record | None: ...

    def list(self, kind: str) -> list[RecordRef]: ...

    def put(
        self, kind: str, record_id: str, value: bytes, *, expected_version: int | None = None
    ) -> int: ...

    def delete(self, kind: str, record_id: str, *, expected_version: int | None = None) -> bool: ...


class Store(Protocol):
    """One writer at a time; every method is a (short) transaction of its own."""

    def get(self, kind: str, record_id: str) -> Record | None: ...

    def list(self, kind: str) -> list[RecordRef]: ...

    def put(
        self, kind: str, record_id: str, value: bytes, *, expected_version: int | None = None
    ) -> int: ...

    def delete(self, kind: str, record_id: str, *, expected_version: int | None = None) -> bool: ...

    def transaction(self) -> AbstractContextManager[Transaction]: ...

    def close(self) -> None: ...
