"""Quorum governance through the HTTP API of a real in-process KMS (3 admins, M = 2).

The attacks are named: an approval below the threshold, a replayed approval, an approval
made for other parameters, one submitted for another proposal, one on an expired proposal,
one signed by a key that is not an admin's, and a proposal by a caller below level 4.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.governance.approvals import sign_approval
from enclave.governance.proposals import Proposal
from simulator.testing import SimulatedLaunch
from tests.governance.harness import Keys, Kms, start_kms
from tests.hsm import support

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def shared_hsm() -> Iterator[support.SharedHsm]:
    shared = support.acquire()
    yield shared
    support.release()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> SimulatedLaunch:
    return SimulatedLaunch.prepare(tmp_path_factory.mktemp("gov-template"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kms(
    shared_hsm: support.SharedHsm,
    template: SimulatedLaunch,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Kms]:
    state = tmp_path_factory.mktemp("gov") / "state"
    instance = await start_kms(template, state, shared_hsm.backend, Keys.generate())
    try:
        yield instance
    finally:
        await instance.client.close()


async def kek_versions(kms: Kms) -> int:
    return len((await kms.runtime.current_kek()).versions)


async def test_one_approval_below_the_threshold_never_executes(kms: Kms) -> None:
    before = await kek_versions(kms)
    view = await kms.propose("master_key.rotate")
    assert view["status"] == "pending" and view["threshold"] == 2
    done = await kms.approve(view, 0)
    assert done["status"] == "pending" and done["approvals"] == 1
    shown = await kms.ok("GET", f"/v1/governance/proposals/{view['proposal']['id']}")
    assert shown["status"] == "pending" and shown["result"] is None
    assert await kek_versions(kms) == before


async def test_m_approvals_execute_exactly_once(kms: Kms) -> None:
    before = await kek_versions(kms)
    view = await kms.propose("master_key.rotate")
    proposal_id = view["proposal"]["id"]
    await kms.approve(view, 0)
    # The 2nd and 3rd approvals race to be the M-th: one executes, the other finds it closed.
    second = kms.sign(view, kms.keys.admins[1])
    third = kms.sign(view, kms.keys.admins[2])
    answers = await asyncio.gather(
        kms.approve_raw(proposal_id, second, admin=1), kms.approve_raw(proposal_id, third, admin=2)
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 409], answers
    executed = next(doc for status, doc in answers if status == 200)
    assert executed["status"] == "executed"
    assert executed["result"]["new_version"] == before + 1
    assert await kek_versions(kms) == before + 1
    shown = await kms.ok("GET", f"/v1/governance/proposals/{proposal_id}")
    assert shown["status"] == "executed"


async def test_replayed_approval_is_refused(kms: Kms) -> None:
    view = await kms.propose("master_key.rotate")
    proposal_id = view["proposal"]["id"]
    approval = kms.sign(view, kms.keys.admins[0])
    assert (await kms.approve_raw(proposal_id, approval))[0] == 200
    status, problem = await kms.approve_raw(proposal_id, approval)
    assert status == 409 and problem["type"].endswith("/duplicate-approval")
    await kms.approve(view, 1)  # executes
    before = await kek_versions(kms)
    status, problem = await kms.approve_raw(proposal_id, kms.sign(view, kms.keys.admins[2]))
    assert status == 409 and problem["type"].endswith("/proposal-closed")
    assert await kek_versions(kms) == before


async def test_approval_for_other_parameters_is_refused(kms: Kms) -> None:
    key_id = await kms.new_key()
    view = await kms.propose("emergency.rotate", {"key_id": key_id})
    proposal = Proposal.from_dict(view["proposal"])
    other = await kms.new_key()
    forged = replace(proposal, parameters={"key_id": other})
    approval = sign_approval(kms.keys.admins[0], forged)
    status, problem = await kms.approve_raw(proposal.id, approval)
    assert status == 403 and problem["type"].endswith("/invalid-approval-signature")


async def test_approval_submitted_for_another_proposal_is_refused(kms: Kms) -> None:
    first = await kms.propose("master_key.rotate")
    second = await kms.propose("master_key.rotate")
    approval = kms.sign(first, kms.keys.admins[0])
    status, problem = await kms.approve_raw(second["proposal"]["id"], approval)
    assert status == 400 and problem["type"].endswith("/approval-mismatch")


async def test_expired_proposal_is_refused(kms: Kms) -> None:
    before = await kek_versions(kms)
    view = await kms.propose("master_key.rotate", ttl_seconds=1)
    await kms.approve(view, 0)
    await asyncio.sleep(1.1)
    status, problem = await kms.approve_raw(
        view["proposal"]["id"], kms.sign(view, kms.keys.admins[1]), admin=1
    )
    assert status == 410 and problem["type"].endswith("/proposal-expired")
    assert await kek_versions(kms) == before


async def test_approval_by_a_non_admin_key_is_refused(kms: Kms) -> None:
    view = await kms.propose("master_key.rotate")
    stranger = Ed25519PrivateKey.generate()
    status, problem = await kms.approve_raw(view["proposal"]["id"], kms.sign(view, stranger))
    assert status == 403 and problem["type"].endswith("/unknown-admin")


async def test_a_caller_below_level_4_cannot_propose(kms: Kms, tmp_path: Path) -> None:
    import base64

    from enclave.kms.principals import identity_proof_message

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    challenge = base64.b64decode((await kms.ok("POST", "/v1/principals/challenge"))["challenge"])
    made = await kms.ok("POST", "/v1/principals", {
        "name": "svc", "kind": "service", "public_key": base64.b64encode(public).decode(),
        "challenge": base64.b64encode(challenge).decode(),
        "proof": base64.b64encode(
            key.sign(identity_proof_message(challenge, public, "svc"))).decode(),
        "system_level": 2,
    })  # fmt: skip
    status, problem = await kms.call(
        "POST",
        "/v1/governance/proposals",
        {"operation": "master_key.rotate", "parameters": {}},
        token=kms.token(key, made["id"]),
    )
    assert status == 403, problem
    status, _ = await kms.call("GET", "/v1/governance/proposals", token="not-a-token")
    assert status == 401


async def test_unknown_operation_and_bad_parameters_are_refused_before_signing(kms: Kms) -> None:
    status, problem = await kms.call(
        "POST", "/v1/governance/proposals", {"operation": "keys.steal", "parameters": {}}
    )
    assert status == 400 and problem["type"].endswith("/unknown-operation")
    status, problem = await kms.call(
        "POST",
        "/v1/governance/proposals",
        {"operation": "emergency.compromise", "parameters": {"key_id": "nope"}},
    )
    assert status == 400 and problem["type"].endswith("/invalid-proposal")
