"""Key rotation, the seed's Key Rotation activity.

``rotate`` adds a new active version; the old one becomes decrypt-only for a grace period.
Dependent services are notified through persisted rotation events (kind
``rotation_events``, a bounded per-key log with increasing sequence numbers) that they read
with ``wait_for_events`` (a long poll), and optionally through a webhook callable. Each
registered consumer acknowledges its switch (``acknowledge``). When every consumer
registered at rotation time has switched, the old version is scheduled for deletion (a
cancellable window); otherwise, when the grace period ends (``process_grace_periods``), it
is extended and a reminder event names the consumers still missing.

``run_due_rotations`` rotates keys whose schedule is due (DEKs and authentication keys
monthly, the service KEK quarterly) for the enclave's scheduler.

Must never: schedule an old version for deletion while a registered consumer has not
acknowledged the new one (before the grace period forces the question), or lose an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from enclave.auth.principals import Principal
from enclave.keys.hierarchy import KeyHierarchy
from enclave.keys.metadata import KeyMetadata, Purpose, VersionState
from enclave.kms import persist
from enclave.kms.errors import InvalidRequest
from enclave.kms.guard import SYSTEM_PRINCIPAL, AuditNote, Guard
from enclave.kms.keys import KeyInfo, KeyRepository, check_key_id
from enclave.storage.store import Transaction

log = logging.getLogger("enclave.kms.rotation")

MAX_EVENTS_KEPT = 256
MAX_CONSUMERS = 256
MAX_CONSUMER_NAME = 128
MAX_WAIT_SECONDS = 300.0

Webhook = Callable[["RotationEvent"], Awaitable[None] | None]


@dataclass(frozen=True)
class RotationEvent:
    """``type``: ``rotated`` (a new version is active), ``reminder`` (grace extended;
    ``missing`` consumers have not switched), ``completed`` (old version scheduled for
    deletion)."""

    seq: int
    key_id: str
    type: str
    new_version: int
    old_version: int | None
    at: datetime
    grace_until: datetime | None
    missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "key_id": self.key_id, "type": self.type,
            "new_version": self.new_version, "old_version": self.old_version,
            "at": self.at.isoformat(),
            "grace_until": None if self.grace_until is None else self.grace_until.isoformat(),
            "missing": list(self.missing),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RotationEvent:
        return cls(
            seq=int(d["seq"]), key_id=str(d["key_id"]), type=str(d["type"]),
            new_version=int(d["new_version"]),
            old_version=None if d["old_version"] is None else int(d["old_version"]),
            at=datetime.fromisoformat(d["at"]),
            grace_until=None if d["grace_until"] is None else datetime.fromisoformat(
                d["grace_until"]),
            missing=tuple(str(m) for m in d["missing"]),
        )  # fmt: skip


@dataclass(frozen=True)
class PendingSwitch:
    old_version: int
    new_version: int
    rotated_at: datetime
    grace_until: datetime
    consumers: tuple[str, ...]
    acknowledged: tuple[str, ...]
    extensions: int

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(c for c in self.consumers if c not in self.acknowledged)

    def to_dict(self) -> dict[str, Any]:
        return {
            "old_version": self.old_version, "new_version": self.new_version,
            "rotated_at": self.rotated_at.isoformat(), "grace_until": self.grace_until.isoformat(),
            "consumers": list(self.consumers), "acknowledged": list(self.acknowledged),
            "extensions": self.extensions,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PendingSwitch:
        return cls(
            old_version=int(d["old_version"]), new_version=int(d["new_version"]),
            rotated_at=datetime.fromisoformat(d["rotated_at"]),
            grace_until=datetime.fromisoformat(d["grace_until"]),
            consumers=tuple(d["consumers"]), acknowledged=tuple(d["acknowledged"]),
            extensions=int(d["extensions"]),
        )  # fmt: skip


@dataclass(frozen=True)
class RotationStatus:
    key_id: str
    consumers: tuple[str, ...]
    pending: tuple[PendingSwitch, ...]
    last_seq: int


@dataclass(frozen=True)
class RotationConfig:
    grace_period: timedelta = timedelta(days=7)
    grace_extension: timedelta = timedelta(days=7)
    retired_deletion_window: timedelta = timedelta(days=30)


def _state(value: dict[str, Any]) -> tuple[list[str], list[PendingSwitch]]:
    consumers = [str(c) for c in value.get("consumers", [])]
    pending = [PendingSwitch.from_dict(p) for p in value.get("pending", [])]
    return consumers, pending


def _dump_state(consumers: list[str], pending: list[PendingSwitch]) -> bytes:
    return persist.dump({"consumers": consumers, "pending": [p.to_dict() for p in pending]})


def _append_event(tx: Transaction, event: dict[str, Any]) -> RotationEvent:
    value, version = persist.read(tx, persist.ROTATION_EVENTS, event["key_id"])
    seq = int(value.get("next_seq", 1))
    events = list(value.get("events", []))
    created = RotationEvent.from_dict({**event, "seq": seq})
    events.append(created.to_dict())
    tx.put(persist.ROTATION_EVENTS, created.key_id,
           persist.dump({"next_seq": seq + 1, "events": events[-MAX_EVENTS_KEPT:]}),
           expected_version=version)  # fmt: skip
    return created


class RotationService:
    def __init__(
        self,
        repo: KeyRepository,
        hierarchy: KeyHierarchy,
        guard: Guard,
        clock: Callable[[], datetime],
        *,
        config: RotationConfig | None = None,
        webhook: Webhook | None = None,
    ) -> None:
        self._repo = repo
        self._store = repo.store
        self._hierarchy = hierarchy
        self._guard = guard
        self._clock = clock
        self._config = config or RotationConfig()
        self._webhook = webhook
        self._changed = asyncio.Condition()

    # -- rotating --------------------------------------------------------------------
    async def rotate(self, caller: Principal, key_id: str) -> KeyInfo:
        """Steps 1-2 of the activity: a new version, and the notice to dependents."""

        def validate(note: AuditNote) -> None:
            check_key_id(key_id)

        async def body(note: AuditNote) -> KeyInfo:
            metadata, event = await self._rotate(key_id)
            note.key_version = metadata.latest.version
            note.details["event_seq"] = event.seq
            return KeyInfo.of(metadata)

        return await self._guard.run("keys.rotate", caller, body, key_id=key_id,
                                     validate=validate)  # fmt: skip

    async def _rotate(self, key_id: str) -> tuple[KeyMetadata, RotationEvent]:
        created: list[RotationEvent] = []

        async def change(m: KeyMetadata) -> KeyMetadata:
            return await self._hierarchy.rotate(m, self._repo.current_kek())

        def extra(tx: Transaction, old: KeyMetadata, new: KeyMetadata) -> None:
            created.clear()
            now = self._clock()
            old_primary = old.primary
            value, version = persist.read(tx, persist.ROTATIONS, key_id)
            consumers, pending = _state(value)
            grace_until = now + self._config.grace_period
            if old_primary is not None:
                pending.append(PendingSwitch(
                    old_primary.version, new.latest.version, now, grace_until,
                    tuple(consumers), (), 0,
                ))  # fmt: skip
            tx.put(persist.ROTATIONS, key_id, _dump_state(consumers, pending),
                   expected_version=version)  # fmt: skip
            created.append(_append_event(tx, {
                "key_id": key_id, "type": "rotated", "new_version": new.latest.version,
                "old_version": None if old_primary is None else old_primary.version,
                "at": now.isoformat(), "grace_until": grace_until.isoformat(), "missing": [],
            }))  # fmt: skip

        metadata = await self._repo.update(key_id, change, extra=extra)
        await self._published(created)
        return metadata, created[0]

    # -- consumers ---------------------------------------------------------------------
    async def register_consumer(
        self, caller: Principal, key_id: str, consumer: str | None = None
    ) -> RotationStatus:
        """A dependent service that must acknowledge each future rotation of ``key_id``."""
        name = consumer or caller.id

        def validate(note: AuditNote) -> None:
            check_key_id(key_id)
            if not isinstance(name, str) or not 1 <= len(name) <= MAX_CONSUMER_NAME:
                raise InvalidRequest(f"a consumer name is 1..{MAX_CONSUMER_NAME} characters")
            note.details["consumer"] = name

        async def body(note: AuditNote) -> RotationStatus:
            self._repo.require(key_id)

            def change(value: dict[str, Any]) -> dict[str, Any]:
                consumers, pending = _state(value)
                if name not in consumers:
                    if len(consumers) >= MAX_CONSUMERS:
                        raise InvalidRequest(f"at most {MAX_CONSUMERS} consumers per key")
                    consumers.append(name)
                return {"consumers": consumers, "pending": [p.to_dict() for p in pending]}

            persist.update(self._store, persist.ROTATIONS, key_id, change)
            return self._status(key_id)

        return await self._guard.run("rotation.register_consumer", caller, body,
                                     key_id=key_id, validate=validate)  # fmt: skip

    async def acknowledge(
        self, caller: Principal, key_id: str, version: int, consumer: str | None = None
    ) -> RotationStatus:
        """``consumer`` has switched to ``version``; when all have, the old version is
        scheduled for deletion (steps 3-5 of the activity)."""
        name = consumer or caller.id

        def validate(note: AuditNote) -> None:
            check_key_id(key_id)
            if not isinstance(version, int) or version < 1:
                raise InvalidRequest("version is a positive integer")
            note.details["consumer"] = name
            note.key_version = version

        async def body(note: AuditNote) -> RotationStatus:
            self._repo.require(key_id)
            value, _ = persist.read(self._store, persist.ROTATIONS, key_id)
            consumers, pending = _state(value)
            if name not in consumers:
                raise InvalidRequest(f"{name} is not a registered consumer of {key_id}")
            if not any(p.new_version == version for p in pending):
                raise InvalidRequest(f"no rotation to version {version} awaits acknowledgement")

            def change(value: dict[str, Any]) -> dict[str, Any]:
                consumers, pending = _state(value)
                updated = [
                    PendingSwitch(p.old_version, p.new_version, p.rotated_at, p.grace_until,
                                  p.consumers, (*p.acknowledged, name), p.extensions)
                    if p.new_version == version and name not in p.acknowledged else p
                    for p in pending
                ]  # fmt: skip
                return {"consumers": consumers, "pending": [p.to_dict() for p in updated]}

            persist.update(self._store, persist.ROTATIONS, key_id, change)
            await self._complete_switched(key_id, lambda p: not p.missing)
            return self._status(key_id)

        return await self._guard.run("rotation.acknowledge", caller, body, key_id=key_id,
                                     validate=validate)  # fmt: skip

    async def status(self, caller: Principal, key_id: str) -> RotationStatus:
        async def body(note: AuditNote) -> RotationStatus:
            self._repo.require(key_id)
            return self._status(key_id)

        return await self._guard.run("rotation.status", caller, body, key_id=key_id)

    def _status(self, key_id: str) -> RotationStatus:
        value, _ = persist.read(self._store, persist.ROTATIONS, key_id)
        consumers, pending = _state(value)
        events, _ = persist.read(self._store, persist.ROTATION_EVENTS, key_id)
        return RotationStatus(key_id, tuple(consumers), tuple(pending),
                              int(events.get("next_seq", 1)) - 1)  # fmt: skip

    # -- notifications -----------------------------------------------------------------
    def events_after(self, key_id: str, after_seq: int) -> list[RotationEvent]:
        value, _ = persist.read(self._store, persist.ROTATION_EVENTS, key_id)
        return [RotationEvent.from_dict(e) for e in value.get("events", []) if e["seq"] > after_seq]

    async def wait_for_events(
        self, caller: Principal, key_id: str, after_seq: int = 0, timeout: float = 30.0
    ) -> list[RotationEvent]:
        """Events of ``key_id`` after ``after_seq``; waits up to ``timeout`` seconds for the
        next one when there is none yet (a long poll). Empty on timeout."""

        def validate(note: AuditNote) -> None:
            check_key_id(key_id)
            if not isinstance(after_seq, int) or after_seq < 0:
                raise InvalidRequest("after_seq is a non-negative integer")
            if not 0 <= timeout <= MAX_WAIT_SECONDS:
                raise InvalidRequest(f"timeout is 0..{MAX_WAIT_SECONDS} seconds")
            note.details["after_seq"] = after_seq

        async def body(note: AuditNote) -> list[RotationEvent]:
            self._repo.require(key_id)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            async with self._changed:
                while True:
                    events = self.events_after(key_id, after_seq)
                    remaining = deadline - loop.time()
                    if events or remaining <= 0:
                        note.details["returned"] = len(events)
                        return events
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), remaining)

        return await self._guard.run("rotation.wait_for_events", caller, body, key_id=key_id,
                                     validate=validate)  # fmt: skip

    async def _published(self, events: list[RotationEvent]) -> None:
        async with self._changed:
            self._changed.notify_all()
        if self._webhook is None:
            return
        for event in events:
            try:
                result = self._webhook(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a failing subscriber must not fail the rotation
                log.warning("rotation webhook failed for %s seq %d", event.key_id, event.seq)

    # -- completion and grace ----------------------------------------------------------
    async def _complete_switched(
        self, key_id: str, done: Callable[[PendingSwitch], bool]
    ) -> list[RotationEvent]:
        """Schedule deletion of old versions whose switch is ``done``; emit ``completed``."""
        created: list[RotationEvent] = []
        window = self._config.retired_deletion_window

        async def change(m: KeyMetadata) -> KeyMetadata:
            value, _ = persist.read(self._store, persist.ROTATIONS, key_id)
            _, pending = _state(value)
            for p in pending:
                if done(p):
                    old = m.version(p.old_version)
                    if old.state not in (VersionState.PENDING_DELETION, VersionState.DESTROYED):
                        m = await self._hierarchy.transition(
                            m, p.old_version, VersionState.PENDING_DELETION,
                            deletion_window=window,
                        )  # fmt: skip
            return m

        def extra(tx: Transaction, old: KeyMetadata, new: KeyMetadata) -> None:
            created.clear()
            value, version = persist.read(tx, persist.ROTATIONS, key_id)
            consumers, pending = _state(value)
            finished = [p for p in pending if done(p)]
            if not finished:
                return
            tx.put(persist.ROTATIONS, key_id,
                   _dump_state(consumers, [p for p in pending if not done(p)]),
                   expected_version=version)  # fmt: skip
            now = self._clock()
            for p in finished:
                created.append(_append_event(tx, {
                    "key_id": key_id, "type": "completed", "new_version": p.new_version,
                    "old_version": p.old_version, "at": now.isoformat(),
                    "grace_until": None, "missing": [],
                }))  # fmt: skip

        value, _ = persist.read(self._store, persist.ROTATIONS, key_id)
        if not any(done(p) for p in _state(value)[1]):
            return []
        await self._repo.update(key_id, change, extra=extra)
        await self._published(created)
        return created

    async def process_grace_periods(self) -> list[RotationEvent]:
        """For each rotation whose grace period has ended: complete it when every consumer
        switched (or none was registered), else extend the grace period and remind."""
        now = self._clock()
        out: list[RotationEvent] = []
        for ref in self._store.list(persist.ROTATIONS):
            key_id = ref.id
            value, _ = persist.read(self._store, persist.ROTATIONS, key_id)
            _, pending = _state(value)
            due = [p for p in pending if p.grace_until <= now]
            if not due:
                continue
            completed = await self._complete_switched(
                key_id, lambda p: p.grace_until <= now and not p.missing
            )
            for event in completed:
                await self._audit_event("rotation.completed", event)
            out.extend(completed)
            reminders = await self._extend(key_id, now)
            out.extend(reminders)
        return out

    async def _extend(self, key_id: str, now: datetime) -> list[RotationEvent]:
        created: list[RotationEvent] = []
        with self._store.transaction() as tx:
            value, version = persist.read(tx, persist.ROTATIONS, key_id)
            consumers, pending = _state(value)
            updated = []
            for item in pending:
                p = item
                if p.grace_until <= now and p.missing:
                    p = PendingSwitch(p.old_version, p.new_version, p.rotated_at,
                                      now + self._config.grace_extension, p.consumers,
                                      p.acknowledged, p.extensions + 1)  # fmt: skip
                    created.append(_append_event(tx, {
                        "key_id": key_id, "type": "reminder", "new_version": p.new_version,
                        "old_version": p.old_version, "at": now.isoformat(),
                        "grace_until": p.grace_until.isoformat(), "missing": list(p.missing),
                    }))  # fmt: skip
                updated.append(p)
            if created:
                tx.put(persist.ROTATIONS, key_id, _dump_state(consumers, updated),
                       expected_version=version)  # fmt: skip
        for event in created:
            await self._audit_event("rotation.grace_extended", event)
        await self._published(created)
        return created

    async def _audit_event(self, operation: str, event: RotationEvent) -> None:
        note = AuditNote(
            key_id=event.key_id,
            key_version=event.new_version,
            details={"event_seq": event.seq, "missing": list(event.missing)},
        )

        async def body(note: AuditNote) -> None:
            return None

        await self._guard.execute(operation, SYSTEM_PRINCIPAL, body, note, outcome="event")

    # -- scheduled rotation ------------------------------------------------------------
    async def run_due_rotations(self, now: datetime | None = None) -> list[str]:
        """Rotate every key (and the service KEK) whose rotation schedule is due at ``now``."""
        at = now or self._clock()
        rotated: list[str] = []
        for metadata in self._repo.all():
            primary = metadata.primary
            if primary is None or metadata.is_expired(at):
                continue
            due = metadata.rotation.next_due(primary.created_at)
            if due is None or due > at:
                continue
            note = AuditNote(key_id=metadata.key_id, details={"scheduled": True})

            async def body(note: AuditNote, key_id: str = metadata.key_id) -> None:
                rotated_meta, event = await self._rotate(key_id)
                note.key_version = rotated_meta.latest.version
                note.details["event_seq"] = event.seq

            await self._guard.execute("keys.rotate", SYSTEM_PRINCIPAL, body, note,
                                      outcome="event")  # fmt: skip
            rotated.append(metadata.key_id)
        kek = self._repo.kek(self._repo.current_kek_id())
        kek_primary = kek.primary
        if kek.purpose is Purpose.WRAP and kek_primary is not None:
            due = kek.rotation.next_due(kek_primary.created_at)
            if due is not None and due <= at:
                note = AuditNote(key_id=kek.key_id, details={"scheduled": True, "kek": True})

                async def rotate_kek(note: AuditNote) -> None:
                    note.key_version = (await self._repo.rotate_kek()).latest.version

                await self._guard.execute("keys.rotate", SYSTEM_PRINCIPAL, rotate_kek, note,
                                          outcome="event")  # fmt: skip
                rotated.append(kek.key_id)
        return rotated
