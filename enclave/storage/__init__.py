"""Storage: namespaced, versioned, AEAD-protected records with rollback protection.

Public API: ``Store``/``Transaction`` (the protocol), ``SqliteStore`` (the embedded default),
``AsyncStore`` (the same from asyncio), ``StorageKey``, ``Record``/``RecordRef`` and the
errors. The monotonic counter protocol is ``enclave.storage.counter.MonotonicCounter``.
"""

from __future__ import annotations

from enclave.storage.errors import (
    InvalidRecord,
    RollbackDetected,
    StateTampered,
    StorageError,
    StoreUnavailable,
    VersionConflict,
)
from enclave.storage.records import Record, RecordRef, StorageKey
from enclave.storage.store import Store, Transaction

__all__ = [
    "InvalidRecord",
    "Record",
    "RecordRef",
    "RollbackDetected",
    "StateTampered",
    "StorageError",
    "StorageKey",
    "Store",
    "StoreUnavailable",
    "Transaction",
    "VersionConflict",
]
