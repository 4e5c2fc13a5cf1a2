"""M-of-N approvals: refusals, exactly-once execution, races and restarts."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.governance.approvals import (
    Approval,
    approval_digest,
    approval_message,
    sign_approval,
)
from enclave.governance.errors import (
    ApprovalMismatch,
    ApprovalRefused,
    DuplicateApproval,
    ExecutionFailed,
    InvalidApprovalSignature,
    MalformedApproval,
    ProposalClosed,
    ProposalExpired,
    UnknownAdmin,
    UnknownOperation,
    UnknownProposal,
)
from enclave.governance.operations import (
    EXPORT_BACKUP,
    ROTATE_MASTER_KEY,
    ExecutorRegistry,
)
from enclave.governance.proposals import Proposal
from tests.governance.conftest import KMS_ID, MEASUREMENT, Env

PARAMS = {"reason": "monthly rotation", "key": "master"}


async def test_m_minus_one_approvals_never_execute(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    gov = env.governance()
    proposal = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    result = await gov.approve(sign_approval(admin_keys[0], proposal))
    assert result.status == "pending" and result.approvals == 1 and not result.executed
    assert env.calls.seen == []
    assert gov.get(proposal.id).status == "pending"


async def test_m_approvals_execute_exactly_once(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    gov = env.governance()
    proposal = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    await gov.approve(sign_approval(admin_keys[0], proposal))
    result = await gov.approve(sign_approval(admin_keys[2], proposal))
    assert result.executed and result.result == {"new_version": 1}
    assert [p.id for p in env.calls.seen] == [proposal.id]
    assert env.calls.seen[0].parameters == PARAMS
    # The third admin's approval comes too late: it is a replay of a closed proposal.
    with pytest.raises(ProposalClosed):
        await gov.approve(sign_approval(admin_keys[1], proposal))
    state = gov.get(proposal.id)
    assert state.status == "executed" and state.approvers == ("alice", "carol")
    assert len(env.calls.seen) == 1
    ops = [(r["operation"], r["outcome"]) for r in env.audit.records]
    assert ops == [
        ("governance.propose", "allowed"),
        ("governance.approve", "allowed"),
        ("governance.approve", "allowed"),
        ("governance.execute", "event"),
        ("governance.execute", "allowed"),
        ("governance.approve", "denied"),
    ]


async def test_replayed_approval_of_executed_proposal_is_refused(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    gov = env.governance()
    proposal = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    first = sign_approval(admin_keys[0], proposal)
    second = sign_approval(admin_keys[1], proposal)
    await gov.approve(first)
    await gov.approve(second)
    for replay in (first, second):
        with pytest.raises(ProposalClosed):
            await gov.approve(replay)
    assert len(env.calls.seen) == 1


async def test_same_admin_counts_once(env: Env, admin_keys: list[Ed25519PrivateKey]) -> None:
    gov = env.governance()
    proposal = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    approval = sign_approval(admin_keys[0], proposal)
    await gov.approve(approval)
    with pytest.raises(DuplicateApproval):
        await gov.approve(approval)
    # Ed25519 is deterministic; a fresh signature by the same key is the same admin anyway.
    with pytest.raises(DuplicateApproval):
        await gov.approve(sign_approval(admin_keys[0], proposal))
    assert env.calls.seen == [] and gov.get(proposal.id).status == "pending"
    denied = env.audit.of("governance.approve", "denied")
    assert [r["details"]["reason"] for r in denied] == ["duplicate-approval"] * 2


async def test_approval_over_other_parameters_is_refused(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    gov = env.governance()
    proposal = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    forged = replace(proposal, parameters={**PARAMS, "key": "other"})
    with pytest.raises(InvalidApprovalSignature):
        await gov.approve(sign_approval(admin_keys[0], forged))
    assert gov.get(proposal.id).approvals == ()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"kms_identity": "kms-other"}, id="another-kms"),
        pytest.param({"measurement": bytes(48)}, id="another-measurement"),
        pytest.param({"operation": EXPORT_BACKUP}, id="another-operation"),
        pytest.param({"expires_at": "later"}, id="another-expiry"),
    ],
)
async def test_approval_bound_to_every_field(
    env: Env, admin_keys: list[Ed25519PrivateKey], change: dict[str, object]
) -> None:
    gov = env.governance()
    proposal = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    if change.get("expires_at") == "later":
        change = {"expires_at": proposal.expires_at + timedelta(days=1)}
    other = replace(proposal, **change)
    assert approval_digest(other) != approval_digest(proposal)
    with pytest.raises(InvalidApprovalSignature):
        await gov.approve(sign_approval(admin_keys[0], other))


async def test_approval_for_another_proposal_is_refused(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    gov = env.governance()
    one = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    two = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    for_two = sign_approval(admin_keys[0], two)
    # Submitted for proposal one: the named id differs.
    with pytest.raises(ApprovalMismatch):
        await gov.approve(for_two, proposal_id=one.id)
    # Relabelled as an approval of proposal one: the signature is over two's digest.
    relabelled = Approval(one.id, for_two.public_key, for_two.signature)
    with pytest.raises(InvalidApprovalSignature):
        await gov.approve(relabelled)
    assert gov.get(one.id).approvals == ()
    with pytest.raises(UnknownProposal):
        await gov.approve(Approval("prop_missing", for_two.public_key, for_two.signature))


async def test_non_admin_signer_is_refused(env: Env, admin_keys: list[Ed25519PrivateKey]) -> None:
    gov = env.governance()
    proposal = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    with pytest.raises(UnknownAdmin):
        await gov.approve(sign_approval(Ed25519PrivateKey.generate(), proposal))
    # An outsider who copies an admin's public key cannot sign for it.
    outsider = sign_approval(Ed25519PrivateKey.generate(), proposal)
    stolen_name = sign_approval(admin_keys[0], proposal).public_key
    with pytest.raises(InvalidApprovalSignature):
        await gov.approve(Approval(proposal.id, stolen_name, outsider.signature))
    denied = env.audit.of("governance.approve", "denied")
    assert denied[0]["principal"] == "unknown-signer"


async def test_expired_proposal_is_refused(env: Env, admin_keys: list[Ed25519PrivateKey]) -> None:
    gov = env.governance()
    proposal = await gov.propose(
        ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice", ttl=timedelta(hours=1)
    )
    await gov.approve(sign_approval(admin_keys[0], proposal))
    env.clock.advance(timedelta(hours=1))
    with pytest.raises(ProposalExpired):
        await gov.approve(sign_approval(admin_keys[1], proposal))
    assert env.calls.seen == []


async def test_concurrent_approvals_execute_once(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    gov = env.governance()
    proposal = await gov.propose(EXPORT_BACKUP, {"destination": "eu-2"}, proposer="admin:bob")
    approvals = [sign_approval(k, proposal) for k in admin_keys]
    outcomes = await asyncio.gather(*(gov.approve(a) for a in approvals), return_exceptions=True)
    executed = [o for o in outcomes if not isinstance(o, BaseException) and o.executed]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(executed) == 1
    assert all(isinstance(o, ProposalClosed) for o in refused)
    assert len(env.calls.seen) == 1


async def test_two_governors_on_one_store_execute_once(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    first, second = env.governance(), env.governance()
    proposal = await first.propose(EXPORT_BACKUP, {"destination": "eu-2"}, proposer="admin:bob")
    await first.approve(sign_approval(admin_keys[0], proposal))
    outcomes = await asyncio.gather(
        first.approve(sign_approval(admin_keys[1], proposal)),
        second.approve(sign_approval(admin_keys[2], proposal)),
        return_exceptions=True,
    )
    assert sum(1 for o in outcomes if not isinstance(o, BaseException) and o.executed) == 1
    assert all(isinstance(o, ProposalClosed) for o in outcomes if isinstance(o, BaseException))
    assert len(env.calls.seen) == 1


async def test_restart_keeps_approvals_and_never_executes_twice(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    gov = env.governance()
    proposal = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    first = sign_approval(admin_keys[0], proposal)
    await gov.approve(first)

    gov = env.restart()
    with pytest.raises(DuplicateApproval):
        await gov.approve(first)
    result = await gov.approve(sign_approval(admin_keys[1], proposal))
    assert result.executed and len(env.calls.seen) == 1

    gov = env.restart()
    assert gov.get(proposal.id).status == "executed"
    with pytest.raises(ProposalClosed):
        await gov.approve(sign_approval(admin_keys[2], proposal))
    assert len(env.calls.seen) == 1


async def test_crash_during_execution_never_reexecutes(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    started = asyncio.Event()

    async def hangs(proposal: Proposal) -> None:
        started.set()
        await asyncio.sleep(3600)

    gov = env.governance(executors=ExecutorRegistry({ROTATE_MASTER_KEY: hangs}))
    proposal = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    await gov.approve(sign_approval(admin_keys[0], proposal))
    # The process "dies" while executing: the task never gets to write its outcome.
    task = asyncio.create_task(gov.approve(sign_approval(admin_keys[1], proposal)))
    await started.wait()
    snapshot = env.store.get("governance", proposal.id)
    assert snapshot is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Whatever the outcome record, a restart sees the proposal closed.
    gov = env.restart()
    assert gov.get(proposal.id).status in ("executing", "failed")
    with pytest.raises(ProposalClosed):
        await gov.approve(sign_approval(admin_keys[2], proposal))
    assert len(env.calls.seen) == 0


async def test_failed_execution_is_closed_and_audited(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    async def broken(proposal: Proposal) -> None:
        raise RuntimeError("hsm says no (secret 0xdeadbeef)")

    gov = env.governance(executors=ExecutorRegistry({ROTATE_MASTER_KEY: broken}))
    proposal = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    await gov.approve(sign_approval(admin_keys[0], proposal))
    with pytest.raises(ExecutionFailed) as info:
        await gov.approve(sign_approval(admin_keys[1], proposal))
    assert "deadbeef" not in str(info.value)
    state = gov.get(proposal.id)
    assert state.status == "failed" and state.error == "RuntimeError"
    assert env.audit.of("governance.execute", "error")
    with pytest.raises(ProposalClosed):
        await gov.approve(sign_approval(admin_keys[2], proposal))


async def test_audit_failure_before_execution_fails_closed(
    env: Env, admin_keys: list[Ed25519PrivateKey]
) -> None:
    class Down(Exception):
        pass

    calls = {"n": 0}

    async def audit(**kwargs: object) -> None:
        calls["n"] += 1
        if kwargs["operation"] == "governance.execute":
            raise Down

    gov = env.governance(audit=audit)
    proposal = await gov.propose(ROTATE_MASTER_KEY, PARAMS, proposer="admin:alice")
    await gov.approve(sign_approval(admin_keys[0], proposal))
    with pytest.raises(Down):
        await gov.approve(sign_approval(admin_keys[1], proposal))
    assert env.calls.seen == [] and gov.get(proposal.id).status == "failed"


async def test_unregistered_operation_cannot_be_proposed(env: Env) -> None:
    gov = env.governance()
    with pytest.raises(UnknownOperation):
        await gov.propose("emergency.isolate", {}, proposer="admin:alice")
    assert env.audit.of("governance.propose", "invalid")


def test_all_refusals_share_a_base() -> None:
    for error in (
        ApprovalMismatch, DuplicateApproval, InvalidApprovalSignature, ProposalClosed,
        ProposalExpired, UnknownAdmin, MalformedApproval,
    ):  # fmt: skip
        assert issubclass(error, ApprovalRefused)


def test_digest_is_the_documented_encoding(env: Env) -> None:
    import hashlib
    from datetime import UTC, datetime

    proposal = Proposal(
        id="prop_00",
        operation="backup.export",
        parameters={"b": [1, "é"], "a": None},
        kms_identity=KMS_ID,
        measurement=MEASUREMENT,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        expires_at=datetime(2026, 1, 2, tzinfo=UTC),
        proposer="admin:alice",
    )
    message = (
        '{"expires_at":1767312000000,"kms_identity":"kms-test-eu-1",'
        f'"measurement":"{MEASUREMENT.hex()}","operation":"backup.export",'
        '"parameters":{"a":null,"b":[1,"é"]},"proposal_id":"prop_00"}'
    ).encode()
    assert approval_message(proposal) == message
    expected = hashlib.sha256(b"enclave-kms/governance-approval/v1\x00" + message).digest()
    assert approval_digest(proposal) == expected
    assert Proposal.from_dict(proposal.to_dict()) == proposal


def test_floats_and_secrets_do_not_fit_parameters() -> None:
    from datetime import UTC, datetime

    from enclave.governance.errors import InvalidProposal

    with pytest.raises(InvalidProposal):
        Proposal(
            "p",
            "backup.export",
            {"x": 1.5},
            KMS_ID,
            MEASUREMENT,
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2026, 1, 2, tzinfo=UTC),
            "a",
        )


def test_approval_repr_hides_the_signature(admin_keys: list[Ed25519PrivateKey]) -> None:
    approval = Approval("prop_1", b"\x01" * 32, b"\x02" * 64)
    assert "0202" not in repr(approval) and "\\x02" not in repr(approval)
    assert Approval.from_dict(approval.to_dict()) == approval
