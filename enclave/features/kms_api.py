"""The KMS API feature: ``KmsService`` on the bootstrapped runtime, served over HTTP.

``install(app)`` adds the API middleware (inside the problem middleware, so every answer is
problem+json), the declared routes of ``enclave.api.routes`` and a ``cleanup_ctx`` that,
once the runtime and the attested TLS identity exist:

1. builds the ``KmsService`` on the runtime's hierarchy, audit log, clock and entropy and
   on the runtime's ``SqliteStore`` (the synchronous ``Store`` the service is written
   for; see ``_service_store``), with a ``Verifier`` whose roots are the platform's
   (production) or the fake hardware's (simulation; accepted only by policies that name
   simulated roots);
2. registers the admins of the *attested* launch configuration (``quorum.admins``) as
   system administrators (level 4) when they are not yet principals, each audited as
   ``principals.bootstrap_admin``, under the id ``admin_principal_id(public key)``;
3. makes the ``TokenAuthenticator`` (audience = ``kms_id``, ``cnf`` = the attested TLS
   SPKI) and the workload sessions, and puts the ``ApiState`` on the app.

Must never: take an administrator from anything but the attested launch configuration, or
serve the API before the service has started.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from enclave.api.auth import API_STATE, ApiState, Declaration, WorkloadSessions, api_middleware
from enclave.api.routes import PREFIXES, api
from enclave.api.store import CachedReadStore
from enclave.app import CONFIG, RUNTIME, TLS_IDENTITY
from enclave.auth.principals import Level, Principal
from enclave.auth.tokens import TokenAuthenticator, spki_thumbprint
from enclave.config import EnclaveConfig
from enclave.kms.guard import SYSTEM_PRINCIPAL, AuditNote
from enclave.kms.service import KmsConfig, KmsService
from enclave.runtime import KmsRuntime
from enclave.storage.store import Store
from verifier.policy import Policy
from verifier.roots import TrustRoots
from verifier.verify import Verifier

log = logging.getLogger("enclave.features.kms_api")

# JSON bodies: a 1 MiB cap (plaintexts and messages travel as base64 inside it).
MAX_JSON_BODY_BYTES = 1024 * 1024
DECLARATIONS = web.AppKey("kms_api_declarations", dict)
KMS_SERVICE = web.AppKey("kms_service", KmsService)


def install(app: web.Application) -> None:
    declarations: dict[Callable[..., Any], Declaration] = {}
    app[DECLARATIONS] = declarations
    app.middlewares.append(api_middleware)
    api.install(app, declarations)
    app.cleanup_ctx.append(_serve_kms)


def _verifier(config: EnclaveConfig) -> tuple[Verifier, Policy]:
    if config.attestation == "hardware":
        return Verifier(TrustRoots.production()), Policy()
    from enclave.attestation.providers import simulated_device

    device = simulated_device(config.platform, config.hardware_dir)
    roots = TrustRoots.from_pem(
        {config.platform: device.roots_pem()}, simulated=True, label="kms-sim"
    )
    # Simulation: workloads attest with the same fake hardware (debug still refused).
    return Verifier(roots), Policy(allow_simulated=True)


def _service_store(runtime: KmsRuntime) -> Store:
    """The service's synchronous ``Store``: the runtime's ``SqliteStore`` with a record
    cache validated against the store's index (``enclave.api.store``). Lifecycle writes
    block the loop for one commit (WAL fsync + HSM counter; bench/bench_kms_api.py's
    ``kms_api_key_create_ms`` row); moving them off the loop would need the service's
    asyncio primitives on another loop."""
    return CachedReadStore(runtime.store.store)


ADMIN_ID_LABEL = b"kms-launch-admin-principal/v1\x00"


def admin_principal_id(public_key: bytes) -> str:
    """The principal id of a launch-configuration administrator: derived from its key, so
    the operator who wrote the configuration (``kms-sim``) knows it before the first boot."""
    return "prn_" + hashlib.sha256(ADMIN_ID_LABEL + public_key).hexdigest()[:24]


async def _register_admins(kms: KmsService, runtime: KmsRuntime) -> None:
    """Each admin of the attested launch configuration becomes a level-4 principal once
    (audited as ``principals.bootstrap_admin``; the first one is the bootstrap admin of a
    KMS with no principal yet)."""
    from enclave.governance.errors import GovernanceConfigError
    from enclave.governance.quorum import QuorumConfig

    try:
        admins = QuorumConfig.from_launch_config(runtime.policy.launch_config).admins
    except GovernanceConfigError as exc:
        log.warning("no administrator in the launch configuration: %s", exc)
        return
    directory = kms.principal_directory
    for admin in admins:
        principal_id = admin_principal_id(admin.public_key)
        if directory.get(principal_id) is not None:
            continue
        await _add_admin(kms, principal_id, admin.name, admin.public_key, runtime)
        log.info("administrator %s registered as %s (attested launch config)",
                 admin.name, principal_id)  # fmt: skip


async def _add_admin(
    kms: KmsService, principal_id: str, name: str, public_key: bytes, runtime: KmsRuntime
) -> Principal:
    note = AuditNote(details={"name": name, "principal_id": principal_id,
                              "source": "launch-config"})  # fmt: skip

    async def body(note: AuditNote) -> Principal:
        principal = Principal(
            id=principal_id, name=name, kind="admin", public_key=public_key,
            system_level=Level.SYSTEM_ADMIN, created_at=runtime.clock(),
        )  # fmt: skip
        kms.principal_directory.create(principal)
        return principal

    return await kms.guard.execute("principals.bootstrap_admin", SYSTEM_PRINCIPAL, body, note,
                                   outcome="event")  # fmt: skip


async def _serve_kms(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    identity = app[TLS_IDENTITY]
    verifier, workload_policy = _verifier(app[CONFIG])
    forget: list[Callable[[str], None]] = []

    def principal_changed(principal_id: str) -> None:
        for callback in forget:
            callback(principal_id)

    kms = KmsService(
        hierarchy=runtime.hierarchy, store=_service_store(runtime), audit=runtime.audit,
        verifier=verifier, clock=runtime.clock, entropy=runtime.entropy,
        config=KmsConfig(workload_policy=workload_policy), on_principal_change=principal_changed,
    )  # fmt: skip
    await kms.start()
    await _register_admins(kms, runtime)
    authenticator = TokenAuthenticator(
        audience=runtime.kms_id, tls_spki_der=identity.spki_der,
        principals=kms.principal_directory,
    )  # fmt: skip
    forget.append(authenticator.forget_principal)
    app[KMS_SERVICE] = kms
    app[API_STATE] = ApiState(
        kms=kms, audit=runtime.audit, authenticator=authenticator,
        sessions=WorkloadSessions(audience=runtime.kms_id, tls_spki_der=identity.spki_der,
                                  clock=time.time),
        principals=kms.principal_directory, kms_id=runtime.kms_id,
        tls_spki_sha256=spki_thumbprint(identity.spki_der), body_limit=MAX_JSON_BODY_BYTES,
        declarations=app[DECLARATIONS], prefixes=PREFIXES,
    )  # fmt: skip
    yield
