"""Errors of the storage layer, grouped by who is at fault.

``RollbackDetected`` and ``StateTampered`` mean the untrusted host (or its disk) presented a
state this enclave did not last commit: refuse to start, alert, never "repair". Their
messages say what was found (counter values, record counts, which record), never a key or
a plaintext. ``VersionConflict`` and ``InvalidRecord`` are the caller's; ``StoreUnavailable``
is the environment's.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised by ``enclave.storage``."""


class RollbackDetected(StorageError):
    """The stored state is older than the monotonic counter says the last commit was."""


class StateTampered(StorageError):
    """The stored state was altered: a MAC or AEAD failed, rows were added, removed,
    swapped or replaced, or the schema was changed."""


class VersionConflict(StorageError):
    """A conditional write expected another version of the record than the current one."""


class InvalidRecord(StorageError, ValueError):
    """A kind, id or value the caller passed is outside the store's limits."""


class StoreUnavailable(StorageError):
    """The store cannot serve: closed, not initialised, or it must be reopened to recover
    (a commit reached disk but the counter did not advance)."""
