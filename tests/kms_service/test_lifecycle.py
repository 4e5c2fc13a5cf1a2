"""The whole lifecycle at the service level: onboarding, keys of every purpose, crypto,
rotation and the grace period, deletion, attested release, persistence."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.attestation.simulated.snp import SimulatedSnp
from enclave.auth.access import AccessDenied
from enclave.keys.metadata import Algorithm, Purpose, VersionState
from enclave.kms import persist
from enclave.kms.errors import (
    ChallengeInvalid,
    DecryptionFailed,
    IdentityProofInvalid,
    InvalidRequest,
    KeyUnusable,
    ReleaseRefused,
)
from enclave.kms.keys import KeyInfo
from enclave.kms.principals import identity_proof_message
from enclave.kms.release import receipt_proof, release_report_data, unwrap_released
from enclave.kms.service import KeyRequest
from tests.kms_service.conftest import Env, raw_public
from verifier.policy import Policy, ReferenceMeasurement

MEASUREMENT = bytes(range(48))
CTX = {"tenant": "acme", "purpose": "orders"}


def release_policy(measurement: bytes = MEASUREMENT) -> Policy:
    return Policy(
        platform="sev-snp",
        measurements=(ReferenceMeasurement("client-v1", measurement),),
        allow_simulated=True,
        min_tcb={"snp": 8},
    )


async def test_onboarding_verifies_identity_and_creates_owned_keys(env: Env) -> None:
    kms = env.kms
    key = Ed25519PrivateKey.generate()
    public = raw_public(key)
    challenge = kms.principals.identity_challenge()
    proof = key.sign(identity_proof_message(challenge, public, "orders"))
    result = await kms.onboard(
        env.admin, name="orders", kind="service", public_key=public, challenge=challenge,
        proof=proof,
        keys=(KeyRequest(Purpose.ENCRYPT, "AES-256-GCM"), KeyRequest("sign", "ED25519")),
    )  # fmt: skip
    service = result.principal
    assert service.system_level is None and service.public_key == public
    assert {k.owner for k in result.keys} == {service.id}
    # The new service can use its keys at once (owner grant), and lists only them.
    listed = await kms.keys.list(service)
    assert {k.key_id for k in listed} == {k.key_id for k in result.keys}
    ct = await kms.crypto.encrypt(service, result.keys[0].key_id, b"hello", CTX)
    assert await kms.crypto.decrypt(service, ct, CTX) == b"hello"
    # The challenge was single use; a proof by another key is refused.
    with pytest.raises(ChallengeInvalid):
        await kms.principals.register(
            env.admin,
            name="orders",
            kind="service",
            public_key=public,
            challenge=challenge,
            proof=proof,
        )
    other = Ed25519PrivateKey.generate()
    fresh = kms.principals.identity_challenge()
    with pytest.raises(IdentityProofInvalid):
        await kms.principals.register(
            env.admin, name="x", kind="service", public_key=public, challenge=fresh,
            proof=other.sign(identity_proof_message(fresh, public, "x")),
        )  # fmt: skip
    ops = [r.operation for r in env.audit_records()]
    assert "principals.onboard" in ops and ops.count("keys.create") == 2


async def test_keys_of_each_purpose_and_crypto(env: Env) -> None:
    kms = env.kms
    svc, _ = await env.new_principal("svc")
    enc = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    ed = await kms.keys.create(env.admin, "sign", "ED25519", owner=svc.id)
    rsa = await kms.keys.create(env.admin, "sign", "RSA-4096", owner=svc.id)
    hpke = await kms.keys.create(env.admin, "hpke", "X25519", owner=svc.id)
    assert hpke.algorithm is Algorithm.X25519_HPKE and rsa.rotation_days == 30

    # encrypt / decrypt with the context bound; a wrong context fails opaquely
    ct = await kms.crypto.encrypt(svc, enc.key_id, b"secret", CTX)
    assert enc.key_id.encode() in ct  # the envelope names its key
    assert await kms.crypto.decrypt(svc, ct, CTX) == b"secret"
    failures = []
    for bad in ({"tenant": "evil", "purpose": "orders"}, None, {"tenant": "acme"}):
        with pytest.raises(DecryptionFailed) as info:
            await kms.crypto.decrypt(svc, ct, bad)
        failures.append(str(info.value))
    tampered = ct[:-1] + bytes([ct[-1] ^ 1])
    with pytest.raises(DecryptionFailed) as info:
        await kms.crypto.decrypt(svc, tampered, CTX)
    failures.append(str(info.value))
    assert set(failures) == {"decryption failed"}
    assert "secret" not in str(env.audit_path.read_text())
    assert "acme" not in env.audit_path.read_text()  # contexts are audited as HMACs only

    # data keys: plaintext + wrapped, or wrapped only
    dk = await kms.crypto.generate_data_key(svc, enc.key_id, CTX)
    assert dk.plaintext is not None and len(dk.plaintext) == 32
    assert "plaintext" not in repr(dk) or dk.plaintext.hex() not in repr(dk)
    assert await kms.crypto.decrypt(svc, dk.wrapped, CTX) == dk.plaintext
    nonce = b"\x00" * 12
    AESGCM(dk.plaintext).encrypt(nonce, b"bulk", None)
    wrapped_only = await kms.crypto.generate_data_key(svc, enc.key_id, include_plaintext=False)
    assert wrapped_only.plaintext is None
    assert len(await kms.crypto.decrypt(svc, wrapped_only.wrapped)) == 32

    # sign / verify: Ed25519 and RSA-PSS-4096
    for key in (ed, rsa):
        sig = await kms.crypto.sign(svc, key.key_id, b"message")
        assert await kms.crypto.verify(svc, key.key_id, b"message", sig.signature)
        assert not await kms.crypto.verify(svc, key.key_id, b"other", sig.signature)
        public = await kms.crypto.get_public_key(svc, key.key_id)
        serialization.load_der_public_key(public.spki_der)
    # wrong purpose is refused
    with pytest.raises(InvalidRequest):
        await kms.crypto.sign(svc, enc.key_id, b"m")
    with pytest.raises(InvalidRequest):
        await kms.crypto.encrypt(svc, ed.key_id, b"m")
    info_ = await kms.keys.describe(svc, enc.key_id)
    assert isinstance(info_, KeyInfo) and "wrapped" not in repr(info_)


async def test_rotation_grace_period_then_disable(env: Env) -> None:
    kms = env.kms
    svc, _ = await env.new_principal("svc")
    enc = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    old_ct = await kms.crypto.encrypt(svc, enc.key_id, b"v1 data", CTX)
    rotated = await kms.rotation.rotate(svc, enc.key_id)
    assert rotated.primary_version == 2
    assert rotated.version(1).state is VersionState.DECRYPT_ONLY
    # new encryptions use v2, old ciphertext still decrypts during the grace period
    new_ct = await kms.crypto.encrypt(svc, enc.key_id, b"v2 data", CTX)
    assert await kms.crypto.decrypt(svc, old_ct, CTX) == b"v1 data"
    # re-encrypt moves old data to v2 without giving the caller the plaintext
    moved = await kms.crypto.re_encrypt(svc, old_ct, CTX)
    assert b"v1 data" not in moved
    assert await kms.crypto.decrypt(svc, moved, CTX) == b"v1 data"
    # once the old version is disabled, its ciphertexts are refused
    await kms.keys.disable(svc, enc.key_id, version=1)
    with pytest.raises(KeyUnusable):
        await kms.crypto.decrypt(svc, old_ct, CTX)
    assert await kms.crypto.decrypt(svc, new_ct, CTX) == b"v2 data"
    await kms.keys.enable(svc, enc.key_id, version=1)
    assert await kms.crypto.decrypt(svc, old_ct, CTX) == b"v1 data"
    assert (await kms.keys.describe(svc, enc.key_id)).version(1).state is (
        VersionState.DECRYPT_ONLY
    )
    # signatures of a decrypt-only version still verify
    ed = await kms.keys.create(env.admin, "sign", "ED25519", owner=svc.id)
    sig = await kms.crypto.sign(svc, ed.key_id, b"m")
    await kms.rotation.rotate(svc, ed.key_id)
    assert await kms.crypto.verify(svc, ed.key_id, b"m", sig.signature, version=1)


async def test_schedule_cancel_and_destroy(env: Env) -> None:
    kms = env.kms
    svc, _ = await env.new_principal("svc")
    enc = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    ct = await kms.crypto.encrypt(svc, enc.key_id, b"x")
    for days in (6, 31):
        with pytest.raises(InvalidRequest):
            await kms.keys.schedule_deletion(svc, enc.key_id, window_days=days)
    pending = await kms.keys.schedule_deletion(svc, enc.key_id, window_days=7)
    assert pending.version(1).state is VersionState.PENDING_DELETION
    assert pending.version(1).deletion_due == env.clock.now + timedelta(days=7)
    with pytest.raises(KeyUnusable):
        await kms.crypto.decrypt(svc, ct)
    cancelled = await kms.keys.cancel_deletion(svc, enc.key_id)
    assert cancelled.version(1).state is VersionState.DISABLED
    enabled = await kms.keys.enable(svc, enc.key_id)
    assert enabled.version(1).state is VersionState.ACTIVE
    assert await kms.crypto.decrypt(svc, ct) == b"x"
    # schedule again; the job destroys nothing early, everything once due
    await kms.keys.schedule_deletion(svc, enc.key_id, window_days=7)
    env.clock.advance(timedelta(days=6))
    assert await kms.keys.run_deletion_job() == []
    env.clock.advance(timedelta(days=1, seconds=1))
    assert await kms.keys.run_deletion_job() == [(enc.key_id, 1)]
    info = await kms.keys.describe(svc, enc.key_id)
    assert info.version(1).state is VersionState.DESTROYED
    stored = env.kms.repository.require(enc.key_id)
    assert stored.version(1).wrapped == b""
    with pytest.raises(KeyUnusable):
        await kms.crypto.decrypt(svc, ct)
    assert env.last_audit().operation == "keys.decrypt"
    assert any(r.operation == "keys.destroy" for r in env.audit_records())


async def test_expire_stops_production_but_not_decryption(env: Env) -> None:
    kms = env.kms
    svc, _ = await env.new_principal("svc")
    enc = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    ct = await kms.crypto.encrypt(svc, enc.key_id, b"x")
    env.clock.advance(timedelta(seconds=1))
    await kms.keys.expire(svc, enc.key_id)
    with pytest.raises(KeyUnusable):
        await kms.crypto.encrypt(svc, enc.key_id, b"y")
    assert await kms.crypto.decrypt(svc, ct) == b"x"


def _client_public(client: X25519PrivateKey) -> bytes:
    return client.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


async def test_release_to_an_attested_client(env: Env, snp: SimulatedSnp) -> None:
    kms = env.kms
    workload = await kms.principals.register_workload(
        env.admin, name="bidding", measurements=[MEASUREMENT]
    )
    svc, _ = await env.new_principal("owner")
    key = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    await kms.grants.grant(env.admin, workload.id, key.key_id, 1)
    ct = await kms.crypto.encrypt(svc, key.key_id, b"for the enclave", CTX)

    # not releasable before a release policy is set
    client = X25519PrivateKey.generate()
    public = _client_public(client)
    challenge = kms.distribution.release_challenge()
    report = snp.report(report_data=release_report_data(public, challenge), measurement=MEASUREMENT)
    with pytest.raises(ReleaseRefused):
        await kms.distribution.release_key(
            workload, key.key_id, platform="sev-snp", evidence=report, certs=snp.certs(),
            client_public_key=public, challenge=challenge,
        )  # fmt: skip
    await kms.distribution.set_release_policy(svc, key.key_id, release_policy())

    challenge = kms.distribution.release_challenge()
    report = snp.report(report_data=release_report_data(public, challenge), measurement=MEASUREMENT)
    release = await kms.distribution.release_key(
        workload, key.key_id, platform="sev-snp", evidence=report, certs=snp.certs(),
        client_public_key=public, challenge=challenge,
    )  # fmt: skip
    material = unwrap_released(release.wrapped, client, key.key_id, release.version)
    # The client really holds the key: it opens a KMS ciphertext itself.
    from enclave.keys.material import Ciphertext, SymmetricKey
    from enclave.kms.context import canonical_context

    opened = SymmetricKey(key.key_id, 1, material).decrypt(
        Ciphertext.from_bytes(ct), canonical_context(CTX)
    )
    assert opened == b"for the enclave"
    record = await kms.distribution.confirm_receipt(
        workload, release.release_id, receipt_proof(material, release.release_id)
    )
    assert record.confirmed_at is not None and record.principal_id == workload.id
    assert env.last_audit().operation == "keys.confirm_receipt"
    # another principal cannot confirm; a wrong proof is refused
    with pytest.raises(AccessDenied):
        await kms.distribution.confirm_receipt(svc, release.release_id, "0" * 64)

    # replaying the challenge is refused
    with pytest.raises(ChallengeInvalid):
        await kms.distribution.release_key(
            workload, key.key_id, platform="sev-snp", evidence=report, certs=snp.certs(),
            client_public_key=public, challenge=challenge,
        )  # fmt: skip
    # a key swapped in by someone in the middle does not match report_data
    challenge = kms.distribution.release_challenge()
    report = snp.report(report_data=release_report_data(public, challenge), measurement=MEASUREMENT)
    attacker = _client_public(X25519PrivateKey.generate())
    with pytest.raises(ReleaseRefused) as info:
        await kms.distribution.release_key(
            workload, key.key_id, platform="sev-snp", evidence=report, certs=snp.certs(),
            client_public_key=attacker, challenge=challenge,
        )  # fmt: skip
    assert info.value.reason == "report-data-mismatch"


async def test_release_refused_for_wrong_measurement_and_debug(env: Env, snp: SimulatedSnp) -> None:
    kms = env.kms
    svc, _ = await env.new_principal("owner")
    key = await kms.keys.create(env.admin, "hpke", "X25519", owner=svc.id)
    await kms.distribution.set_release_policy(svc, key.key_id, release_policy())
    client = X25519PrivateKey.generate()
    public = _client_public(client)
    before = persist.snapshot(env.store)
    for kwargs in ({"measurement": bytes(48)}, {"measurement": MEASUREMENT, "debug": True}):
        challenge = kms.distribution.release_challenge()
        report = snp.report(report_data=release_report_data(public, challenge), **kwargs)
        with pytest.raises(ReleaseRefused) as info:
            await kms.distribution.release_key(
                svc, key.key_id, platform="sev-snp", evidence=report, certs=snp.certs(),
                client_public_key=public, challenge=challenge,
            )  # fmt: skip
        assert info.value.reason == "policy-violation"
        last = env.last_audit()
        assert (last.operation, last.outcome) == ("keys.release", "denied")
    assert persist.snapshot(env.store) == before  # no release recorded
    # evidence chained to other (unknown) roots is not genuine
    other, _, _ = SimulatedSnp.create()
    challenge = kms.distribution.release_challenge()
    report = other.report(report_data=release_report_data(public, challenge),
                          measurement=MEASUREMENT)  # fmt: skip
    with pytest.raises(ReleaseRefused):
        await kms.distribution.release_key(
            svc, key.key_id, platform="sev-snp", evidence=report, certs=other.certs(),
            client_public_key=public, challenge=challenge,
        )  # fmt: skip


async def test_state_survives_a_restart(env: Env, shared_hsm, verifier, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Principals, grants and keys are in the store, not in the service object."""
    from enclave.keys.hierarchy import KeyHierarchy
    from enclave.kms.service import KmsService

    svc, _ = await env.new_principal("svc")
    key = await env.kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    ct = await env.kms.crypto.encrypt(svc, key.key_id, b"persisted")
    again = KmsService(
        hierarchy=KeyHierarchy(shared_hsm.backend, clock=env.clock), store=env.store,
        audit=env.kms.guard._audit, verifier=verifier, clock=env.clock,
    )  # fmt: skip
    await again.start()
    assert again.principal_directory.get(svc.id) == svc
    assert await again.crypto.decrypt(svc, ct) == b"persisted"


