"""The K/V request-key service as an enclave feature (``install(app)``).

What it adds to the enclave app:

- the HTTP/1.1 routes of ``enclave.pakv.http`` on the main (attested TLS) listener: the
  public documents (``/.well-known/protected-auction/v1/public-keys``, its alias
  ``/v1alpha/publicKeys`` and the signed document) are public, no token; the attestation
  hand-off and the private-key fetch are for attested K/V servers;
- a ``cleanup_ctx`` entry, run after the KMS runtime's, that builds the one
  ``PakvService`` from the runtime: the ``KeySet`` persisted in the runtime's store with
  private halves wrapped under a key of the KMS hierarchy (``enclave.pakv.deployment``),
  the KMS identity key signing the public-key documents, every request audited through
  the runtime's ``AuditLog``, the release policy from the attested launch configuration;
- the rotation job: once at start (before the app serves, so the key set is never empty
  once the enclave is up) and then every ``ROTATION_INTERVAL`` (6 hours) on the house
  ``Scheduler``; each run is audited (``pakv.rotation``);
- the HTTP/2 listeners the configuration names (``EnclaveConfig.pakv_h2``: h2 over the
  enclave's attested TLS identity, ALPN ``h2``; ``pakv_h2c``: cleartext HTTP/2 with prior
  knowledge), each on a unix socket, vsock or TCP address, served by ``H2Server``.

UNSAFE test-key mode (``EnclaveConfig.unsafe_pakv_test_keys``, ``kms-enclave serve
--unsafe-pakv-test-keys``; the configuration refuses it with hardware attestation): the
service's key source is ``UnsafeTestKeySource``, the publicly known K/V test key pair (id
64), made at start; it is the only key served and the only one released (HPKE-wrapped to
attested servers under the same release policy). The real key set still rotates in the
store, unserved. A WARNING is logged at start and on every use, and every answer carries
the ``UNSAFE-TEST-KEYS`` header.

Must never: serve before the key set has been rotated once, or hand a private half to the
HTTP layer unwrapped to anything but an attested server's key (``PakvService`` does that).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from enclave.app import CONFIG, RUNTIME, TLS_IDENTITY
from enclave.config import ConfigError, ListenAddress
from enclave.identity import raw_ed25519_public
from enclave.pakv.deployment import (
    open_wrapping_key,
    release_policy_from_launch_config,
    trust_roots,
)
from enclave.pakv.h2server import H2Server
from enclave.pakv.http import PAKV_SERVICE, add_pakv_routes
from enclave.pakv.keyset import ROTATION_INTERVAL, KeySet, KeySource, RotationReport
from enclave.pakv.service import KmsIdentity, PakvService, ReleasePolicy
from enclave.pakv.unsafe_test_keys import UnsafeTestKeySource
from enclave.runtime import KmsRuntime
from enclave.scheduler import Every, Job, Scheduler
from verifier.verify import Verifier

log = logging.getLogger("enclave.features.pakv")

ROTATION_JOB = "pakv.rotation"
ROTATION_TIMEOUT_SECONDS = 300.0
SYSTEM_PRINCIPAL = "kms"


@dataclass(frozen=True)
class PakvListener:
    """One HTTP/2 listener as bound: ``tls`` (h2) or not (h2c), and where."""

    tls: bool
    address: str


@dataclass
class PakvFeature:
    """What the feature runs, for handlers, tests and operators (no secrets)."""

    keys: KeySet
    service: PakvService
    scheduler: Scheduler
    listeners: tuple[PakvListener, ...] = ()
    unsafe_test_keys: bool = False  # serving the publicly known K/V test key pair


PAKV_FEATURE = web.AppKey("pakv_feature", PakvFeature)


def install(app: web.Application) -> None:
    add_pakv_routes(app)
    app.cleanup_ctx.append(_pakv_context)


async def rotate(keys: KeySet, runtime: KmsRuntime, now: datetime) -> RotationReport:
    """One rotation run off the event loop (SQLite and the HSM counter block), audited."""
    report = await asyncio.to_thread(keys.run_rotation, now)
    await runtime.audit.record(
        principal=SYSTEM_PRINCIPAL,
        operation=ROTATION_JOB,
        outcome="event",
        details={
            "created": list(report.created),
            "destroyed": list(report.destroyed),
            "active": [r.key_id for r in keys.active(now)],
        },
    )
    return report


async def _pakv_context(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    config = app[CONFIG]
    policy = release_policy_from_launch_config(runtime.policy.launch_config)
    if policy is None:
        log.warning(
            "pakv: the launch configuration has no pakv.release_policy: every private-key "
            "fetch will be refused (public keys are served)"
        )
    platform = policy.platform if policy is not None and policy.platform else config.platform
    roots = await asyncio.to_thread(trust_roots, config, platform)
    wrapping_key = await open_wrapping_key(runtime)
    keys = KeySet(runtime.store.store, wrapping_key, kms_id=runtime.kms_id, clock=runtime.clock)
    del wrapping_key
    report = await rotate(keys, runtime, runtime.clock())
    identity = runtime.identity
    served: KeySource = keys
    if config.unsafe_pakv_test_keys:
        log.warning(
            "UNSAFE_TEST_KEYS: --unsafe-pakv-test-keys: the K/V service serves and releases "
            "ONLY the PUBLICLY KNOWN K/V test key pair (id 64); anyone can decrypt requests "
            "encrypted to it. For local interop tests with simulated attestation only."
        )
        served = UnsafeTestKeySource(runtime.kms_id, since=runtime.clock())
    service = PakvService(
        served,
        release=ReleasePolicy(policy=policy, verifier=Verifier(roots)),
        identity=KmsIdentity(
            sign=identity.sign,
            public_key=raw_ed25519_public(identity.public_key_der),
            certificate_pem=identity.certificate_pem.decode(),
        ),
        audit=runtime.audit.record,
        clock=runtime.clock,
    )

    async def rotation_job(now: datetime) -> Mapping[str, Any]:
        done = await rotate(keys, runtime, now)
        return {"created": len(done.created), "destroyed": len(done.destroyed)}

    scheduler = Scheduler(clock=runtime.clock)
    scheduler.add(
        Job(
            ROTATION_JOB,
            Every(ROTATION_INTERVAL),
            rotation_job,
            timeout=ROTATION_TIMEOUT_SECONDS,
            description="K/V request keys: make successors, destroy keys past retention",
        )
    )
    feature = PakvFeature(keys, service, scheduler, unsafe_test_keys=config.unsafe_pakv_test_keys)
    app[PAKV_SERVICE] = service
    app[PAKV_FEATURE] = feature
    servers: list[H2Server] = []
    loop_task = asyncio.create_task(scheduler.run_forever(), name="pakv-rotation")
    try:
        for address, tls in ((config.pakv_h2, True), (config.pakv_h2c, False)):
            if address is None:
                continue
            context = app[TLS_IDENTITY].server_context() if tls else None
            server = _h2_server(service, address, context)
            await server.start()
            servers.append(server)
            feature.listeners += (PakvListener(tls, server.address),)
            log.info("pakv %s listening on %s", "h2" if tls else "h2c", server.address)
        log.info(
            "pakv ready: %d active keys (created %d), release policy %s",
            len(keys.active()),
            len(report.created),
            "configured" if policy is not None else "absent (deny all)",
        )
        if config.unsafe_pakv_test_keys:
            log.warning("UNSAFE_TEST_KEYS: pakv serves only the publicly known test key (id 64)")
        yield
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        await scheduler.aclose()
        for server in reversed(servers):
            with contextlib.suppress(Exception):
                await server.stop()


def _h2_server(service: PakvService, address: ListenAddress, context: Any) -> H2Server:
    if address.kind == "unix":
        return H2Server(service, path=address.path, ssl_context=context)
    if address.kind == "tcp":
        assert address.host is not None and address.port is not None
        return H2Server(service, host=address.host, port=address.port, ssl_context=context)
    assert address.cid is not None and address.port is not None
    return H2Server(service, sock=_vsock(address.cid, address.port), ssl_context=context)


def _vsock(cid: int, port: int) -> socket.socket:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise ConfigError("this system has no AF_VSOCK support")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((cid, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
