"""M-of-N execution of privileged operations: propose, approve, execute exactly once.

Owns the life of a proposal::

    propose ──► pending ──(M-th distinct valid approval)──► executing ──► executed
                   │                                            └───────► failed
                   └── expired (approvals refused once ``expires_at`` has passed)

The state of every proposal (the proposal, the accepted approvals, the status, the result)
is one record of kind ``governance`` in the ``Store``; every transition is a conditional
write (``expected_version``), and the transition to ``executing`` is written *before* the
executor runs. So:

* an operation executes at most once, even across a restart (a reloaded ``executing`` or
  ``executed`` proposal is closed) and across two ``Governance`` objects sharing a store
  (only one conditional write can win);
* approvals racing to be the M-th (``asyncio.gather``) are serialised by a lock and the
  conditional write: exactly one of them moves the proposal to ``executing``, the others
  find it closed (``ProposalClosed``), or count before it;
* a crash between ``executing`` and the end of the executor leaves the proposal
  ``executing`` for good: it never runs again by itself; operators see it (``get``) and
  make a new proposal after checking what happened. Exactly once is thus "once or visibly
  interrupted", never twice.

Every step is audited through the injected ``audit`` callable (``AuditLog.record``'s
keywords: principal, operation, outcome, details): ``governance.propose``,
``governance.approve`` (allowed or denied, with the refusal's type), ``governance.execute``
(event on start, allowed on success, error on failure). An audit failure propagates (fail
closed); when it strikes before the executor runs, the operation does not run and the
proposal is closed as failed.

Must never: execute an operation without M distinct valid approvals recorded first; take
the quorum from anything but the attested launch configuration; put a signature's key or a
secret in an error or an audit record (parameters are audited by digest).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from enclave.governance.approvals import Approval, approval_digest, check_approval
from enclave.governance.errors import (
    ApprovalRefused,
    ExecutionFailed,
    GovernanceConfigError,
    GovernanceStateError,
    InvalidProposal,
    ProposalClosed,
    ProposalExpired,
    ProposalForeign,
    UnknownOperation,
    UnknownProposal,
)
from enclave.governance.proposals import (
    OPERATION_RE,
    Proposal,
    canonical_json,
    from_ms,
    new_proposal_id,
    thaw,
    to_ms,
)
from enclave.governance.quorum import AdminKey, QuorumConfig
from enclave.storage.errors import VersionConflict
from enclave.storage.store import Store

log = logging.getLogger(__name__)

# The privileged operations the seed and ARCHITECTURE.md put under quorum. The app registers
# an executor for each one it supports; only registered operations can be proposed.
ROTATE_MASTER_KEY = "master_key.rotate"
EXPORT_BACKUP = "backup.export"
RESTORE_BACKUP = "backup.restore"
RELEASE_BACKUP_KEY = "backup.replicate"
CHANGE_QUORUM = "quorum.change"
CHANGE_ADMINS = "admins.change"
CHANGE_REFERENCE_MEASUREMENTS = "measurements.change"
EMERGENCY_COMPROMISE = "emergency.compromise"
EMERGENCY_ROTATE = "emergency.rotate"
EMERGENCY_ISOLATE = "emergency.isolate"
EMERGENCY_DISABLE_KEY = "emergency.disable_key"
PRIVILEGED_OPERATIONS = frozenset(
    {
        ROTATE_MASTER_KEY,
        EXPORT_BACKUP,
        RESTORE_BACKUP,
        RELEASE_BACKUP_KEY,
        CHANGE_QUORUM,
        CHANGE_ADMINS,
        CHANGE_REFERENCE_MEASUREMENTS,
        EMERGENCY_COMPROMISE,
        EMERGENCY_ROTATE,
        EMERGENCY_ISOLATE,
        EMERGENCY_DISABLE_KEY,
    }
)

STORE_KIND = "governance"
STATE_FORMAT_VERSION = 1
MAX_WRITE_RETRIES = 8
MAX_ERROR_CHARS = 200

Status = Literal["pending", "executing", "executed", "failed"]
STATUSES: tuple[Status, ...] = ("pending", "executing", "executed", "failed")
Executor = Callable[[Proposal], Awaitable[Mapping[str, Any] | None]]
AuditFn = Callable[..., Awaitable[object]]


class ExecutorRegistry:
    """Operation name -> async executor. Filled once while the app is set up."""

    def __init__(self, executors: Mapping[str, Executor] | None = None) -> None:
        self._executors: dict[str, Executor] = {}
        for name, executor in (executors or {}).items():
            self.register(name, executor)

    def register(self, operation: str, executor: Executor) -> None:
        if not isinstance(operation, str) or not OPERATION_RE.fullmatch(operation):
            raise InvalidProposal(f"{operation!r} is not an operation name")
        if operation in self._executors:
            raise InvalidProposal(f"an executor for {operation} is already registered")
        self._executors[operation] = executor

    def get(self, operation: str) -> Executor:
        try:
            return self._executors[operation]
        except KeyError:
            raise UnknownOperation(f"no executor is registered for {operation!r}") from None

    def __contains__(self, operation: object) -> bool:
        return operation in self._executors

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._executors))


@dataclass(frozen=True)
class GovernanceSettings:
    default_ttl: timedelta = timedelta(hours=24)
    max_ttl: timedelta = timedelta(days=7)
    max_pending: int = 1000


@dataclass(frozen=True)
class AcceptedApproval:
    """An approval that counted: which admin, their signature, when it was accepted."""

    admin: str
    public_key: bytes
    signature: bytes = field(repr=False)
    accepted_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "admin": self.admin,
            "public_key": self.public_key.hex(),
            "signature": self.signature.hex(),
            "accepted_at": to_ms(self.accepted_at),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AcceptedApproval:
        if set(data) != {"admin", "public_key", "signature", "accepted_at"}:
            raise ValueError("approval fields")
        at = data["accepted_at"]
        if type(at) is not int:
            raise ValueError("accepted_at")
        return cls(
            str(data["admin"]),
            bytes.fromhex(data["public_key"]),
            bytes.fromhex(data["signature"]),
            from_ms(at),
        )


@dataclass(frozen=True)
class ProposalState:
    """A proposal and where it stands. ``version`` is the store record's version."""

    proposal: Proposal
    approvals: tuple[AcceptedApproval, ...] = ()
    status: Status = "pending"
    result: Mapping[str, Any] | None = None
    error: str | None = None
    executed_at: datetime | None = None
    version: int = 0

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(a.admin for a in self.approvals)

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "v": STATE_FORMAT_VERSION,
                "proposal": self.proposal.to_dict(),
                "approvals": [a.to_dict() for a in self.approvals],
                "status": self.status,
                "result": thaw(self.result) if self.result is not None else None,
                "error": self.error,
                "executed_at": to_ms(self.executed_at) if self.executed_at else None,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, version: int) -> ProposalState:
        try:
            value = json.loads(data)
            keys = {"v", "proposal", "approvals", "status", "result", "error", "executed_at"}
            if not isinstance(value, dict) or set(value) != keys:
                raise ValueError("fields")
            if value["v"] != STATE_FORMAT_VERSION or value["status"] not in STATUSES:
                raise ValueError("version or status")
            executed_at = value["executed_at"]
            return cls(
                proposal=Proposal.from_dict(value["proposal"]),
                approvals=tuple(AcceptedApproval.from_dict(a) for a in value["approvals"]),
                status=value["status"],
                result=value["result"],
                error=value["error"],
                executed_at=from_ms(executed_at) if executed_at is not None else None,
                version=version,
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            raise GovernanceStateError("a stored proposal record is not readable") from None

    def to_dict(self) -> dict[str, Any]:
        """The public view (for the API and ``kms governance show``)."""
        return {
            "proposal": self.proposal.to_dict(),
            "approvers": list(self.approvers),
            "status": self.status,
            "result": thaw(self.result) if self.result is not None else None,
            "error": self.error,
            "executed_at": self.executed_at.isoformat() if self.executed_at else None,
        }


@dataclass(frozen=True)
class ApprovalResult:
    """What an accepted approval led to."""

    proposal_id: str
    admin: str
    approvals: int
    threshold: int
    status: Status
    result: Mapping[str, Any] | None = None

    @property
    def executed(self) -> bool:
        return self.status == "executed"


class Governance:
    """The quorum engine of one KMS instance (one per app, no globals)."""

    def __init__(
        self,
        config: QuorumConfig,
        *,
        kms_identity: str,
        measurement: bytes,
        store: Store,
        executors: ExecutorRegistry,
        audit: AuditFn,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        settings: GovernanceSettings | None = None,
    ) -> None:
        self.config = config
        self.kms_identity = kms_identity
        self.measurement = measurement
        self._store = store
        self._executors = executors
        self._audit = audit
        self._clock = clock
        self.settings = settings or GovernanceSettings()
        self._lock = asyncio.Lock()
        self.launch_config = config
        # Quorum changes approved earlier (by the quorum then in force) apply on top of the
        # attested launch quorum; a change made from another base quorum does not.
        self.config = effective_quorum(config, self.list(), kms_identity)

    # -- proposals ---------------------------------------------------------------------
    async def propose(
        self,
        operation: str,
        parameters: Mapping[str, Any],
        *,
        proposer: str,
        ttl: timedelta | None = None,
    ) -> Proposal:
        """Create a proposal for a registered operation; it expires after ``ttl``."""
        ttl = self.settings.default_ttl if ttl is None else ttl
        try:
            if operation != CHANGE_QUORUM and operation not in self._executors:
                raise UnknownOperation(f"no executor is registered for {operation!r}")
            if operation == CHANGE_QUORUM:
                parameters = self._quorum_change_parameters(parameters)
            if not timedelta(0) < ttl <= self.settings.max_ttl:
                raise InvalidProposal(f"a proposal lives at most {self.settings.max_ttl}")
            now = self._now()
            proposal = Proposal(
                id=new_proposal_id(),
                operation=operation,
                parameters=parameters,
                kms_identity=self.kms_identity,
                measurement=self.measurement,
                created_at=now,
                expires_at=now + ttl,
                proposer=proposer,
            )
            if self._pending_count(now) >= self.settings.max_pending:
                raise InvalidProposal("too many pending proposals")
        except InvalidProposal as exc:
            await self._record(
                proposer,
                "governance.propose",
                "invalid",
                {"operation": str(operation)[:64], "reason": exc.type},
            )
            raise
        await self._record(proposer, "governance.propose", "allowed", _describe(proposal))
        state = ProposalState(proposal)
        self._store.put(STORE_KIND, proposal.id, state.to_bytes(), expected_version=0)
        return proposal

    def get(self, proposal_id: str) -> ProposalState:
        record = self._store.get(STORE_KIND, proposal_id) if _id_ok(proposal_id) else None
        if record is None:
            raise UnknownProposal(f"no proposal {str(proposal_id)[:128]!r}")
        return ProposalState.from_bytes(record.value, record.version)

    def list(self) -> list[ProposalState]:
        return [self.get(ref.id) for ref in self._store.list(STORE_KIND)]

    # -- approvals ---------------------------------------------------------------------
    async def approve(
        self, approval: Approval, *, proposal_id: str | None = None
    ) -> ApprovalResult:
        """Count ``approval``; when it is the M-th distinct valid one, execute the operation.

        ``proposal_id`` is the proposal the caller submits it for (the URL's id); an
        approval naming another proposal is refused. Raises an ``ApprovalRefused`` subclass
        (nothing changed), or ``ExecutionFailed`` when the operation ran and raised.
        """
        target = proposal_id or approval.proposal_id
        async with self._lock:
            state, admin, reaching = await self._accept(approval, target)
        if not reaching:
            return ApprovalResult(
                state.proposal.id,
                admin.name,
                self._counted(state.approvals),
                self.config.threshold,
                state.status,
            )
        return await self._execute(state, admin)

    async def _accept(
        self, approval: Approval, target: str
    ) -> tuple[ProposalState, AdminKey, bool]:
        for _ in range(MAX_WRITE_RETRIES):
            now = self._now()
            try:
                state = self.get(target)
                self._check_open(state, now)
                already = frozenset(a.public_key for a in state.approvals)
                admin = check_approval(approval, state.proposal, self.config, already)
            except (ApprovalRefused, UnknownProposal) as exc:
                signer = self.config.admin_for(approval.public_key)
                principal = f"admin:{signer.name}" if signer else "unknown-signer"
                await self._record(
                    principal,
                    "governance.approve",
                    "denied",
                    {"proposal_id": target[:128], "reason": exc.type},
                )
                raise
            accepted = AcceptedApproval(admin.name, admin.public_key, approval.signature, now)
            approvals = (*state.approvals, accepted)
            # Only approvals by admins of the quorum now in force count (after a quorum
            # change, a removed admin's earlier approval no longer does).
            counted = self._counted(approvals)
            reaching = counted >= self.config.threshold
            new_state = replace(
                state, approvals=approvals, status="executing" if reaching else "pending"
            )
            try:
                version = self._store.put(
                    STORE_KIND, target, new_state.to_bytes(), expected_version=state.version
                )
            except VersionConflict:
                continue  # another writer moved the proposal: re-read, re-check
            new_state = replace(new_state, version=version)
            details = {
                **_describe(state.proposal),
                "approvals": counted,
                "threshold": self.config.threshold,
            }
            try:
                await self._record(f"admin:{admin.name}", "governance.approve", "allowed", details)
                if reaching:
                    await self._record(
                        f"admin:{admin.name}",
                        "governance.execute",
                        "event",
                        {**details, "phase": "start"},
                    )
            except BaseException:
                if reaching:
                    # Fail closed: no audited start, no execution, and never later either.
                    self._finish(new_state, "failed", None, "audit unavailable")
                raise
            return new_state, admin, reaching
        raise GovernanceStateError(f"proposal {target} kept changing under this writer")

    def _check_open(self, state: ProposalState, now: datetime) -> None:
        proposal = state.proposal
        if proposal.kms_identity != self.kms_identity or proposal.measurement != self.measurement:
            raise ProposalForeign(f"proposal {proposal.id} is for another KMS or measurement")
        if state.status != "pending":
            raise ProposalClosed(f"proposal {proposal.id} is {state.status}: no more approvals")
        if proposal.is_expired(now):
            raise ProposalExpired(f"proposal {proposal.id} expired at {proposal.expires_at}")

    # -- execution ---------------------------------------------------------------------
    async def _execute(self, state: ProposalState, admin: AdminKey) -> ApprovalResult:
        proposal = state.proposal
        details = _describe(proposal)
        try:
            raw_result: Mapping[str, Any] | None
            if proposal.operation == CHANGE_QUORUM and CHANGE_QUORUM not in self._executors:
                raw_result = self._change_quorum(proposal)
            else:
                raw_result = await self._executors.get(proposal.operation)(proposal)
        except asyncio.CancelledError:
            self._finish(state, "failed", None, "cancelled")
            await self._record(
                "kms", "governance.execute", "error", {**details, "error": "cancelled"}
            )
            raise
        except Exception as exc:
            error = type(exc).__name__
            self._finish(state, "failed", None, error)
            await self._record("kms", "governance.execute", "error", {**details, "error": error})
            raise ExecutionFailed(
                f"operation {proposal.operation} of proposal {proposal.id} failed ({error})"
            ) from None
        result = _json_result(raw_result)
        counted, threshold = self._counted(state.approvals), self.config.threshold
        self._finish(state, "executed", result, None)
        await self._record(
            "kms",
            "governance.execute",
            "allowed",
            {**details, "approvers": [a.admin for a in state.approvals]},
        )
        return ApprovalResult(proposal.id, admin.name, counted, threshold, "executed", result)

    def _finish(
        self,
        state: ProposalState,
        status: Status,
        result: Mapping[str, Any] | None,
        error: str | None,
    ) -> None:
        final = replace(
            state,
            status=status,
            result=result,
            error=error[:MAX_ERROR_CHARS] if error else None,
            executed_at=self._now(),
        )
        # Only this writer moved the proposal to "executing", so its version still holds.
        self._store.put(
            STORE_KIND, state.proposal.id, final.to_bytes(), expected_version=state.version
        )

    # -- quorum changes ------------------------------------------------------------------
    def _quorum_change_parameters(self, parameters: Mapping[str, Any]) -> Mapping[str, Any]:
        """``{"threshold", "admins", "from"}``; ``from`` (the digest of the quorum being
        replaced) is filled in when absent and must name the quorum now in force."""
        if not isinstance(parameters, Mapping):
            raise InvalidProposal("quorum.change parameters are an object")
        unknown = set(parameters) - {"threshold", "admins", "from"}
        if unknown:
            raise InvalidProposal(f"unknown quorum.change field(s): {', '.join(sorted(unknown))}")
        current = self.config.config_digest()
        base = parameters.get("from", current)
        if base != current:
            raise InvalidProposal("quorum.change names another quorum than the one in force")
        _new_quorum(parameters)
        return {**parameters, "from": current}

    def _change_quorum(self, proposal: Proposal) -> Mapping[str, Any]:
        if proposal.parameters.get("from") != self.config.config_digest():
            raise InvalidProposal("the quorum changed since this proposal was made")
        new = _new_quorum(proposal.parameters)
        self.config = new
        return {
            "quorum": new.config_digest(),
            "threshold": new.threshold,
            "admins": [a.name for a in new.admins],
        }

    # -- helpers -------------------------------------------------------------------------
    def _counted(self, approvals: Iterable[AcceptedApproval]) -> int:
        return sum(1 for a in approvals if self.config.admin_for(a.public_key) is not None)

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the governance clock must return timezone-aware datetimes")
        return now

    def _pending_count(self, now: datetime) -> int:
        refs = self._store.list(STORE_KIND)
        if len(refs) < self.settings.max_pending:
            return len(refs)
        states = (self.get(ref.id) for ref in refs)
        return sum(1 for s in states if s.status == "pending" and not s.proposal.is_expired(now))

    async def _record(
        self, principal: str, operation: str, outcome: str, details: Mapping[str, Any]
    ) -> None:
        await self._audit(
            principal=principal,
            operation=operation,
            outcome=outcome,
            details={"kms_id": self.kms_identity, **details},
        )


def _new_quorum(parameters: Mapping[str, Any]) -> QuorumConfig:
    body = {k: thaw(v) for k, v in parameters.items() if k != "from"}
    try:
        return QuorumConfig.from_launch_config({"quorum": body})
    except GovernanceConfigError as exc:
        raise InvalidProposal(f"quorum.change: {exc}") from None


def effective_quorum(
    launch: QuorumConfig, states: Iterable[ProposalState], kms_identity: str
) -> QuorumConfig:
    """The quorum in force: the attested launch quorum, then every executed
    ``quorum.change`` of this KMS in execution order whose ``from`` names the quorum then in
    force and whose approvals (re-verified) reach that quorum's threshold. A change from
    another base (e.g. made before a relaunch with a new attested quorum) ends the replay."""
    changes = sorted(
        (
            s
            for s in states
            if s.status == "executed"
            and s.proposal.operation == CHANGE_QUORUM
            and s.proposal.kms_identity == kms_identity
        ),
        key=lambda s: (s.executed_at or s.proposal.created_at, s.proposal.id),
    )
    config = launch
    for state in changes:
        if state.proposal.parameters.get("from") != config.config_digest():
            break
        digest = approval_digest(state.proposal)
        signers = {
            a.public_key
            for a in state.approvals
            if (admin := config.admin_for(a.public_key)) and admin.verify(a.signature, digest)
        }
        if len(signers) < config.threshold:
            raise GovernanceStateError(
                f"stored quorum change {state.proposal.id} lacks valid approvals"
            )
        config = _new_quorum(state.proposal.parameters)
    return config


def _describe(proposal: Proposal) -> dict[str, Any]:
    return {
        "proposal_id": proposal.id,
        "operation": proposal.operation,
        "parameters_sha256": hashlib.sha256(proposal.canonical_parameters()).hexdigest(),
        "expires_at": proposal.expires_at.isoformat(),
    }


def _json_result(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if value is None:
        return None
    try:
        canonical_json(value)
    except InvalidProposal:
        return {"note": "the executor returned a value that is not canonical JSON"}
    return {str(k): v for k, v in value.items()}


def _id_ok(proposal_id: object) -> bool:
    from enclave.governance.proposals import PROPOSAL_ID_RE

    return isinstance(proposal_id, str) and PROPOSAL_ID_RE.fullmatch(proposal_id) is not None
