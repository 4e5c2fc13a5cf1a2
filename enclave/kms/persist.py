"""JSON records on the ``Store``: canonical encoding, parsing, and optimistic updates.

The KMS keeps its own state as canonical JSON values in the AEAD-protected store, one kind
per concept (``principals``, ``grants``, ``keys``, ``keks``, ``kms_config``,
``rotations``, ``rotation_events``, ``release_policies``, ``releases``, ``sharing``).
Every read-modify-write goes through ``update``: the write is conditional on the version
read (``expected_version``), and a lost race is retried from a fresh read, so concurrent
updates never lose a write.

Must never: write a record unconditionally after reading it, or store a plaintext key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from enclave.kms.errors import ConcurrentUpdate, StoredStateInvalid
from enclave.storage.errors import VersionConflict
from enclave.storage.records import Record
from enclave.storage.store import Store, Transaction

MAX_UPDATE_ATTEMPTS = 8

PRINCIPALS = "principals"
GRANTS = "grants"
KEYS = "keys"
KEKS = "keks"
CONFIG = "kms_config"
ROTATIONS = "rotations"
ROTATION_EVENTS = "rotation_events"
RELEASE_POLICIES = "release_policies"
RELEASES = "releases"
SHARING = "sharing"

ALL_KINDS = (PRINCIPALS, GRANTS, KEYS, KEKS, CONFIG, ROTATIONS, ROTATION_EVENTS,
             RELEASE_POLICIES, RELEASES, SHARING)  # fmt: skip


def dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def parse(record: Record) -> dict[str, Any]:
    try:
        value = json.loads(record.value)
    except (ValueError, UnicodeDecodeError):
        raise StoredStateInvalid(f"record {record.kind}/{record.id} is not JSON") from None
    if not isinstance(value, dict):
        raise StoredStateInvalid(f"record {record.kind}/{record.id} is not an object")
    return value


def read(store: Store | Transaction, kind: str, record_id: str) -> tuple[dict[str, Any], int]:
    """The record's value and version; ``({}, 0)`` when it does not exist."""
    record = store.get(kind, record_id)
    if record is None:
        return {}, 0
    return parse(record), record.version


def update(
    store: Store,
    kind: str,
    record_id: str,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    attempts: int = MAX_UPDATE_ATTEMPTS,
) -> dict[str, Any]:
    """Apply ``change`` to the current value (``{}`` when absent) with a conditional write."""
    for _ in range(attempts):
        current, version = read(store, kind, record_id)
        new = change(current)
        try:
            store.put(kind, record_id, dump(new), expected_version=version)
        except VersionConflict:
            continue
        return new
    raise ConcurrentUpdate(f"{kind}/{record_id} kept changing; nothing was written")


def snapshot(store: Store) -> dict[tuple[str, str], tuple[int, bytes]]:
    """Every KMS record with its version and value (tests compare these before/after)."""
    out: dict[tuple[str, str], tuple[int, bytes]] = {}
    for kind in ALL_KINDS:
        for ref in store.list(kind):
            record = store.get(kind, ref.id)
            if record is not None:
                out[(kind, ref.id)] = (record.version, record.value)
    return out
