"""Approvals: an admin's Ed25519 signature over a proposal's canonical approval digest.

The approval digest (what an admin signs, offline, with ``sign_approval``)::

    approval_digest = SHA-256( "enclave-kms/governance-approval/v1" || 0x00 ||
                               canonical_json({
                                   "expires_at":   <proposal expiry, integer Unix ms>,
                                   "kms_identity": <KMS identity string>,
                                   "measurement":  <launch measurement, lower-case hex>,
                                   "operation":    <operation name>,
                                   "parameters":   <parameters object>,
                                   "proposal_id":  <proposal id>,
                               }) )

``canonical_json`` is defined in ``enclave.governance.proposals`` (sorted keys, no
whitespace, UTF-8, no floats). The signature is Ed25519 (RFC 8032, pure) over the 32 digest
bytes. The label and the 0x00 separate this digest from every other thing an admin key
might sign (a JWT, an audit checkpoint). Because every field is in the digest, a signature
over other parameters, another operation, another KMS, another measurement, another
proposal id or another expiry does not verify for this proposal.

An approval does not carry the proposal: the KMS recomputes the digest from the proposal it
stores, so the approval means exactly what the stored proposal says. The signer is named by
its public key; only a key of the attested quorum counts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave.governance.errors import (
    ApprovalMismatch,
    DuplicateApproval,
    InvalidApprovalSignature,
    MalformedApproval,
    UnknownAdmin,
)
from enclave.governance.proposals import PROPOSAL_ID_RE, Proposal, canonical_json, thaw, to_ms
from enclave.governance.quorum import (
    ED25519_PUBLIC_KEY_BYTES,
    ED25519_SIGNATURE_BYTES,
    AdminKey,
    QuorumConfig,
)

APPROVAL_LABEL = b"enclave-kms/governance-approval/v1"
DIGEST_BYTES = 32


def approval_message(proposal: Proposal) -> bytes:
    """The canonical JSON that the digest hashes (for admins who want to read it first)."""
    return canonical_json(
        {
            "expires_at": to_ms(proposal.expires_at),
            "kms_identity": proposal.kms_identity,
            "measurement": proposal.measurement.hex(),
            "operation": proposal.operation,
            "parameters": thaw(proposal.parameters),
            "proposal_id": proposal.id,
        }
    )


def approval_digest(proposal: Proposal) -> bytes:
    """The 32 bytes an admin signs to approve ``proposal`` (see the module docstring)."""
    return hashlib.sha256(APPROVAL_LABEL + b"\x00" + approval_message(proposal)).digest()


@dataclass(frozen=True)
class Approval:
    """One admin's approval of one proposal: their public key and their signature."""

    proposal_id: str
    public_key: bytes
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.proposal_id, str) or not PROPOSAL_ID_RE.fullmatch(self.proposal_id):
            raise MalformedApproval("an approval names a proposal id")
        if (
            not isinstance(self.public_key, bytes)
            or len(self.public_key) != ED25519_PUBLIC_KEY_BYTES
        ):
            raise MalformedApproval("an approval's public key is 32 bytes (Ed25519)")
        if not isinstance(self.signature, bytes) or len(self.signature) != ED25519_SIGNATURE_BYTES:
            raise MalformedApproval("an approval's signature is 64 bytes (Ed25519)")

    def to_dict(self) -> dict[str, str]:
        return {
            "proposal_id": self.proposal_id,
            "public_key": self.public_key.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Approval:
        if not isinstance(data, Mapping) or set(data) != {"proposal_id", "public_key", "signature"}:
            raise MalformedApproval("an approval has exactly proposal_id, public_key, signature")
        return cls(
            proposal_id=data["proposal_id"],
            public_key=_decode(data["public_key"], "public_key"),
            signature=_decode(data["signature"], "signature"),
        )


def sign_approval(private_key: Ed25519PrivateKey, proposal: Proposal) -> Approval:
    """The admin's side (offline): sign ``proposal``'s approval digest."""
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return Approval(proposal.id, public, private_key.sign(approval_digest(proposal)))


def check_approval(
    approval: Approval,
    proposal: Proposal,
    config: QuorumConfig,
    already: frozenset[bytes] = frozenset(),
) -> AdminKey:
    """The admin whose valid approval of ``proposal`` this is, or a typed refusal.

    Checks, in order: the approval names this proposal; the signer is an admin of the
    quorum; the admin has not approved it already (``already``: their public keys); the
    signature verifies over this proposal's approval digest. Expiry and the proposal's
    state are the caller's (``Governance``) to check.
    """
    if approval.proposal_id != proposal.id:
        raise ApprovalMismatch(
            f"the approval names proposal {approval.proposal_id}, not {proposal.id}"
        )
    admin = config.admin_for(approval.public_key)
    if admin is None:
        raise UnknownAdmin("the approval is signed by a key that is not a quorum admin's")
    if admin.public_key in already:
        raise DuplicateApproval(f"{admin.name} has already approved proposal {proposal.id}")
    if not admin.verify(approval.signature, approval_digest(proposal)):
        raise InvalidApprovalSignature(
            f"the signature of {admin.name} does not verify over proposal {proposal.id}'s "
            "approval digest"
        )
    return admin


def _decode(value: object, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise MalformedApproval(f"{name} is hex or base64 text")
    text = value.strip()
    if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", text):
        return bytes.fromhex(text)
    try:
        padded = text + "=" * (-len(text) % 4)
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedApproval(f"{name} is hex or base64 text") from None
