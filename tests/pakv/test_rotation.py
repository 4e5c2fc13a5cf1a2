"""Rotation over simulated time: active keys, successors a day early, retention, ids."""

from __future__ import annotations

import base64
import datetime as dt
import os

import pytest

from enclave.pakv.keyset import (
    ROTATION_INTERVAL,
    ROTATION_INTERVAL_SECONDS,
    KeySet,
    KeySetError,
    RotationPolicy,
    UnwrapError,
    to_ms,
)
from enclave.pakv.store import KEYS_KIND, KeyRecord
from enclave.storage.store import Store
from tests.pakv.conftest import Clock, MemoryStore, SqliteFixture

WINDOW = dt.timedelta(days=45)


def make(store: Store, clock: Clock, **policy: object) -> KeySet:
    return KeySet(
        store, os.urandom(32), kms_id="kms-a", clock=clock, policy=RotationPolicy(**policy)
    )  # type: ignore[arg-type]


def test_interval_constant_is_six_hours() -> None:
    assert dt.timedelta(hours=6) == ROTATION_INTERVAL
    assert ROTATION_INTERVAL_SECONDS == 21600


def test_first_run_creates_five_keys_valid_eight_days(store: MemoryStore, clock: Clock) -> None:
    keys = make(store, clock)
    report = keys.run_rotation(clock.now)
    assert report.created == (
        "8000000000000000",
        "4000000000000000",
        "C000000000000000",
        "2000000000000000",
        "A000000000000000",
    )
    active = keys.active(clock.now)
    assert len(active) == 5
    for record in active:
        assert record.expiration_ms - record.activation_ms == 8 * 86_400_000
    assert keys.run_rotation(clock.now).created == ()  # idempotent


def test_120_days_in_6_hour_steps(store: MemoryStore, clock: Clock) -> None:
    keys = make(store, clock)
    created: dict[str, KeyRecord] = {}
    destroyed: set[str] = set()
    end = clock.now + dt.timedelta(days=120)
    while clock.now <= end:
        report = keys.run_rotation(clock.now)
        destroyed.update(report.destroyed)
        for record in keys.held():
            created.setdefault(record.key_id, record)
        now_ms = to_ms(clock.now)
        # The public set is never empty, and never below the configured count.
        active = keys.active(clock.now)
        assert len(active) >= 5
        # Every key a server may still hold (created within 45 days) has its own first byte.
        window = [
            r
            for r in created.values()
            if now_ms - r.creation_ms <= WINDOW / dt.timedelta(milliseconds=1)
        ]
        first_bytes = [r.ohttp_id for r in window]
        assert len(first_bytes) == len(set(first_bytes)), sorted(first_bytes)
        # Everything held is distinct too (retention keeps ids reserved).
        held = [r.ohttp_id for r in keys.held()]
        assert len(held) == len(set(held))
        clock.advance(hours=6)
    assert len(created) > 60  # 5 slots, a new key per slot every 7 days, over 120 days
    assert destroyed  # keys past expiry + retention are gone
    for key_id in destroyed:
        assert keys.get(key_id) is None
        record = created[key_id]
        assert record.expiration_ms + 45 * 86_400_000 <= to_ms(clock.now)


def test_successor_is_made_early_and_activates_a_day_before_expiry(
    store: MemoryStore, clock: Clock
) -> None:
    keys = make(store, clock, active_count=1)
    keys.run_rotation(clock.now)
    (first,) = keys.active(clock.now)
    clock.advance(days=5, hours=23)  # 25 h before the successor's activation: not yet due
    assert keys.run_rotation(clock.now).created == ()
    clock.advance(hours=6)  # 19 h before its activation (within the 1-day lead): made now
    (successor_id,) = keys.run_rotation(clock.now).created
    successor = keys.get(successor_id)
    assert successor is not None
    assert successor.activation_ms == first.expiration_ms - 86_400_000
    assert successor.creation_ms < successor.activation_ms  # servers can fetch it first
    assert [r.key_id for r in keys.active(clock.now)] == [first.key_id]
    clock.advance(hours=19)  # 7 days in: one day before the first key expires
    assert [r.key_id for r in keys.active(clock.now)] == [successor_id, first.key_id]
    clock.advance(days=1)
    assert [r.key_id for r in keys.active(clock.now)] == [successor_id]


