"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it can attest and serve)."""

from __future__ import annotations

from aiohttp import web

from enclave import app as app_keys
from enclave.problems import NotReady

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    state = request.app[app_keys.SERVICE_STATE]
    if state.draining:
        raise NotReady("the service is shutting down", headers={"Retry-After": "1"})
    if not state.ready:
        raise NotReady("the service is starting", headers={"Retry-After": "1"})
    platform = request.app[app_keys.CONFIG].platform
    return web.json_response(
        {"status": "ready", "platform": platform}, headers={"Cache-Control": "no-store"}
    )
