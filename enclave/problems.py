"""Problem details (RFC 9457) for every HTTP error the enclave answers.

This module owns the problem ``type`` namespace, the typed ``ProblemError`` exceptions that
handlers raise, and the middleware that turns every error (a typed problem, an aiohttp HTTP
exception such as an unknown route, or an unexpected exception) into an
``application/problem+json`` answer. It never puts secrets, stack traces or exception text
of unexpected errors into an answer: those are logged inside the enclave only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"
# Stable problem types are this prefix plus a short slug ("invalid-nonce", "not-found").
PROBLEM_TYPE_PREFIX = "https://enclave-kms.dev/problems/"

log = logging.getLogger("enclave.problems")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_type(slug: str) -> str:
    return PROBLEM_TYPE_PREFIX + slug


def problem_slug(type_uri: str) -> str:
    """The slug of a problem type URI (accepts a bare slug too)."""
    return type_uri.removeprefix(PROBLEM_TYPE_PREFIX)


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str | None = None,
    *,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"type": problem_type(slug), "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    for key, value in (extensions or {}).items():
        if key not in body:
            body[key] = value
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=dict(headers or {}),
    )


class ProblemError(Exception):
    """Base of the errors a handler raises to answer with a problem document."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})

    def response(self, instance: str | None = None) -> web.Response:
        return problem_response(
            self.status,
            self.slug,
            self.title,
            self.detail,
            instance=instance,
            headers=self.headers,
            extensions=self.extensions,
        )


class BadRequest(ProblemError):
    status = 400
    slug = "bad-request"
    title = "The request is malformed"


class InvalidNonce(BadRequest):
    slug = "invalid-nonce"
    title = "The nonce must be exactly 32 bytes, hex encoded"


class NotFound(ProblemError):
    status = 404
    slug = "not-found"
    title = "No such resource"


class RequestTimeout(ProblemError):
    status = 408
    slug = "request-timeout"
    title = "The request was not received in time"


class PayloadTooLarge(ProblemError):
    status = 413
    slug = "payload-too-large"
    title = "The request is too large"


class TooManyRequests(ProblemError):
    status = 429
    slug = "too-many-requests"
    title = "Too many requests; retry later"


class NotReady(ProblemError):
    status = 503
    slug = "not-ready"
    title = "The service is not ready"


class AttestationUnavailable(ProblemError):
    status = 503
    slug = "attestation-unavailable"
    title = "Evidence could not be produced"


# aiohttp raises these for routing and protocol failures; each gets a stable slug.
_HTTP_EXCEPTION_SLUGS: dict[int, str] = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    414: "uri-too-long",
    415: "unsupported-media-type",
    429: "too-many-requests",
    431: "headers-too-large",
}


_KEPT_HEADERS = ("allow", "retry-after", "cache-control")


def _from_http_exception(exc: web.HTTPException, instance: str) -> web.StreamResponse:
    status = exc.status
    slug = _HTTP_EXCEPTION_SLUGS.get(status, f"http-{status}")
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else exc.reason
    headers = {k: v for k, v in exc.headers.items() if k.lower() in _KEPT_HEADERS}
    detail = None
    if status == 404:
        detail = f"no resource at {instance}"
    elif status == 405:
        detail = f"allowed methods: {exc.headers.get('Allow', '')}"
    return problem_response(status, slug, title, detail, instance=instance, headers=headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error with problem+json: typed problems, HTTP errors, and crashes."""
    instance = request.path
    try:
        response = await handler(request)
    except ProblemError as exc:
        return exc.response(instance)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc, instance)
    except Exception:
        log.exception("unhandled error answering %s %s", request.method, instance)
        return problem_response(500, "internal-error", "Internal error", instance=instance)
    # A handler returned a bare error response: keep the status, give it a problem body.
    if (
        response.status >= 400
        and response.content_type != PROBLEM_CONTENT_TYPE
        and isinstance(response, web.Response)
        and not response.prepared
    ):
        kept = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
        return problem_response(
            response.status,
            _HTTP_EXCEPTION_SLUGS.get(response.status, f"http-{response.status}"),
            response.reason,
            instance=instance,
            headers=kept,
        )
    return response
