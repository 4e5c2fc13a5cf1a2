"""Typed verification errors, one class per failure mode.

Each class carries a stable ``type`` string that the CLI and the HTTP endpoint report
unchanged (the HTTP layer prefixes it into a problem+json ``type`` URI). Errors are grouped
by who is at fault: ``EvidenceError`` (the evidence or its certificates are bad),
``CollateralError`` (the endorsements given with it are bad or stale), ``PolicyViolation``
(genuine evidence that does not meet the relying party's policy) and ``UsageError`` (the
caller asked for something impossible). Messages never contain secrets: evidence is public.
"""

from __future__ import annotations

from dataclasses import dataclass


class VerificationError(Exception):
    """Base of every error the verifier raises on its inputs."""

    type: str = "verification-error"
    title: str = "Evidence verification failed"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def as_dict(self) -> dict[str, object]:
        return {"type": self.type, "detail": self.detail}


class EvidenceError(VerificationError):
    """The evidence, or a certificate that endorses it, is not acceptable."""


class MalformedEvidence(EvidenceError):
    type = "malformed-evidence"
    title = "The evidence could not be parsed"


class UnsupportedEvidence(EvidenceError):
    type = "unsupported-evidence"
    title = "The evidence is of a kind this verifier does not accept"


class MissingCertificate(EvidenceError):
    type = "missing-certificate"
    title = "A certificate needed to verify the evidence was not given"


class MalformedCertificate(EvidenceError):
    type = "malformed-certificate"
    title = "A certificate could not be parsed"


class BadSignature(EvidenceError):
    type = "bad-signature"
    title = "A signature over the evidence does not verify"


class BadCertificateChain(EvidenceError):
    type = "bad-chain"
    title = "The certificate chain does not lead to a trusted root"


class CertificateMismatch(EvidenceError):
    type = "certificate-mismatch"
    title = "A certificate does not describe this evidence"


class Expired(EvidenceError):
    type = "expired"
    title = "A certificate or document is not valid at the verification time"


class Revoked(EvidenceError):
    type = "revoked"
    title = "A certificate in the chain is revoked"


class ReportDataMismatch(EvidenceError):
    type = "report-data-mismatch"
    title = "The evidence is not bound to the expected data"


class CollateralError(VerificationError):
    """Endorsements (CRLs, TCB info, QE identity) are malformed, forged or stale."""

    type = "bad-collateral"
    title = "The collateral could not be verified"


class CollateralExpired(CollateralError):
    type = "collateral-expired"
    title = "The collateral is not valid at the verification time"


@dataclass(frozen=True)
class Mismatch:
    """One policy check that failed: the field, what was seen and what was expected."""

    field: str
    seen: str
    expected: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "seen": self.seen, "expected": self.expected}

    def __str__(self) -> str:
        return f"{self.field}: saw {self.seen}, expected {self.expected}"


class PolicyViolation(VerificationError):
    """Genuine evidence that does not meet the policy. Lists every mismatch at once."""

    type = "policy-violation"
    title = "The evidence does not meet the policy"

    def __init__(self, mismatches: list[Mismatch]) -> None:
        if not mismatches:
            raise ValueError("a policy violation needs at least one mismatch")
        self.mismatches = tuple(mismatches)
        super().__init__("; ".join(str(m) for m in mismatches))

    def as_dict(self) -> dict[str, object]:
        return {
            "type": self.type,
            "detail": self.detail,
            "mismatches": [m.as_dict() for m in self.mismatches],
        }


class UsageError(VerificationError):
    """The caller's request cannot be honoured (unknown platform, bad policy file...)."""

    type = "usage-error"
    title = "The verification request is invalid"


class InvalidPolicy(UsageError):
    type = "invalid-policy"
    title = "The policy is invalid"


ALL_ERROR_TYPES: tuple[type[VerificationError], ...] = (
    MalformedEvidence,
    UnsupportedEvidence,
    MissingCertificate,
    MalformedCertificate,
    BadSignature,
    BadCertificateChain,
    CertificateMismatch,
    Expired,
    Revoked,
    ReportDataMismatch,
    CollateralError,
    CollateralExpired,
    PolicyViolation,
    UsageError,
    InvalidPolicy,
)
