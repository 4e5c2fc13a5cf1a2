"""The enclave service's aiohttp application factory.

This module owns the typed application keys, the startup of the trusted resources (the
launch measurement and evidence provider, then the KMS bootstrap, then the TLS identity
made inside the enclave), the request log, and the assembly of routes and middleware. It
holds no module-level state: everything lives on the ``Application``. Routes are imported
inside ``create_app`` so the route modules can import the keys defined here.

Handlers reach the KMS's services through ``request.app[RUNTIME]`` (an
``enclave.runtime.KmsRuntime``: hierarchy, store, audit, identity, KEK, HSM, sealer,
clock). It exists only once bootstrap has completed, and ``/readyz`` answers 200 only then.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from aiohttp import web

from enclave.attestation.providers import Launch
from enclave.bootstrap import BootstrapOptions, bootstrap
from enclave.config import EnclaveConfig
from enclave.problems import Handler, problem_middleware
from enclave.runtime import KmsRuntime
from enclave.tls import TlsIdentity, create_identity

log = logging.getLogger("enclave.requests")

REQUEST_LOG_SIZE = 1024


@dataclass
class ServiceState:
    """Whether the service can take requests (``/readyz``)."""

    ready: bool = False
    draining: bool = False


class RequestRecord(NamedTuple):
    """One answered request. A named tuple, not a frozen dataclass: one is made per request,
    and a tuple is built in one call where the dataclass sets each field separately."""

    method: str
    path: str
    status: int
    at: float


@dataclass
class RequestLog:
    """What reached the enclave: a per-path count and the most recent requests.

    Tests and operators use it to show that a refused client sent nothing beyond the
    attestation request. It records paths, never query strings, headers or bodies.
    """

    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    recent: collections.deque[RequestRecord] = field(
        default_factory=lambda: collections.deque(maxlen=REQUEST_LOG_SIZE)
    )

    def record(self, method: str, path: str, status: int) -> None:
        self.counts[path] += 1
        self.recent.append(RequestRecord(method, path, status, time.time()))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def paths(self) -> list[str]:
        return [r.path for r in self.recent]


CONFIG = web.AppKey("config", EnclaveConfig)
LAUNCH = web.AppKey("launch", Launch)
RUNTIME = web.AppKey("runtime", KmsRuntime)
TLS_IDENTITY = web.AppKey("tls_identity", TlsIdentity)
SERVICE_STATE = web.AppKey("service_state", ServiceState)
REQUEST_LOG = web.AppKey("request_log", RequestLog)
EVIDENCE_GATE = web.AppKey("evidence_gate", asyncio.Semaphore)

LaunchFactory = Callable[[EnclaveConfig], Launch]


def log_request(requests: RequestLog, method: str, path: str, status: int) -> None:
    """The request log's entry for an answered request (an exception that escaped: 500)."""
    requests.record(method, path, status)
    # DEBUG: a line per request at INFO costs the hot path a formatted write each time.
    log.debug("request %s %s %d", method, path, status)


@web.middleware
async def request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request log on its own (``enclave.features.monitoring`` replaces it with one
    middleware that also keeps the metrics and the audit of every request)."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        log_request(request.app[REQUEST_LOG], request.method, request.path, status)


def _trusted_resources(
    launch_factory: LaunchFactory, options: BootstrapOptions | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        loop = asyncio.get_running_loop()
        launched = await loop.run_in_executor(None, launch_factory, config)
        app[LAUNCH] = launched
        runtime = await bootstrap(config, launched, options or BootstrapOptions())
        try:
            app[RUNTIME] = runtime
            lifetime = datetime.timedelta(days=config.limits.tls_certificate_days)
            app[TLS_IDENTITY] = await loop.run_in_executor(
                None, lambda: create_identity(launched.provider, lifetime=lifetime)
            )
            app[SERVICE_STATE].ready = True
            log.info(
                "attested TLS ready: platform=%s kms_id=%s measurement=%s certificate_sha256=%s",
                config.platform,
                runtime.kms_id,
                runtime.launch_identity.measurement.hex(),
                app[TLS_IDENTITY].certificate_sha256.hex(),
            )
            yield
        finally:
            app[SERVICE_STATE].ready = False
            await runtime.close()

    return context


async def _start_draining(app: web.Application) -> None:
    app[SERVICE_STATE].draining = True


def create_app(
    config: EnclaveConfig,
    *,
    launch_factory: LaunchFactory | None = None,
    bootstrap_options: BootstrapOptions | None = None,
) -> web.Application:
    """The enclave application. ``launch_factory`` replaces the provider choice (tests);
    ``bootstrap_options`` the bootstrap's seams (an injected HSM backend, a counter label;
    default: ``BootstrapOptions.from_environment()``, production's)."""
    from enclave.attestation.providers import launch
    from enclave.routes import attestation, health

    app = web.Application(
        middlewares=[request_log_middleware, problem_middleware],
        client_max_size=config.limits.max_request_body_bytes,
    )
    app[CONFIG] = config
    app[SERVICE_STATE] = ServiceState()
    app[REQUEST_LOG] = RequestLog()
    app[EVIDENCE_GATE] = asyncio.Semaphore(config.limits.max_pending_evidence)
    options = bootstrap_options or BootstrapOptions.from_environment()
    app.cleanup_ctx.append(_trusted_resources(launch_factory or launch, options))
    app.on_shutdown.append(_start_draining)
    app.add_routes(health.routes)
    app.add_routes(attestation.routes)
    for install in _features():
        install(app)
    return app


def _features() -> tuple[Callable[[web.Application], None], ...]:
    """The features served on top of the runtime. Each ``install(app)`` adds its routes,
    middlewares and ``cleanup_ctx`` entries (which run after the runtime's, so
    ``app[RUNTIME]`` is there) and reaches the services through ``app[RUNTIME]``."""
    from enclave.features import governance, kms_api, monitoring, pakv

    # monitoring last: its audit middleware must wrap every other feature's. governance
    # after kms_api: it authenticates with the API's tokens and acts through its service.
    return (pakv.install, kms_api.install, governance.install, monitoring.install)
