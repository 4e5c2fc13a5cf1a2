"""Rotation notifications, acknowledgements, grace extension and scheduled rotation over an
injected clock; sharing keys with a TTL and usage monitoring."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from enclave.keys.metadata import VersionState
from enclave.kms.errors import InvalidRequest, SharingExpired
from enclave.kms.rotation import RotationEvent
from tests.kms_service.conftest import Env


async def test_all_consumers_switch_then_old_version_is_scheduled(env: Env) -> None:
    kms = env.kms
    svc, _ = await env.new_principal("svc")
    key = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    await kms.rotation.register_consumer(svc, key.key_id, "frontend")
    await kms.rotation.register_consumer(svc, key.key_id, "batch")
    hooked: list[RotationEvent] = []
    kms.rotation._webhook = hooked.append  # the optional webhook (a callable)

    waiter = asyncio.create_task(kms.rotation.wait_for_events(svc, key.key_id, 0, timeout=5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await kms.rotation.rotate(svc, key.key_id)
    events = await waiter
    assert [(e.type, e.new_version, e.old_version) for e in events] == [("rotated", 2, 1)]
    assert hooked == events

    status = await kms.rotation.acknowledge(svc, key.key_id, 2, "frontend")
    assert status.pending[0].missing == ("batch",)
    info = await kms.keys.describe(svc, key.key_id)
    assert info.version(1).state is VersionState.DECRYPT_ONLY
    with pytest.raises(InvalidRequest):
        await kms.rotation.acknowledge(svc, key.key_id, 2, "unknown-consumer")
    status = await kms.rotation.acknowledge(svc, key.key_id, 2, "batch")
    assert status.pending == ()
    info = await kms.keys.describe(svc, key.key_id)
    assert info.version(1).state is VersionState.PENDING_DELETION
    assert info.version(1).deletion_due == env.clock.now + timedelta(days=30)
    later = await kms.rotation.wait_for_events(svc, key.key_id, events[-1].seq, timeout=0)
    assert [e.type for e in later] == ["completed"]
    # nothing new: the long poll times out empty
    assert await kms.rotation.wait_for_events(svc, key.key_id, later[-1].seq, timeout=0.05) == []


async def test_grace_period_is_extended_with_reminders(env: Env) -> None:
    kms = env.kms
    svc, _ = await env.new_principal("svc")
    key = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    await kms.rotation.register_consumer(svc, key.key_id, "slow")
    await kms.rotation.rotate(svc, key.key_id)
    grace = env.kms.config.rotation.grace_period

    env.clock.advance(grace - timedelta(seconds=1))
    assert await kms.rotation.process_grace_periods() == []
    env.clock.advance(timedelta(seconds=2))
    reminders = await kms.rotation.process_grace_periods()
    assert [(e.type, e.missing) for e in reminders] == [("reminder", ("slow",))]
    status = await kms.rotation.status(svc, key.key_id)
    assert status.pending[0].extensions == 1
    assert status.pending[0].grace_until == env.clock.now + env.kms.config.rotation.grace_extension
    info = await kms.keys.describe(svc, key.key_id)
    assert info.version(1).state is VersionState.DECRYPT_ONLY  # not retired while missing

    env.clock.advance(env.kms.config.rotation.grace_extension + timedelta(seconds=1))
    again = await kms.rotation.process_grace_periods()
    assert [e.type for e in again] == ["reminder"]
    assert (await kms.rotation.status(svc, key.key_id)).pending[0].extensions == 2
    await kms.rotation.acknowledge(svc, key.key_id, 2, "slow")
    info = await kms.keys.describe(svc, key.key_id)
    assert info.version(1).state is VersionState.PENDING_DELETION
    ops = [r.operation for r in env.audit_records()]
    assert ops.count("rotation.grace_extended") == 2


async def test_no_consumers_completes_at_grace_end(env: Env) -> None:
    kms = env.kms
    svc, _ = await env.new_principal("svc")
    key = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    old = await kms.crypto.encrypt(svc, key.key_id, b"x")
    await kms.rotation.rotate(svc, key.key_id)
    assert await kms.crypto.decrypt(svc, old) == b"x"  # grace period
    env.clock.advance(env.kms.config.rotation.grace_period + timedelta(seconds=1))
    events = await kms.rotation.process_grace_periods()
    assert [e.type for e in events] == ["completed"]
    info = await kms.keys.describe(svc, key.key_id)
    assert info.version(1).state is VersionState.PENDING_DELETION


async def test_scheduled_rotation_by_policy(env: Env) -> None:
    kms = env.kms
    svc, _ = await env.new_principal("svc")
    dek = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    sig = await kms.keys.create(env.admin, "sign", "ED25519", owner=svc.id)
    manual = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    await kms.keys.set_rotation(svc, manual.key_id, None)
    kek_id = kms.repository.current_kek_id()

    env.clock.advance(timedelta(days=29))
    assert (await kms.run_scheduled()).rotated == ()
    env.clock.advance(timedelta(days=1, seconds=1))
    run = await kms.run_scheduled()
    assert set(run.rotated) == {dek.key_id, sig.key_id}  # monthly; the KEK is quarterly
    assert (await kms.keys.describe(svc, dek.key_id)).primary_version == 2
    assert (await kms.keys.describe(svc, manual.key_id)).primary_version == 1
    env.clock.advance(timedelta(days=61))
    run = await kms.run_scheduled()
    assert kek_id in run.rotated
    # keys wrapped by the old KEK version still work; new versions use the new KEK version
    ct = await kms.crypto.encrypt(svc, manual.key_id, b"old kek")
    assert await kms.crypto.decrypt(svc, ct) == b"old kek"
    await kms.rotation.rotate(svc, manual.key_id)
    assert kms.repository.require(manual.key_id).latest.wrapped_by.version == 2
    assert await kms.crypto.decrypt(svc, ct) == b"old kek"
    scheduled = [r for r in env.audit_records() if r.operation == "keys.rotate"
                 and r.principal == "kms"]  # fmt: skip
    assert len(scheduled) >= 3


async def test_sharing_key_ttl_and_usage(env: Env) -> None:
    kms = env.kms
    source, _ = await env.new_principal("source", level=3)
    target, _ = await env.new_principal("target")
    outsider, _ = await env.new_principal("outsider")
    shared = await kms.distribution.create_sharing_key(source, target.id, timedelta(hours=1))
    ct = await kms.crypto.encrypt(source, shared.key_id, b"cross-platform", {"run": "1"})
    assert await kms.crypto.decrypt(target, ct, {"run": "1"}) == b"cross-platform"
    from enclave.auth.access import AccessDenied

    with pytest.raises(AccessDenied):
        await kms.crypto.decrypt(outsider, ct, {"run": "1"})
    status = await kms.distribution.sharing_status(target, shared.key_id)
    assert status.uses == 2 and status.target == target.id
    env.clock.advance(timedelta(hours=1))
    with pytest.raises(SharingExpired):
        await kms.crypto.decrypt(target, ct, {"run": "1"})
    with pytest.raises(SharingExpired):
        await kms.crypto.encrypt(source, shared.key_id, b"late")
    assert (await kms.distribution.sharing_status(source, shared.key_id)).uses == 2
    last = env.last_audit()
    assert (last.operation, last.principal) == ("sharing.status", source.id)
    refused = [r for r in env.audit_records() if r.details.get("error") == "sharing-expired"]
    assert len(refused) == 2 and {r.outcome for r in refused} == {"denied"}
    with pytest.raises(InvalidRequest):
        await kms.distribution.create_sharing_key(source, target.id, timedelta(days=31))
