"""Disaster recovery, end to end, with real processes and real HSM tokens.

The primary KMS runs as its own ``kms-enclave serve`` process with its own SoftHSM token.
Keys are made and data encrypted through the HTTP API; a quorum (2 of 3 admins) approves
a backup export; the bundle is downloaded and verified offline. Then the primary's state
directory, HSM token included, is destroyed. A fresh instance (new process, new token, new
master key, a throwaway identity of its own) is started from the same attested launch
configuration; the bundle is staged, two custodians open their shares on their machines and
seal them to the fresh enclave's attested recipient key, and the quorum approves the
restore. After the restart: the service identity clients pinned (``kms_id``) is the old
one, every key decrypts its old ciphertexts, and the audit chain continues from the
backed-up head.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.audit.records import AuditRecord
from enclave.governance.approvals import sign_approval
from enclave.governance.proposals import Proposal
from kms.client import AsyncKmsClient
from kms.commands.backup import check_offer, new_nonce, seal_for_recipient, verify_offline
from kms.credentials import AuthorizedClient, Credentials
from simulator.instance import EnclaveInstance
from simulator.testing import SimulatedLaunch
from tests.governance.harness import Keys, admin_id, write_launch_config

pytestmark = [pytest.mark.slow]


class Admin:
    def __init__(self, instance: EnclaveInstance, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.client = AuthorizedClient(
            AsyncKmsClient(instance.profile()), Credentials(admin_id(key), key)
        )

    async def __aenter__(self) -> Admin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.client.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.client.request(method, path, json_body=body)
        return response.json() if response.body[:1] in (b"{", b"[") else response.body


async def quorum_run(admins: list[Admin], operation: str, params: dict[str, Any]) -> Any:
    """Propose as the first admin; each admin signs offline and approves (M = 2)."""
    view = await admins[0].call(
        "POST", "/v1/governance/proposals", {"operation": operation, "parameters": params}
    )
    proposal = Proposal.from_dict(view["proposal"])
    done: Any = None
    for admin in admins[:2]:
        approval = sign_approval(admin.key, proposal).to_dict()
        done = await admin.call(
            "POST", f"/v1/governance/proposals/{proposal.id}/approvals", approval
        )
    assert done["status"] == "executed", done
    return done["result"]


def audit_lines(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "audit" / "audit.log").read_bytes().splitlines()]


def assert_one_chain(lines: list[dict[str, Any]]) -> None:
    previous = "0" * 64
    for seq, document in enumerate(lines):
        record = AuditRecord.from_json(document)
        assert record.seq == seq
        assert record.prev_hash == previous, f"chain broken at seq {seq}"
        assert record.computed_hash() == record.hash
        previous = record.hash


async def test_backup_destroy_and_restore_into_a_new_token(tmp_path: Path) -> None:
    keys = Keys.generate()
    template = SimulatedLaunch.prepare(tmp_path / "template")
    primary_state = tmp_path / "primary"
    shutil.copytree(template.state, primary_state)
    write_launch_config(primary_state, keys)

    # -- the primary: keys, data, a quorum-approved backup ---------------------------------
    primary = await EnclaveInstance(primary_state).start()
    plaintexts: dict[str, tuple[bytes, str]] = {}
    try:
        admins = [Admin(primary, k) for k in keys.admins]
        info = await admins[0].call("GET", "/v1/auth/info")
        kms_id = info["kms_id"]
        for index in range(3):
            key_id = (await admins[0].call("POST", "/v1/keys", {"purpose": "encrypt"}))["id"]
            secret = f"record {index} of the primary".encode()
            done = await admins[0].call(
                "POST", "/v1/encrypt",
                {"key_id": key_id, "plaintext": base64.b64encode(secret).decode()},
            )  # fmt: skip
            plaintexts[key_id] = (secret, done["ciphertext"])
        # A rotated key: its old ciphertext is under version 1, its new under version 2.
        rotated = next(iter(plaintexts))
        await quorum_run(admins, "emergency.rotate", {"key_id": rotated})
        exported = await quorum_run(admins, "backup.export", {})
        backup_id = exported["backup_id"]
        bundle = await admins[0].call("GET", f"/v1/backup/bundles/{backup_id}")
        identity = await admins[0].call("GET", "/v1/backup/identity")
        assert identity["kms_id"] == kms_id
        for admin in admins:
            await admin.__aexit__()
    finally:
        await primary.stop()
    assert hashlib.sha256(bundle).hexdigest() == exported["bundle_sha256"]
    summary = verify_offline(bundle, bytes.fromhex(identity["identity_public_key"]), kms_id)
    assert summary["backup_id"] == backup_id and summary["audit_head"] == exported["audit_head"]
    backed_up_audit = audit_lines(primary_state)[: exported["audit_head"]["seq"] + 1]

    # -- disaster: the primary's state, HSM token included, is gone ------------------------
    fresh_state = tmp_path / "fresh"
    fresh_state.mkdir()
    for name in ("hw", "sim-roots", "launch.json"):  # the (fake) vendor and the config
        source = primary_state / name
        if source.is_dir():
            shutil.copytree(source, fresh_state / name)
        else:
            shutil.copy2(source, fresh_state / name)
    shutil.rmtree(primary_state)
    assert not primary_state.exists()

    # -- a fresh instance: new process, new token, its own throwaway identity --------------
    fresh = await EnclaveInstance(fresh_state).start()
    try:
        admins = [Admin(fresh, k) for k in keys.admins]
        assert (await admins[0].call("GET", "/v1/auth/info"))["kms_id"] != kms_id
        staged = await admins[0].call(
            "PUT", f"/v1/backup/restore/bundles/{backup_id}",
            {"bundle": base64.b64encode(bundle).decode()},
        )  # fmt: skip
        assert staged["bundle_sha256"] == exported["bundle_sha256"]
        # Two custodians, each on their own machine: open the share, attest, seal, send.
        for custodian in keys.custodians[:2]:
            nonce = new_nonce()
            offer = await admins[0].call("GET", f"/v1/backup/restore/recipient?nonce={nonce.hex()}")
            recipient = check_offer(fresh.profile(), offer, nonce)
            sealed_for, sealed = seal_for_recipient(bundle, custodian, recipient)
            assert sealed_for == backup_id
            await admins[0].call(
                "POST", "/v1/backup/restore/shares",
                {"backup_id": backup_id, "sealed_share": base64.b64encode(sealed).decode()},
            )  # fmt: skip
        report = await quorum_run(admins, "backup.restore", {
            "backup_id": backup_id, "bundle_sha256": exported["bundle_sha256"],
            "kms_id": kms_id, "identity_public_key": identity["identity_public_key"],
        })  # fmt: skip
        assert report["kms_id"] == kms_id and report["restart_required"] is True
        assert report["keks_reimported"] >= 1
        assert report["canaries_checked"] >= len(plaintexts)
        for admin in admins:
            await admin.__aexit__()
    finally:
        await fresh.stop()

    # -- the restart serves the restored KMS -----------------------------------------------
    restored = await EnclaveInstance(fresh_state).start()
    try:
        admins = [Admin(restored, k) for k in keys.admins]
        assert (await admins[0].call("GET", "/v1/auth/info"))["kms_id"] == kms_id
        for key_id, (secret, ciphertext) in plaintexts.items():
            done = await admins[0].call("POST", "/v1/decrypt", {"ciphertext": ciphertext})
            assert done["key_id"] == key_id
            assert base64.b64decode(done["plaintext"]) == secret
        # New work goes on under the restored keys.
        done = await admins[0].call(
            "POST", "/v1/encrypt",
            {"key_id": rotated, "plaintext": base64.b64encode(b"after").decode()},
        )  # fmt: skip
        assert done["version"] == 2
        for admin in admins:
            await admin.__aexit__()
    finally:
        await restored.stop()

    # -- the audit chain continues from the backed-up head ---------------------------------
    lines = audit_lines(fresh_state)
    assert lines[: len(backed_up_audit)] == backed_up_audit
    assert len(lines) > len(backed_up_audit)
    assert_one_chain(lines)
    after = [AuditRecord.from_json(d) for d in lines[len(backed_up_audit) :]]
    assert any(r.operation == "kms.start" for r in after)
    assert (fresh_state / "audit" / f"pre-restore-{backup_id}.log").exists()
