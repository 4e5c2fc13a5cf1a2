"""Typed errors of the KMS service layer, each with a stable problem ``type`` and status.

Grouped by who is at fault: the caller (``InvalidRequest``, ``NotFound``, ``StateConflict``,
``ConcurrentUpdate``), the caller's credentials or attestation (``AccessDenied`` from
``enclave.auth.access``, ``ReleaseRefused``, ``SharingExpired``, ``IdentityProofInvalid``),
and secret-bearing paths that fail opaquely (``DecryptionFailed``: a wrong key, version,
context, nonce or tag all end here, so the error is no oracle).

``outcome`` is the audit outcome the service records for the error. Messages name keys,
versions, principals and rules, never key material, plaintexts or encryption contexts.
"""

from __future__ import annotations

from typing import ClassVar, Literal

AuditOutcome = Literal["invalid", "denied", "error"]


class KmsError(Exception):
    """Base of every error the KMS service raises on purpose."""

    type: ClassVar[str] = "kms-error"
    title: ClassVar[str] = "The KMS could not complete the request"
    status: ClassVar[int] = 500
    outcome: ClassVar[AuditOutcome] = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def as_problem(self) -> dict[str, object]:
        return {"type": self.type, "title": self.title, "status": self.status,
                "detail": self.detail}  # fmt: skip


class InvalidRequest(KmsError):
    type = "invalid-request"
    title = "The request is malformed"
    status = 400
    outcome = "invalid"


class NotFound(KmsError):
    type = "not-found"
    title = "No such resource"
    status = 404
    outcome = "invalid"


class StateConflict(KmsError):
    """The operation is not allowed in the current state (key version state, expiry...)."""

    type = "state-conflict"
    title = "The resource's state does not allow the operation"
    status = 409
    outcome = "invalid"


class KeyUnusable(StateConflict):
    """The key version named (or the key's primary) cannot serve this operation."""

    type = "key-unusable"
    title = "The key version cannot be used for this operation"


class ConcurrentUpdate(StateConflict):
    """An optimistic update kept losing to concurrent writers; nothing was written."""

    type = "concurrent-update"
    title = "The resource changed concurrently; retry"


class DecryptionFailed(KmsError):
    """Opaque on purpose: no detail on which part (key, version, context, tag) failed."""

    type = "decryption-failed"
    title = "The ciphertext could not be decrypted"
    status = 400
    outcome = "invalid"

    def __init__(self, detail: str = "decryption failed") -> None:
        super().__init__("decryption failed")


class IdentityProofInvalid(KmsError):
    """The proof-of-possession signature over the onboarding challenge does not verify."""

    type = "identity-proof-invalid"
    title = "The identity proof is not valid"
    status = 400
    outcome = "invalid"


class ChallengeInvalid(KmsError):
    """The challenge is unknown, already used or expired."""

    type = "invalid-challenge"
    title = "The challenge is unknown, used or expired"
    status = 400
    outcome = "invalid"


class ReleaseRefused(KmsError):
    """Attested release refused: evidence, binding or release policy failed."""

    type = "release-refused"
    title = "The key is not released to this client"
    status = 403
    outcome = "denied"

    def __init__(self, detail: str, reason: str = "release-refused") -> None:
        super().__init__(detail)
        self.reason = reason


class SharingExpired(KmsError):
    type = "sharing-expired"
    title = "The sharing key has expired"
    status = 403
    outcome = "denied"


class StoredStateInvalid(KmsError):
    """A stored record did not parse: an internal fault, never the caller's."""

    type = "stored-state-invalid"
    title = "Stored KMS state is invalid"
    status = 500
    outcome = "error"
