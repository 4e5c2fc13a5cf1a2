"""Every error of the KMS HTTP API as an RFC 9457 problem document with a stable type.

``problem_for`` maps the typed errors of the layers below (``enclave.kms.errors``, access
denial, token authentication, verification, audit and storage unavailability, and this
package's ``BadInput``) to one answer each. The status follows ARCHITECTURE.md (400
malformed, 401 unauthenticated, 403 denied, 404 unknown, 409 state conflict, 413 too large,
429 throttled, 503 not ready); the ``type`` slug is the error's own stable type.

Must never: put a secret, a submitted value or an unexpected exception's text in an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from enclave.api.models import BadInput
from enclave.audit.log import AuditUnavailable
from enclave.auth.access import AccessDenied
from enclave.auth.tokens import AuthenticationError
from enclave.kms.errors import KmsError
from enclave.problems import problem_response
from enclave.storage.errors import InvalidRecord, StorageError
from verifier.errors import VerificationError

_TITLES = {
    400: "The request is malformed",
    401: "The request is not authenticated",
    403: "The request is not allowed",
    404: "No such resource",
    408: "The request was not received in time",
    409: "The resource's state does not allow the operation",
    413: "The request is too large",
    503: "The service cannot take the request now",
}


@dataclass(frozen=True)
class Problem:
    status: int
    slug: str
    title: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)

    def response(self, instance: str) -> web.Response:
        return problem_response(
            self.status, self.slug, self.title, self.detail, instance=instance, headers=self.headers
        )


def problem_for(exc: BaseException) -> Problem | None:
    """The answer for a typed error, or None for an unexpected one (a 500, logged)."""
    if isinstance(exc, BadInput):
        return Problem(exc.status, exc.slug, _TITLES[exc.status], exc.detail)
    if isinstance(exc, AuthenticationError):
        return Problem(
            401, exc.type, _TITLES[401], exc.detail,
            {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{exc.type}"'},
        )  # fmt: skip
    if isinstance(exc, AccessDenied):
        return Problem(403, exc.type, _TITLES[403], exc.detail)
    if isinstance(exc, KmsError):
        return Problem(exc.status, exc.type, exc.title, exc.detail)
    if isinstance(exc, VerificationError):
        return Problem(403, exc.type, "The evidence was refused", str(exc)[:200])
    if isinstance(exc, AuditUnavailable):
        return Problem(
            503, "audit-unavailable", _TITLES[503],
            "the audit log cannot record the request; nothing was done",
            {"Retry-After": "5"},
        )  # fmt: skip
    if isinstance(exc, InvalidRecord):  # an id from the request (NUL, too long): malformed
        return Problem(400, "invalid-request", _TITLES[400], "an id in the request is malformed")
    if isinstance(exc, StorageError):
        return Problem(
            503, "storage-unavailable", _TITLES[503], "the KMS store is unavailable",
            {"Retry-After": "5"},
        )  # fmt: skip
    return None


def unauthenticated(detail: str) -> AuthenticationError:
    return AuthenticationError(detail, "unauthenticated")
