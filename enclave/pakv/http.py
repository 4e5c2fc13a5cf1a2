"""aiohttp routes (HTTP/1.1) for the K/V key service, for the enclave app and kms-sim.

A thin adapter: every route hands a ``PakvRequest`` to the one ``PakvService`` and writes
its ``Answer`` back. No logic lives here, so this front end and the HTTP/2 one
(``h2server``) cannot disagree.
"""

from __future__ import annotations

from aiohttp import web

from enclave.http_body import read_whole
from enclave.pakv.formats import (
    CHALLENGE_PATH,
    KEY_BY_ID_PREFIX,
    PUBLIC_KEYS_ALIAS_PATH,
    PUBLIC_KEYS_PATH,
    RECENT_KEYS_PATH,
    SESSION_PATH,
    SIGNED_PUBLIC_KEYS_PATH,
)
from enclave.pakv.service import PakvRequest, PakvService
from enclave.problems import BadRequest, NotReady, RequestTimeout, problem_middleware

PAKV_SERVICE = web.AppKey("pakv_service", PakvService)


def pakv_routes(service: PakvService | None = None) -> list[web.RouteDef]:
    """The routes, bound to ``service``; without one, to ``request.app[PAKV_SERVICE]``,
    which a ``cleanup_ctx`` entry sets once the KMS runtime exists (503 before)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        current = service if service is not None else request.app.get(PAKV_SERVICE)
        if current is None:
            raise NotReady("the K/V key service is not started")
        return await _answer(current, request)

    gets = (PUBLIC_KEYS_PATH, PUBLIC_KEYS_ALIAS_PATH, SIGNED_PUBLIC_KEYS_PATH, RECENT_KEYS_PATH)
    routes = [web.get(path, handle) for path in gets]
    routes += [web.post(path, handle) for path in (CHALLENGE_PATH, SESSION_PATH)]
    routes.append(web.get(KEY_BY_ID_PREFIX + "{key_id}", handle))
    return routes


async def _answer(service: PakvService, request: web.Request) -> web.StreamResponse:
    config = service.config
    body = await _read_body(request, config.max_request_bytes, config.body_read_seconds)
    answer = await service.handle(
        PakvRequest(
            method=request.method,
            path=request.path,
            query={k: v for k, v in request.query.items()},
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            transport=f"http/{request.version.major}.{request.version.minor}",
        )
    )
    response = web.Response(status=answer.status, body=answer.body)
    for name, value in answer.all_headers():
        response.headers[name] = value
    return response


async def _read_body(request: web.Request, limit: int, seconds: float) -> bytes:
    """The whole body, or more than ``limit`` bytes of it (the service then answers 413),
    within ``seconds`` (408 after); a body that cannot be decoded (a bad
    ``Content-Encoding``) is the client's error."""
    try:
        return await read_whole(request.content, limit, declared=request.content_length,
                                seconds=seconds)  # fmt: skip
    except TimeoutError:
        raise RequestTimeout(f"the body was not received within {seconds:g} s") from None
    except web.RequestPayloadError:
        raise BadRequest("the request body cannot be read as sent") from None


def add_pakv_routes(app: web.Application, service: PakvService | None = None) -> None:
    """Mount the K/V key endpoints on an existing app. Without ``service`` (the enclave
    app, where it is made at start-up) the handlers find it under ``PAKV_SERVICE``."""
    if service is not None:
        app[PAKV_SERVICE] = service
    app.add_routes(pakv_routes(service))


def create_pakv_app(service: PakvService) -> web.Application:
    """A stand-alone app (problem+json for routing errors too)."""
    app = web.Application(
        middlewares=[problem_middleware], client_max_size=service.config.max_request_bytes
    )
    add_pakv_routes(app, service)
    return app