def test_private_halves_are_wrapped_in_the_store(sqlite_store: SqliteFixture, clock: Clock) -> None:
    store = sqlite_store.store
    keys = make(store, clock, active_count=2)
    keys.run_rotation(clock.now)
    disk = b"".join(p.read_bytes() for p in sqlite_store.path.parent.glob("kms.db*"))
    for record in keys.held():
        private = keys.material(record)
        assert len(private) == 32
        stored = store.get(KEYS_KIND, record.key_id)
        assert stored is not None  # the record as the store decrypts it: still wrapped
        for form in (private, private.hex().encode(), base64.b64encode(private)):
            assert form not in stored.value
            assert form not in disk


def test_another_wrapping_key_cannot_unwrap(sqlite_store: SqliteFixture, clock: Clock) -> None:
    make(sqlite_store.store, clock, active_count=1).run_rotation(clock.now)
    other = KeySet(sqlite_store.store, os.urandom(32), kms_id="kms-a", clock=clock)
    (record,) = other.held()
    with pytest.raises(UnwrapError):
        other.material(record)


def test_the_key_set_survives_reopening_the_store(
    sqlite_store: SqliteFixture, clock: Clock
) -> None:
    wrapping = os.urandom(32)
    keys = KeySet(sqlite_store.store, wrapping, kms_id="kms-a", clock=clock)
    keys.run_rotation(clock.now)
    before = {r.key_id: keys.material(r) for r in keys.held()}
    again = KeySet(sqlite_store.reopen(), wrapping, kms_id="kms-a", clock=clock)
    assert {r.key_id: again.material(r) for r in again.held()} == before
    assert again.run_rotation(clock.now).created == ()  # nothing due: nothing made twice


def test_missed_runs_still_leave_keys(store: MemoryStore, clock: Clock) -> None:
    keys = make(store, clock)
    keys.run_rotation(clock.now)
    clock.advance(days=30)  # the scheduler was down
    report = keys.run_rotation(clock.now)
    assert len(report.created) == 5
    assert len(keys.active(clock.now)) == 5


def test_counter_is_never_reused_after_destruction(
    sqlite_store: SqliteFixture, clock: Clock
) -> None:
    wrapping = os.urandom(32)
    keys = KeySet(
        sqlite_store.store, wrapping, kms_id="kms-a", clock=clock,
        policy=RotationPolicy(active_count=1),
    )  # fmt: skip
    keys.run_rotation(clock.now)
    clock.advance(days=200)
    report = keys.run_rotation(clock.now)
    assert report.destroyed == ("8000000000000000",)
    assert report.created == ("4000000000000000",)
    # After a restart too: the counter is in the store, not in this object.
    clock.advance(days=200)
    again = KeySet(
        sqlite_store.reopen(), wrapping, kms_id="kms-a", clock=clock,
        policy=RotationPolicy(active_count=1),
    )  # fmt: skip
    report = again.run_rotation(clock.now)
    assert report.destroyed == ("4000000000000000",)
    assert report.created == ("C000000000000000",)


@pytest.mark.parametrize(
    "policy",
    [
        {"active_count": 0},
        {"active_count": 13},
        {"retention": dt.timedelta(days=1)},  # ids of keys servers still hold could be reused
        {"overlap": dt.timedelta(days=9)},
        {"successor_lead": dt.timedelta(hours=1)},
    ],
)
def test_unsafe_policies_are_refused(policy: dict[str, object]) -> None:
    with pytest.raises(KeySetError):
        RotationPolicy(**policy)  # type: ignore[arg-type]