async def test_concurrent_updates_lose_no_write(env: Env) -> None:
    kms = env.kms
    svc, _ = await env.new_principal("svc")
    key = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    await kms.rotation.rotate(svc, key.key_id)
    await kms.rotation.rotate(svc, key.key_id)  # versions 1, 2 decrypt-only; 3 active
    await asyncio.gather(
        kms.keys.disable(svc, key.key_id, version=1),
        kms.keys.disable(svc, key.key_id, version=2),
        kms.keys.set_rotation(svc, key.key_id, 90),
        kms.rotation.register_consumer(svc, key.key_id, "a"),
        kms.rotation.register_consumer(svc, key.key_id, "b"),
    )
    info = await kms.keys.describe(svc, key.key_id)
    assert [v.state for v in info.versions] == [
        VersionState.DISABLED, VersionState.DISABLED, VersionState.ACTIVE,
    ]  # fmt: skip
    assert info.rotation_days == 90
    assert set((await kms.rotation.status(svc, key.key_id)).consumers) == {"a", "b"}


async def test_isolated_principal_loses_access_at_once(env: Env) -> None:
    kms = env.kms
    svc, _ = await env.new_principal("svc")
    key = await kms.keys.create(env.admin, "encrypt", "AES-256-GCM", owner=svc.id)
    ct = await kms.crypto.encrypt(svc, key.key_id, b"x")
    await kms.principals.isolate(env.admin, svc.id)
    with pytest.raises(AccessDenied):
        await kms.crypto.decrypt(svc, ct)  # the stale Principal object does not help
    with pytest.raises(AccessDenied):
        await kms.keys.list(svc)
    await kms.principals.enable(env.admin, svc.id)
    assert await kms.crypto.decrypt(svc, ct) == b"x"
    with pytest.raises(InvalidRequest):
        await kms.principals.disable(env.admin, env.admin.id)


async def test_workload_principal_authenticates_by_measurement(env: Env, snp: SimulatedSnp) -> None:
    from enclave.kms.principals import workload_report_data

    kms = env.kms
    kms.principals._workload_policy = Policy(allow_simulated=True)  # a simulation deployment
    workload = await kms.principals.register_workload(
        env.admin, name="bidding", measurements=[MEASUREMENT]
    )
    challenge = kms.principals.identity_challenge()
    report = snp.report(report_data=workload_report_data(workload.id, challenge),
                        measurement=MEASUREMENT)  # fmt: skip
    found = await kms.principals.authenticate_workload(
        workload.id, platform="sev-snp", evidence=report, challenge=challenge, certs=snp.certs()
    )
    assert found == workload
    challenge = kms.principals.identity_challenge()
    report = snp.report(report_data=workload_report_data(workload.id, challenge),
                        measurement=bytes(48))  # fmt: skip
    with pytest.raises(ReleaseRefused):
        await kms.principals.authenticate_workload(
            workload.id, platform="sev-snp", evidence=report, challenge=challenge,
            certs=snp.certs(),
        )  # fmt: skip
    last = env.last_audit()
    assert (last.operation, last.outcome) == ("principals.authenticate_workload", "denied")
