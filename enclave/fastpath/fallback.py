"""aiohttp's request handlers for what the fast path does not serve, answering a message
that does not parse as HTTP/1.1 with a problem document.

aiohttp answers a request it cannot parse (a bad header line, an unknown method, a bad
``Content-Length``, a line too long...) itself, before any middleware runs: in text/plain,
quoting the offending line, and it logs the parser's message, which quotes the line too.
That line may be the ``Authorization`` header, so a bearer token would reach the enclave's
log. ``ProblemRequestHandler`` answers the same status as problem+json that quotes nothing,
logs the kind of error only, and closes the connection, as aiohttp does.

Such a message names no operation and no caller, so it is logged, not audited: bytes that
are not HTTP, from anyone, cannot be made to fill the durable audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from enclave.problems import problem_response

log = logging.getLogger("enclave.fastpath")

_SLUGS = {
    HTTPStatus.BAD_REQUEST: "malformed-http",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "payload-too-large",
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: "headers-too-large",
    HTTPStatus.NOT_IMPLEMENTED: "not-implemented",
    HTTPStatus.GATEWAY_TIMEOUT: "timeout",
}
_DETAILS = {
    HTTPStatus.BAD_REQUEST: "the request is not a valid HTTP/1.1 message",
    HTTPStatus.INTERNAL_SERVER_ERROR: "the request could not be processed",
}


class ProblemRequestHandler(RequestHandler):
    """aiohttp's ``RequestHandler`` with problem+json answers to what it cannot parse."""

    __slots__ = ()  # nothing added: ``problem_handlers`` turns aiohttp's handlers into this

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = type(exc).__name__ if exc is not None else "no exception"
        if status >= 500:  # an error of ours, not the caller's: the traceback, in the enclave
            log.error("request failed with %d (%s)", status, kind, exc_info=exc)
        else:  # the parser's message quotes the request: never logged
            log.warning("malformed HTTP request refused with %d (%s)", status, kind)
        if request.writer.output_size > 0:  # an answer was under way: the connection is cut
            raise ConnectionError("an answer was already being sent")
        code = HTTPStatus(status)
        response = problem_response(
            status,
            _SLUGS.get(code, "malformed-http" if status < 500 else "internal-error"),
            code.phrase,
            _DETAILS.get(code, code.description),
        )
        response.force_close()
        return response


def problem_handlers(server: web.Server) -> Callable[[], RequestHandler]:
    """``server``'s protocol factory (aiohttp's ``AppRunner.server``), its handlers
    ``ProblemRequestHandler``s. aiohttp builds each handler with settings it keeps to
    itself; the subclass adds no state, so the handler it built becomes one."""

    def make() -> RequestHandler:
        handler = server()
        handler.__class__ = ProblemRequestHandler
        return handler

    return make
