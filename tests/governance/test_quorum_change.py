"""Quorum changes: approved by the quorum in force, persisted, replayed after a restart."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.governance.approvals import sign_approval
from enclave.governance.errors import InvalidProposal, UnknownAdmin
from enclave.governance.operations import CHANGE_QUORUM, ROTATE_MASTER_KEY
from tests.governance.conftest import Env, raw_public


async def test_quorum_change_applies_and_survives_restart(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    gov = env.governance()
    dave = Ed25519PrivateKey.generate()
    new_admins = [
        {"name": "alice", "public_key": raw_public(admin_keys[0]).hex()},
        {"name": "dave", "public_key": raw_public(dave).hex()},
    ]
    proposal = await gov.propose(
        CHANGE_QUORUM, {"threshold": 2, "admins": new_admins}, proposer="admin:alice"
    )
    assert proposal.parameters["from"] == env.quorum.config_digest()
    await gov.approve(sign_approval(admin_keys[0], proposal))
    result = await gov.approve(sign_approval(admin_keys[1], proposal))
    assert result.executed
    assert [a.name for a in gov.config.admins] == ["alice", "dave"]

    gov = env.restart()
    assert [a.name for a in gov.config.admins] == ["alice", "dave"]
    rotate = await gov.propose(ROTATE_MASTER_KEY, {}, proposer="admin:alice")
    # bob was removed: his approval is refused now.
    with pytest.raises(UnknownAdmin):
        await gov.approve(sign_approval(admin_keys[1], rotate))
    await gov.approve(sign_approval(dave, rotate))
    assert (await gov.approve(sign_approval(admin_keys[0], rotate))).executed


async def test_a_stale_or_bad_quorum_change_is_refused(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    gov = env.governance()
    admins = [{"name": "alice", "public_key": raw_public(admin_keys[0]).hex()}]
    with pytest.raises(InvalidProposal):
        await gov.propose(CHANGE_QUORUM, {"threshold": 2, "admins": admins}, proposer="a")
    with pytest.raises(InvalidProposal):
        await gov.propose(
            CHANGE_QUORUM, {"threshold": 1, "admins": admins, "from": "00" * 32}, proposer="a"
        )


async def test_a_relaunch_with_a_new_attested_quorum_ignores_old_changes(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    from enclave.governance.quorum import AdminKey, QuorumConfig

    gov = env.governance()
    admins = [{"name": "alice", "public_key": raw_public(admin_keys[0]).hex()},
              {"name": "bob", "public_key": raw_public(admin_keys[1]).hex()}]  # fmt: skip
    change = await gov.propose(CHANGE_QUORUM, {"threshold": 2, "admins": admins}, proposer="a")
    await gov.approve(sign_approval(admin_keys[0], change))
    await gov.approve(sign_approval(admin_keys[2], change))
    relaunched = QuorumConfig(1, (AdminKey("zed", raw_public(Ed25519PrivateKey.generate())),))
    env.quorum = relaunched
    gov = env.restart()
    assert gov.config == relaunched
