"""Typed client errors, grouped by who is at fault, each with a stable ``type`` slug.

* ``AttestationRefused``: the endpoint did not prove it is the enclave the profile trusts
  (nothing but the attestation request was sent to it). Its ``type`` names the failed check.
* ``TransportError``: the endpoint could not be reached or the connection was lost.
* ``ServerError``: the enclave answered with a problem document (``status``, ``type``).
* ``ProfileError`` / ``UsageError``: the caller's profile or request is unusable.

``as_problem()`` renders any of them as an RFC 9457 problem document for ``--json`` output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PROBLEM_TYPE_PREFIX = "https://enclave-kms.dev/problems/"

# Stable AttestationRefused types (besides the verifier's own: bad-chain, bad-signature...).
BINDING_MISMATCH = "binding-mismatch"
STALE_EVIDENCE = "stale-evidence"
POLICY_VIOLATION = "policy-violation"
PLATFORM_MISMATCH = "platform-mismatch"
MALFORMED_ANSWER = "malformed-attestation"
PIN_MISMATCH = "certificate-pin-mismatch"
INVALID_TOKEN = "invalid-token"  # noqa: S105 - a problem type, not a secret


class KmsError(Exception):
    """Base of every error the client raises."""

    type: str = "kms-error"
    title: str = "The KMS request failed"
    status: int | None = None

    def __init__(self, detail: str, *, endpoint: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.endpoint = endpoint

    def as_problem(self) -> dict[str, Any]:
        problem: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.type,
            "title": self.title,
            "detail": self.detail,
        }
        if self.status is not None:
            problem["status"] = self.status
        if self.endpoint:
            problem["instance"] = self.endpoint
        return problem

    def __str__(self) -> str:
        return self.detail


class ProfileError(KmsError):
    type = "invalid-profile"
    title = "The client profile is invalid"


class UsageError(KmsError):
    type = "usage-error"
    title = "The request is invalid"


class AttestationRefused(KmsError):
    """The endpoint failed attestation; the client sent it nothing else.

    ``type`` is the failed check: ``binding-mismatch`` (evidence not bound to this TLS
    key), ``stale-evidence`` (not bound to the fresh nonce: a replay), ``policy-violation``
    (genuine evidence of a platform state the policy refuses; ``mismatches`` lists each),
    ``platform-mismatch``, ``malformed-attestation``, ``invalid-token`` (remote verifier),
    or the verifier's own type (``bad-chain``, ``bad-signature``, ``expired``...).
    """

    title = "The endpoint failed attestation"

    def __init__(
        self,
        type: str,
        detail: str,
        *,
        endpoint: str | None = None,
        mismatches: Sequence[Mapping[str, str]] = (),
    ) -> None:
        super().__init__(detail, endpoint=endpoint)
        self.type = type
        self.mismatches = tuple(dict(m) for m in mismatches)

    def as_problem(self) -> dict[str, Any]:
        problem = super().as_problem()
        if self.mismatches:
            problem["mismatches"] = list(self.mismatches)
        return problem

    def __str__(self) -> str:
        return f"attestation refused ({self.type}): {self.detail}"


class TransportError(KmsError):
    """The endpoint could not be reached, or the connection broke (retryable)."""

    type = "unreachable"
    title = "The endpoint could not be reached"


class ServerError(KmsError):
    """The enclave answered with an error (a problem document)."""

    title = "The KMS answered with an error"

    def __init__(
        self,
        status: int,
        problem: Mapping[str, Any] | None,
        *,
        endpoint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        problem = dict(problem or {})
        detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        super().__init__(detail, endpoint=endpoint)
        self.status = status
        self.problem = problem
        raw_type = str(problem.get("type") or f"http-{status}")
        self.type = raw_type.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        self.retry_after = retry_after

    def as_problem(self) -> dict[str, Any]:
        return dict(self.problem) or super().as_problem()

    def __str__(self) -> str:
        return f"HTTP {self.status} ({self.type}): {self.detail}"


class AllEndpointsFailed(TransportError):
    """Every endpoint of the profile was tried and none could serve the request."""

    type = "all-endpoints-failed"
    title = "No endpoint could serve the request"

    def __init__(self, errors: Sequence[KmsError]) -> None:
        self.errors = tuple(errors)
        summary = "; ".join(f"{e.endpoint or '?'}: {e}" for e in self.errors) or "no endpoints"
        super().__init__(f"no endpoint could serve the request: {summary}")
