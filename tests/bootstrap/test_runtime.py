"""Bootstrap in-process (on the shared test token): restart keeps keys, refusals are clear."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from enclave.app import RUNTIME, create_app
from enclave.attestation.launch import LaunchIdentity
from enclave.attestation.providers import Launch
from enclave.attestation.providers import launch as open_launch
from enclave.audit.verify import verify_export
from enclave.bootstrap import (
    BOOTSTRAP_STEPS,
    BootstrapOptions,
    LaunchChanged,
    PolicyMismatch,
    StateRolledBack,
    bootstrap,
    running,
)
from enclave.config import ConfigError, EnclaveConfig
from enclave.identity import kms_id_for
from enclave.keys.material import X25519KeyPair
from enclave.keys.metadata import Algorithm, Purpose
from enclave.problems import NotReady
from enclave.routes.health import readyz
from enclave.runtime import SYSTEM_KIND
from tests.hsm import support


def _config(state: Path) -> EnclaveConfig:
    return EnclaveConfig.create(
        platform="sev-snp", state_dir=state, listen="tcp:127.0.0.1:0", data_dir=state / "kms"
    )


@pytest.fixture
def options(shared_hsm: support.SharedHsm) -> BootstrapOptions:
    return BootstrapOptions(hsm=shared_hsm.backend, counter_label=f"test/{uuid.uuid4().hex}")


def _other_measurement(launched: Launch) -> Launch:
    assert launched.identity is not None
    changed = bytes([launched.identity.measurement[0] ^ 1]) + launched.identity.measurement[1:]
    return Launch(LaunchIdentity(changed, launched.identity.config), launched.provider)


async def test_restart_keeps_every_key(state: Path, options: BootstrapOptions) -> None:
    config = _config(state)
    launched = open_launch(config)
    async with running(config, launched, options) as runtime:
        assert runtime.first_boot
        kek = runtime.kek_version
        aes, aes_v = await runtime.hierarchy.create_key(
            Purpose.ENCRYPT, Algorithm.AES_256_GCM, kek=kek, owner="svc-a"
        )
        signing, signing_v = await runtime.hierarchy.create_key(
            Purpose.SIGN, Algorithm.ED25519, kek=kek, owner="svc-a"
        )
        hpke, hpke_v = await runtime.hierarchy.create_key(
            Purpose.HPKE, Algorithm.X25519_HPKE, kek=kek, owner="svc-b"
        )
        for metadata in (aes, signing, hpke):
            await runtime.save_key(metadata, expected_version=0)
        blob = await runtime.hierarchy.encrypt(aes_v, kek, b"kept across restarts", b"ctx")
        signature = await runtime.hierarchy.sign(signing_v, kek, b"message")
        kms_id, certificate = runtime.kms_id, runtime.identity.certificate_der
        assert sorted(await runtime.list_key_ids()) == sorted(
            [aes.key_id, signing.key_id, hpke.key_id]
        )

    async with running(config, open_launch(config), options) as again:
        assert not again.first_boot
        assert again.kms_id == kms_id and again.identity.certificate_der == certificate
        loaded = await again.load_key(aes.key_id)
        version = loaded.version(1)
        kek_again = await again.kek_for(version)
        assert await again.hierarchy.decrypt(loaded, kek_again, blob, b"ctx") == (
            b"kept across restarts"
        )
        new_blob = await again.hierarchy.encrypt(version, kek_again, b"new", b"")
        assert await again.hierarchy.decrypt(loaded, kek_again, new_blob, b"") == b"new"
        signer = await again.load_key(signing.key_id)
        again.hierarchy.verify(signer.version(1), b"message", signature)
        assert (
            await again.hierarchy.sign(
                signer.version(1), await again.kek_for(signer.version(1)), b"message"
            )
            == signature
        )  # Ed25519 is deterministic: the very same private key came back
        pair = await again.hierarchy.unwrap_for_use(
            (await again.load_key(hpke.key_id)).version(1), kek_again
        )
        assert isinstance(pair, X25519KeyPair) and pair.public_key_der() == hpke_v.public_key
        assert sorted(await again.list_key_ids()) == sorted(
            [aes.key_id, signing.key_id, hpke.key_id]
        )


async def test_identity_certificate_and_signed_audit(
    state: Path, options: BootstrapOptions
) -> None:
    config = _config(state)
    async with running(config, open_launch(config), options) as runtime:
        identity = runtime.identity
        certificate = x509.load_der_x509_certificate(identity.certificate_der)
        cn = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert cn == identity.kms_id == kms_id_for(identity.public_key_der)
        public = certificate.public_key()
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(identity.sign(b"hello"), b"hello")
        document = identity.document()
        assert base64.b64decode(document["audit_public_key"]) == identity.audit_public_key
        lines = runtime.audit.export_lines()
        report = verify_export(lines, pinned_public_key=identity.audit_public_key)
        assert report.intact and report.records >= 1 and report.checkpoints >= 1
        operations = [json.loads(line).get("operation") for line in lines[1:]]
        assert operations[0] == "kms.start"
        for text in (repr(runtime), repr(identity), repr(runtime.sealer)):
            assert "seed" not in text and "secret" not in text.lower()


async def test_changed_code_cannot_unseal_and_refuses_to_start(
    state: Path, options: BootstrapOptions
) -> None:
    config = _config(state)
    launched = open_launch(config)
    runtime = await bootstrap(config, launched, options)
    await runtime.close()
    with pytest.raises(LaunchChanged) as refused:
        await bootstrap(config, _other_measurement(launched), options)
    message = str(refused.value)
    assert "measurement" in message and "code changed" in message
    assert "refusing to start" in message
    # The unchanged enclave still starts: the refusal changed nothing.
    runtime = await bootstrap(config, launched, options)
    await runtime.close()


async def test_changed_launch_configuration_refuses_to_start(
    state: Path, options: BootstrapOptions
) -> None:
    config = _config(state)
    launched = open_launch(config)
    await (await bootstrap(config, launched, options)).close()
    assert launched.identity is not None
    other = b'{"platform":"sev-snp","quorum":{"admins":[],"threshold":2},"version":1}'
    changed = Launch(LaunchIdentity(launched.identity.measurement, other), launched.provider)
    with pytest.raises(LaunchChanged, match="configuration"):
        await bootstrap(config, changed, options)


async def test_recorded_policy_is_compared_at_start(state: Path, options: BootstrapOptions) -> None:
    config = _config(state)
    launched = open_launch(config)
    async with running(config, launched, options) as runtime:
        assert runtime.policy.quorum_threshold == 1 and runtime.policy.admins == ()
        assert (
            runtime.policy.config_sha256
            == hashlib.sha256(launched.identity.config if launched.identity else b"").hexdigest()
        )
        # Stand-in for a state activated under another configuration.
        other = b'{"platform":"sev-snp","quorum":{"admins":[],"threshold":3},"version":1}'
        record = await runtime.store.get(SYSTEM_KIND, "policy")
        assert record is not None
        document = json.loads(record.value)
        document.update(
            launch_config=other.decode(), config_sha256=hashlib.sha256(other).hexdigest()
        )
        await runtime.store.put(
            SYSTEM_KIND, "policy", json.dumps(document).encode(), expected_version=record.version
        )
    with pytest.raises(PolicyMismatch, match="differs from the one activated"):
        await bootstrap(config, launched, options)


def _database_files(kms: Path) -> list[Path]:
    return [p for p in kms.iterdir() if p.name.startswith("kms.db")]


async def test_older_copy_of_the_database_is_refused(
    state: Path, options: BootstrapOptions
) -> None:
    config = _config(state)
    launched = open_launch(config)
    await (await bootstrap(config, launched, options)).close()
    saved = {p.name: p.read_bytes() for p in _database_files(config.kms_dir)}
    async with running(config, launched, options) as runtime:
        metadata, _ = await runtime.hierarchy.create_key(
            Purpose.ENCRYPT, Algorithm.AES_256_GCM, kek=runtime.kek_version, owner="svc"
        )
        await runtime.save_key(metadata)
    for path in _database_files(config.kms_dir):
        path.unlink()
    for name, data in saved.items():
        (config.kms_dir / name).write_bytes(data)
    with pytest.raises(StateRolledBack, match="older copy"):
        await bootstrap(config, launched, options)


async def test_swapped_records_are_refused(state: Path, options: BootstrapOptions) -> None:
    config = _config(state)
    launched = open_launch(config)
    await (await bootstrap(config, launched, options)).close()
    db = sqlite3.connect(config.kms_dir / "kms.db")
    try:
        rows = db.execute(
            "SELECT kind, id, ciphertext FROM records WHERE kind = 'system_keys' ORDER BY id"
        ).fetchall()
        (k1, id1, c1), (k2, id2, c2) = rows[0], rows[1]
        db.execute("UPDATE records SET ciphertext = ? WHERE kind = ? AND id = ?", (c2, k1, id1))
        db.execute("UPDATE records SET ciphertext = ? WHERE kind = ? AND id = ?", (c1, k2, id2))
        db.commit()
    finally:
        db.close()
    with pytest.raises(StateRolledBack, match="tampered"):
        await bootstrap(config, launched, options)


async def test_readyz_only_after_bootstrap(
    state: Path, options: BootstrapOptions, aiohttp_client: Callable[..., Any]
) -> None:
    config = _config(state)
    app = create_app(config, bootstrap_options=options)
    with pytest.raises(NotReady):
        await readyz(make_mocked_request("GET", "/readyz", app=app))
    client = await aiohttp_client(app)
    answer = await client.get("/readyz")
    assert answer.status == 200
    runtime = client.app[RUNTIME]
    assert (await answer.json())["kms_id"] == runtime.kms_id
    await client.close()
    assert runtime.audit.stats().healthy


def test_pause_seam_names_a_step() -> None:
    assert BOOTSTRAP_STEPS == ("tee", "hsm", "storage", "kek", "identity", "policy")
    assert BootstrapOptions.from_environment({"KMS_BOOTSTRAP_PAUSE_AFTER": "kek"}).pause_after
    with pytest.raises(ConfigError):
        BootstrapOptions.from_environment({"KMS_BOOTSTRAP_PAUSE_AFTER": "nope"})
