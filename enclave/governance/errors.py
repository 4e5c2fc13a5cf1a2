"""Errors of quorum governance, grouped by who is at fault.

``ApprovalRefused`` and its subclasses: an approval (or a proposal) that the quorum rules do
not accept: an unknown signer, a bad signature, a replay, an expired or closed proposal. The
caller (an admin or their tooling) is at fault; nothing changed. ``GovernanceConfigError``:
the attested launch configuration does not describe a usable quorum. ``ExecutionFailed``:
the executor of an approved operation raised; the proposal is closed as failed and never
runs again. ``GovernanceStateError``: the persisted state is not one this code wrote.

Messages name proposal ids, operation names and admin names, never a signature's key
material or an operation's secret parameters.
"""

from __future__ import annotations


class GovernanceError(Exception):
    """Base class of every error raised by ``enclave.governance``."""

    type = "governance-error"


class GovernanceConfigError(GovernanceError, ValueError):
    """The launch configuration's quorum section is missing or malformed."""

    type = "governance-config"


class InvalidProposal(GovernanceError, ValueError):
    """A proposal's fields are outside the model (operation name, parameters, times)."""

    type = "invalid-proposal"


class UnknownOperation(InvalidProposal):
    """No executor is registered for the operation: it cannot be proposed."""

    type = "unknown-operation"


class UnknownProposal(GovernanceError, LookupError):
    """No proposal with that id exists."""

    type = "unknown-proposal"


class ApprovalRefused(GovernanceError):
    """An approval was not counted. Base class: catch this to refuse any bad approval."""

    type = "approval-refused"


class MalformedApproval(ApprovalRefused, ValueError):
    """The approval is not well-formed (sizes, encoding, fields)."""

    type = "malformed-approval"


class UnknownAdmin(ApprovalRefused):
    """The signer's public key is not one of the quorum's admins."""

    type = "unknown-admin"


class InvalidApprovalSignature(ApprovalRefused):
    """The signature does not verify over this proposal's approval digest: it was made over
    other parameters, another operation, another KMS or measurement, another proposal id or
    expiry, or it is not a signature at all."""

    type = "invalid-approval-signature"


class ApprovalMismatch(ApprovalRefused):
    """The approval names another proposal than the one it was submitted for."""

    type = "approval-mismatch"


class DuplicateApproval(ApprovalRefused):
    """This admin has already approved this proposal: each admin counts once."""

    type = "duplicate-approval"


class ProposalExpired(ApprovalRefused):
    """The proposal's expiry has passed: it can no longer be approved or executed."""

    type = "proposal-expired"


class ProposalClosed(ApprovalRefused):
    """The proposal already executed (or failed, or was interrupted): approving it again
    is a replay and is refused."""

    type = "proposal-closed"


class ProposalForeign(ApprovalRefused):
    """The proposal names another KMS identity or measurement than this instance's."""

    type = "proposal-foreign"


class ExecutionFailed(GovernanceError):
    """The executor of an approved operation raised. The proposal is closed as failed."""

    type = "execution-failed"


class GovernanceStateError(GovernanceError):
    """A persisted proposal record is not one this code wrote (or was altered)."""

    type = "governance-state"
