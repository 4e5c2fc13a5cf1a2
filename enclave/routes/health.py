"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it can attest and serve).

``/readyz`` is 200 only once the bootstrap has completed (``RUNTIME`` is on the app) and
while the audit log accepts records (the KMS fails closed without it).
"""

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
    runtime = request.app.get(app_keys.RUNTIME)
    if not state.ready or runtime is None:
        raise NotReady("the service is starting", headers={"Retry-After": "1"})
    if not runtime.audit.healthy:
        raise NotReady("the audit log cannot be written", headers={"Retry-After": "5"})
    platform = request.app[app_keys.CONFIG].platform
    return web.json_response(
        {"status": "ready", "platform": platform, "kms_id": runtime.kms_id},
        headers={"Cache-Control": "no-store"},
    )
