"""Key inventory facts shared by metrics, rules, jobs, the dashboard and reports.

A key's state, and whether it is past its rotation schedule, computed one way everywhere.
Reads ``KeyMetadata`` only; never touches wrapped material.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from enclave.keys.metadata import KeyMetadata, VersionState

# Most "alive" state first: a key's state is the first of these any of its versions is in.
_STATE_ORDER: tuple[VersionState, ...] = (
    VersionState.ACTIVE,
    VersionState.DECRYPT_ONLY,
    VersionState.PENDING,
    VersionState.DISABLED,
    VersionState.PENDING_DELETION,
    VersionState.DESTROYED,
)
KEY_STATES: tuple[str, ...] = tuple(s.value for s in _STATE_ORDER)


def key_state(key: KeyMetadata) -> str:
    """The key's state: the most usable state among its versions (``active`` if it has a
    primary, ``destroyed`` only when every version is)."""
    present = {v.state for v in key.versions}
    for state in _STATE_ORDER:
        if state in present:
            return state.value
    return VersionState.DESTROYED.value  # unreachable: a key has at least one version


def is_compromised(key: KeyMetadata) -> bool:
    return any(v.compromised for v in key.versions)


def count_states(keys: Iterable[KeyMetadata]) -> dict[str, int]:
    counts = Counter(key_state(k) for k in keys)
    return {state: counts.get(state, 0) for state in KEY_STATES}


@dataclass(frozen=True)
class RotationStatus:
    """Where a key stands against its rotation schedule. ``due`` is ``None`` for keys
    rotated on demand only and for keys with no active version (nothing to rotate)."""

    key_id: str
    owner: str
    period_days: int | None
    last_rotated: datetime | None
    due: datetime | None
    overdue: bool
    days_overdue: int

    @property
    def scheduled(self) -> bool:
        return self.due is not None


def rotation_status(
    key: KeyMetadata, now: datetime, grace: timedelta = timedelta(0)
) -> RotationStatus:
    primary = key.primary
    last = primary.created_at if primary is not None else None
    due = key.rotation.next_due(last) if last is not None else None
    overdue = due is not None and now > due + grace
    days = (now - due).days if overdue and due is not None else 0
    return RotationStatus(key.key_id, key.owner, key.rotation.period_days, last, due, overdue, days)


def overdue_keys(
    keys: Iterable[KeyMetadata], now: datetime, grace: timedelta = timedelta(0)
) -> list[RotationStatus]:
    return [s for s in (rotation_status(k, now, grace) for k in keys) if s.overdue]
