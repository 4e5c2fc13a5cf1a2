"""Every service method x every level x owner / per-key grant / system level: allowed
exactly when the level suffices; every denial is audited and changes nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.attestation.simulated.snp import SimulatedSnp
from enclave.auth.access import AccessDenied
from enclave.auth.principals import Level, Principal
from enclave.kms import persist
from enclave.kms.errors import KmsError
from enclave.kms.guard import OPERATIONS
from enclave.kms.principals import identity_proof_message
from enclave.kms.release import release_report_data
from enclave.kms.service import KeyRequest, KmsService
from tests.kms_service.conftest import Env, raw_public
from tests.kms_service.test_lifecycle import MEASUREMENT, release_policy


@dataclass
class Fixture:
    kms: KmsService
    snp: SimulatedSnp
    owner: Principal
    victim: Principal
    enc: str
    sig: str
    hpke: str
    sharing: str
    ciphertext: bytes
    signature: bytes


Call = Callable[[Fixture, Principal], Awaitable[Any]]


def _register(f: Fixture, who: Principal) -> Awaitable[Any]:
    key = Ed25519PrivateKey.generate()
    public = raw_public(key)
    challenge = f.kms.principals.identity_challenge()
    proof = key.sign(identity_proof_message(challenge, public, "new"))
    return f.kms.principals.register(who, name="new", kind="service", public_key=public,
                                     challenge=challenge, proof=proof)  # fmt: skip


def _onboard(f: Fixture, who: Principal) -> Awaitable[Any]:
    key = Ed25519PrivateKey.generate()
    public = raw_public(key)
    challenge = f.kms.principals.identity_challenge()
    proof = key.sign(identity_proof_message(challenge, public, "onboarded"))
    return f.kms.onboard(who, name="onboarded", kind="service", public_key=public,
                         challenge=challenge, proof=proof,
                         keys=(KeyRequest("encrypt", "AES-256-GCM"),))  # fmt: skip


def _release(f: Fixture, who: Principal) -> Awaitable[Any]:
    client = (
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    challenge = f.kms.distribution.release_challenge()
    report = f.snp.report(report_data=release_report_data(client, challenge),
                          measurement=MEASUREMENT)  # fmt: skip
    return f.kms.distribution.release_key(
        who, f.hpke, platform="sev-snp", evidence=report, certs=f.snp.certs(),
        client_public_key=client, challenge=challenge,
    )  # fmt: skip


CALLS: dict[str, Call] = {
    "principals.register": _register,
    "principals.register_workload": lambda f, w: f.kms.principals.register_workload(
        w, name="wl", measurements=[MEASUREMENT]),
    "principals.disable": lambda f, w: f.kms.principals.disable(w, f.victim.id),
    "principals.enable": lambda f, w: f.kms.principals.enable(w, f.victim.id),
    "principals.isolate": lambda f, w: f.kms.principals.isolate(w, f.victim.id),
    "principals.describe": lambda f, w: f.kms.principals.describe(w, f.victim.id),
    "principals.onboard": _onboard,
    "grants.grant": lambda f, w: f.kms.grants.grant(w, f.victim.id, f.enc, Level.USE_KEY),
    "grants.revoke": lambda f, w: f.kms.grants.revoke(w, f.owner.id, f.sig),
    "grants.list": lambda f, w: f.kms.grants.list_for_key(w, f.enc),
    "keys.create": lambda f, w: f.kms.keys.create(w, "encrypt", "AES-256-GCM"),
    "keys.describe": lambda f, w: f.kms.keys.describe(w, f.enc),
    "keys.enable": lambda f, w: f.kms.keys.enable(w, f.enc),
    "keys.disable": lambda f, w: f.kms.keys.disable(w, f.enc),
    "keys.expire": lambda f, w: f.kms.keys.expire(w, f.enc),
    "keys.rotate": lambda f, w: f.kms.rotation.rotate(w, f.enc),
    "keys.set_rotation": lambda f, w: f.kms.keys.set_rotation(w, f.enc, 60),
    "keys.schedule_deletion": lambda f, w: f.kms.keys.schedule_deletion(w, f.enc, window_days=7),
    "keys.cancel_deletion": lambda f, w: f.kms.keys.cancel_deletion(w, f.enc),
    "keys.set_release_policy": lambda f, w: f.kms.distribution.set_release_policy(
        w, f.enc, release_policy()),
    "keys.encrypt": lambda f, w: f.kms.crypto.encrypt(w, f.enc, b"p", {"a": "b"}),
    "keys.decrypt": lambda f, w: f.kms.crypto.decrypt(w, f.ciphertext, {"a": "b"}),
    "keys.generate_data_key": lambda f, w: f.kms.crypto.generate_data_key(w, f.enc),
    "keys.re_encrypt": lambda f, w: f.kms.crypto.re_encrypt(w, f.ciphertext, {"a": "b"}),
    "keys.sign": lambda f, w: f.kms.crypto.sign(w, f.sig, b"m"),
    "keys.verify": lambda f, w: f.kms.crypto.verify(w, f.sig, b"m", f.signature),
    "keys.get_public_key": lambda f, w: f.kms.crypto.get_public_key(w, f.sig),
    "rotation.register_consumer": lambda f, w: f.kms.rotation.register_consumer(w, f.enc),
    "rotation.acknowledge": lambda f, w: f.kms.rotation.acknowledge(w, f.enc, 2, "c"),
    "rotation.wait_for_events": lambda f, w: f.kms.rotation.wait_for_events(w, f.enc, 0, 0),
    "rotation.status": lambda f, w: f.kms.rotation.status(w, f.enc),
    "keys.release": _release,
    "sharing.create": lambda f, w: f.kms.distribution.create_sharing_key(
        w, f.victim.id, timedelta(minutes=5)),
    "sharing.status": lambda f, w: f.kms.distribution.sharing_status(w, f.sharing),
}  # fmt: skip
# Checked elsewhere: keys.list is a filter (test below); keys.confirm_receipt also needs
# the caller to be the release's recipient (test_lifecycle).
NOT_IN_MATRIX = {"keys.list", "keys.confirm_receipt"}


def test_the_matrix_covers_every_declared_operation() -> None:
    assert set(CALLS) | NOT_IN_MATRIX == set(OPERATIONS)


async def _fixture(env: Env, snp: SimulatedSnp) -> Fixture:
    kms = env.kms
    owner, _ = await env.new_principal("owner")
    victim, _ = await env.new_principal("victim")
    enc = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=owner.id)
    sig = await kms.keys.create(env.admin, "sign", "ED25519", owner=owner.id)
    hpke = await kms.keys.create(env.admin, "hpke", "X25519", owner=owner.id)
    await kms.distribution.set_release_policy(owner, hpke.key_id, release_policy())
    sharing = await kms.distribution.create_sharing_key(env.admin, owner.id, timedelta(days=1))
    ct = await kms.crypto.encrypt(owner, enc.key_id, b"p", {"a": "b"})
    signature = await kms.crypto.sign(owner, sig.key_id, b"m")
    return Fixture(kms, snp, owner, victim, enc.key_id, sig.key_id, hpke.key_id,
                   sharing.key_id, ct, signature.signature)  # fmt: skip


@pytest.mark.parametrize("operation", sorted(CALLS))
async def test_allowed_exactly_when_the_level_suffices(
    env: Env, snp: SimulatedSnp, operation: str
) -> None:
    f = await _fixture(env, snp)
    requirement = OPERATIONS[operation]
    callers: list[tuple[str, Principal, int | None]] = [("owner", f.owner, 3)]
    nobody, _ = await env.new_principal("nobody")
    callers.append(("no level", nobody, None))
    for level in Level:
        system, _ = await env.new_principal(f"sys{int(level)}", level=level)
        callers.append((f"system {int(level)}", system, int(level)))
        granted, _ = await env.new_principal(f"grant{int(level)}")
        await env.kms.grants.grant(env.admin, granted.id, "*", level)
        callers.append((f"key grant {int(level)}", granted, int(level)))

    for label, who, level in callers:
        effective = level
        if requirement.scope == "system" and not label.startswith("system"):
            effective = None  # per-key grants (the owner's too) never give system levels
        if requirement.scope == "key" and label.startswith("system") and level != 4:
            # below administrator, a system level only lets a principal view key metadata
            effective = int(Level.VIEW_METADATA)
        expected = effective is not None and effective >= requirement.level
        before = persist.snapshot(env.store)
        outcome: str
        try:
            await CALLS[operation](f, who)
            outcome = "ok"
        except AccessDenied:
            outcome = "denied"
        except KmsError as exc:  # allowed, then refused for another reason (state, input)
            outcome = f"error:{exc.type}"
        last = env.last_audit()
        assert (last.operation, last.principal) == (operation, who.id), label
        if expected:
            assert outcome != "denied", f"{operation}: {label} should be allowed"
            assert last.outcome != "denied", label
        else:
            assert outcome == "denied", f"{operation}: {label} should be denied ({outcome})"
            assert last.outcome == "denied" and last.status == 403, label
            assert persist.snapshot(env.store) == before, f"{operation}: {label} changed state"


async def test_list_shows_only_viewable_keys(env: Env) -> None:
    kms = env.kms
    a, _ = await env.new_principal("a")
    b, _ = await env.new_principal("b")
    auditor, _ = await env.new_principal("auditor", kind="auditor", level=Level.VIEW_METADATA)
    ka = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=a.id)
    kb = await kms.keys.create(env.admin, "sign", "ED25519", owner=b.id)
    assert [k.key_id for k in await kms.keys.list(a)] == [ka.key_id]
    await kms.grants.grant(env.admin, a.id, kb.key_id, Level.VIEW_METADATA)
    assert {k.key_id for k in await kms.keys.list(a)} == {ka.key_id, kb.key_id}
    assert {k.key_id for k in await kms.keys.list(auditor)} == {ka.key_id, kb.key_id}
    # view is not use
    with pytest.raises(AccessDenied):
        await kms.crypto.sign(a, kb.key_id, b"m")
    with pytest.raises(AccessDenied):
        await kms.crypto.encrypt(auditor, ka.key_id, b"m")
    await kms.grants.revoke(env.admin, a.id, kb.key_id)
    assert [k.key_id for k in await kms.keys.list(a)] == [ka.key_id]


async def test_unknown_keys_are_denied_not_revealed(env: Env) -> None:
    kms = env.kms
    svc, _ = await env.new_principal("svc")
    missing = "key_" + "0" * 32
    with pytest.raises(AccessDenied):
        await kms.keys.describe(svc, missing)
    from enclave.kms.errors import NotFound

    with pytest.raises(NotFound):
        await kms.keys.describe(env.admin, missing)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda k, w, key: k.keys.describe(w, "not-a-key"), id="bad-key-id"),
        pytest.param(lambda k, w, key: k.keys.schedule_deletion(w, key, window_days=3),
                     id="window-too-short"),
        pytest.param(lambda k, w, key: k.crypto.encrypt(w, key, b"x", {"": "v"}),
                     id="bad-context"),
        pytest.param(lambda k, w, key: k.crypto.encrypt(w, key, "text"), id="plaintext-not-bytes"),
        pytest.param(lambda k, w, key: k.crypto.decrypt(w, b"garbage"), id="not-a-ciphertext"),
        pytest.param(lambda k, w, key: k.keys.create(w, "wrap", "AES-256-KWP"), id="kek-algorithm"),
        pytest.param(lambda k, w, key: k.keys.create(w, "sign", "AES-256-GCM"),
                     id="algorithm-purpose"),
        pytest.param(lambda k, w, key: k.rotation.wait_for_events(w, key, -1, 0),
                     id="negative-seq"),
    ],
)  # fmt: skip
async def test_invalid_requests_are_audited_and_change_nothing(
    env: Env, call: Callable[..., Awaitable[Any]]
) -> None:
    key = await env.kms.keys.create(env.admin, "encrypt", "AES-256-GCM")
    before = persist.snapshot(env.store)
    with pytest.raises(KmsError) as info:
        await call(env.kms, env.admin, key.key_id)
    assert info.value.status == 400
    last = env.last_audit()
    assert last.outcome == "invalid" and last.principal == env.admin.id
    assert last.details["error"] == info.value.type
    assert persist.snapshot(env.store) == before
