"""The governance feature: quorum-approved privileged operations, backup, restore,
cross-region replication and the emergency procedures, served over HTTP.

``install(app)`` adds the routes below, an ``on_startup`` step that runs *before* the
bootstrap (it swaps in the audit log of a restore completed before the restart,
``enclave.backup.state.finish_pending_restore``), and a ``cleanup_ctx`` that, once the
runtime and the KMS API exist, builds the ``GovernanceFeature`` (``app[GOVERNANCE]``):

* ``Governance`` over the runtime's store and audit log, with the quorum (N admins, the
  threshold M) of the *attested* launch configuration (``quorum``) and an executor for
  each privileged operation: ``master_key.rotate``, ``backup.export``, ``backup.restore``,
  ``quorum.change`` (built in; ``admins.change`` is proposed as a ``quorum.change`` that
  keeps the threshold), ``measurements.change``, ``emergency.compromise``,
  ``emergency.rotate``, ``emergency.isolate``, ``emergency.disable_key``;
* the backup shelf (``DATA/backups``: bundles, and each bundle's backup key sealed to this
  launch for attested replication), the custodians of the launch configuration
  (``backup``), the restore staging area and recipient key (``enclave.backup.recovery``);
* the replication primary (attested release of backup keys to secondaries whose evidence
  meets the reference measurements: this enclave's own measurement plus those added by
  ``measurements.change``) and, when the launch configuration names a primary
  (``replication.primary``), the secondary's pull loop;
* the jobs, on the monitoring feature's scheduler (``app[MONITORING].scheduler``, wired by
  the monitoring engineer): ``backup.verify`` daily (verifies the newest bundle and raises a
  Critical alert when it fails or is older than ``MAX_BACKUP_AGE``) and, on a secondary,
  ``replication.pull``.

Routes (level 4, system administration, through the KMS API's own token authentication;
refusals are audited by the monitoring feature's gap records)::

    POST /v1/governance/proposals                 propose {operation, parameters, ttl_seconds}
    GET  /v1/governance/proposals                 list
    GET  /v1/governance/proposals/{id}            show (with the approval digest to sign)
    POST /v1/governance/proposals/{id}/approvals  approve {proposal_id, public_key, signature}
    GET  /v1/backup/identity                      the identity key that signs bundles
    GET  /v1/backup/bundles[/{backup_id}]         list / download (application/octet-stream)
    GET  /v1/backup/status                        the last verification
    PUT  /v1/backup/restore/bundles/{backup_id}   stage a bundle to restore
    GET  /v1/backup/restore/recipient?nonce=HEX   the attested recipient key for shares
    POST /v1/backup/restore/shares                a share sealed to the recipient key

and, for secondaries (their authority is their attestation, not a token)::

    POST /v1/replication/challenge                a single-use challenge
    POST /v1/replication/release                  {backup_id, request}: the wrapped key
    GET  /v1/replication/bundles/latest           the newest bundle (signed, encrypted)

Must never: run a privileged operation without M valid approvals (``Governance`` decides),
release a backup key without verified evidence meeting the reference measurements, or
serve a proposal, a bundle or a share in a form that holds a secret in the clear.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as daytime
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from enclave.api.auth import API_STATE, CALLER_KEY, authenticate
from enclave.api.errors import Problem, problem_for, unauthenticated
from enclave.api.models import BadInput, parse_json
from enclave.app import CONFIG, RUNTIME
from enclave.auth.access import AccessDenied
from enclave.auth.principals import PRINCIPAL_ID_PATTERN, Level, Principal
from enclave.auth.tokens import AuthenticationError
from enclave.backup.bundle import BackupKey, BundleCheck, verify_stored_bundles
from enclave.backup.custodians import custodian_policy_from_config
from enclave.backup.errors import (
    BackupError,
    BundleInvalid,
    CustodianError,
    ReplicationRefused,
    RestoreFailed,
)
from enclave.backup.manifest import BACKUP_ID_RE
from enclave.backup.recovery import RestoreRecipient, StagedRestore
from enclave.backup.replication import ReplicationPrimary, ReplicationRequest
from enclave.backup.shelf import BackupShelf, ReplicaPuller
from enclave.backup.state import (
    GOVERNANCE_CONFIG_KIND,
    bundle_digest,
    export_state,
    finish_pending_restore,
    identity_public_key,
    restore_state,
)
from enclave.config import EnclaveConfig
from enclave.emergency.response import EmergencyService
from enclave.governance.approvals import Approval, approval_digest, approval_message
from enclave.governance.errors import (
    ApprovalMismatch,
    DuplicateApproval,
    ExecutionFailed,
    GovernanceConfigError,
    GovernanceError,
    InvalidProposal,
    MalformedApproval,
    ProposalClosed,
    ProposalExpired,
    UnknownProposal,
)
from enclave.governance.operations import (
    CHANGE_ADMINS,
    CHANGE_QUORUM,
    CHANGE_REFERENCE_MEASUREMENTS,
    EMERGENCY_COMPROMISE,
    EMERGENCY_DISABLE_KEY,
    EMERGENCY_ISOLATE,
    EMERGENCY_ROTATE,
    EXPORT_BACKUP,
    RESTORE_BACKUP,
    ROTATE_MASTER_KEY,
    ExecutorRegistry,
    Governance,
    ProposalState,
)
from enclave.governance.proposals import Proposal, thaw
from enclave.governance.quorum import QuorumConfig
from enclave.kms import persist
from enclave.kms.service import KmsService
from enclave.problems import ProblemError, problem_response
from enclave.runtime import KmsRuntime
from enclave.sealing.providers.quorum import QuorumPolicy
from verifier.policy import Policy, ReferenceMeasurement
from verifier.roots import TrustRoots
from verifier.verify import Verifier

log = logging.getLogger("enclave.features.governance")

MAX_BUNDLE_UPLOAD_BYTES = 256 * 1024 * 1024
MAX_JSON_BYTES = 256 * 1024
MAX_BACKUP_AGE = timedelta(days=2)
VERIFY_AT = daytime(3, 30)
REFERENCE_MEASUREMENTS_ID = "reference_measurements"
_KEY_ID_RE = re.compile(r"key_[0-9a-f]{32}")
_HEX_RE = re.compile(r"[0-9a-f]+")

Executor = Callable[[Proposal], Awaitable[Mapping[str, Any] | None]]


# -- the feature's state --------------------------------------------------------------------------


@dataclass
class GovernanceFeature:
    """Everything this feature runs on, for one application (``app[GOVERNANCE]``)."""

    runtime: KmsRuntime
    governance: Governance | None
    unavailable: str | None
    custodians: QuorumPolicy | None
    shelf: BackupShelf
    staged: StagedRestore
    recipient: RestoreRecipient
    replication: ReplicationPrimary
    emergency: EmergencyService | None
    raise_alert: Callable[[str, str], None]
    puller: ReplicaPuller | None = None
    last_verification: tuple[BundleCheck, ...] = ()
    last_verified_at: datetime | None = None
    restored: str | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def require_governance(self) -> Governance:
        if self.governance is None:
            raise _Unavailable(self.unavailable or "governance is not configured")
        if self.restored is not None:
            raise _Unavailable(
                f"backup {self.restored} was restored into this instance: restart the KMS"
            )
        return self.governance

    def reference_measurements(self) -> list[dict[str, str]]:
        record = self.runtime.store.store.get(GOVERNANCE_CONFIG_KIND, REFERENCE_MEASUREMENTS_ID)
        if record is None:
            return []
        value = json.loads(record.value)
        return [dict(m) for m in value.get("measurements", [])]

    def replication_policy(self) -> Policy:
        own = self.runtime.launch_identity.measurement
        measurements = [ReferenceMeasurement("self", own)]
        for entry in self.reference_measurements():
            measurements.append(ReferenceMeasurement(entry["name"], bytes.fromhex(entry["value"])))
        return Policy(
            platform=self.runtime.config.platform,
            measurements=tuple(measurements),
            allow_simulated=self.runtime.config.attestation == "simulated",
        )

    async def verify_latest(self) -> Mapping[str, Any]:
        """The daily job: verify the newest bundle; alert when it fails or is too old."""
        newest = self.shelf.latest()
        now = self.runtime.clock()
        self.last_verified_at = now
        if newest is None:
            self.last_verification = ()
            self.raise_alert("backup-missing", "no backup bundle exists on this KMS")
            return {"bundles": 0}
        checks = await verify_stored_bundles(
            [(newest, self.shelf.bundle(newest))],
            identity_public_key(self.runtime),
            audit=self.runtime.audit.record,
            kms_identity=self.runtime.kms_id,
        )
        self.last_verification = checks
        failed = [c for c in checks if not c.ok]
        if failed:
            self.raise_alert(
                "backup-verification-failed",
                f"backup {newest} failed verification ({failed[0].error})",
            )
        elif checks and checks[0].created_at and now - checks[0].created_at > MAX_BACKUP_AGE:
            self.raise_alert("backup-stale", f"the newest backup {newest} is older than 2 days")
        return {"bundles": len(checks), "failed": len(failed), "newest": newest}


GOVERNANCE = web.AppKey("governance_feature", GovernanceFeature)


class _Unavailable(ProblemError):
    status = 503
    slug = "governance-unavailable"
    title = "Governance is not available"


class _Refusal(ProblemError):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail, headers=problem.headers)
        self.problem = problem

    def response(self, instance: str | None = None) -> web.Response:
        return self.problem.response(instance or "")


class _BadRequest(ProblemError):
    status = 400
    slug = "invalid-request"
    title = "The request is invalid"


# -- install -------------------------------------------------------------------------------------


def install(app: web.Application) -> None:
    # Before the bootstrap opens the audit log: a restore completed before this start
    # staged its audit log; swap it in so the chain continues from the backed-up head.
    app.on_startup.insert(0, _finish_restore)
    app.router.add_routes(_routes())
    app.cleanup_ctx.append(_serve_governance)


async def _finish_restore(app: web.Application) -> None:
    config: EnclaveConfig = app[CONFIG]
    backup_id = await asyncio.to_thread(finish_pending_restore, config.kms_dir)
    if backup_id is not None:
        log.warning("starting on the state restored from backup %s", backup_id)


def _verifier(config: EnclaveConfig) -> Verifier:
    if config.attestation == "hardware":
        return Verifier(TrustRoots.production())
    from enclave.attestation.providers import simulated_device

    device = simulated_device(config.platform, config.hardware_dir)
    return Verifier(
        TrustRoots.from_pem({config.platform: device.roots_pem()}, simulated=True, label="kms-sim")
    )


async def _serve_governance(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    config = app[CONFIG]
    launch = json.loads(runtime.policy.launch_config)
    kms: KmsService | None = _kms_service(app)
    alerts = _alerter(app)
    custodians: QuorumPolicy | None = None
    if isinstance(launch, dict) and "backup" in launch:
        try:
            custodians = custodian_policy_from_config(launch)
        except CustodianError as exc:
            log.warning("backup custodians unusable: %s", exc)
    recipient = await asyncio.to_thread(
        RestoreRecipient.load_or_create, config.kms_dir, runtime.sealer, runtime.evidence_provider
    )
    feature = GovernanceFeature(
        runtime=runtime,
        governance=None,
        unavailable=None,
        custodians=custodians,
        shelf=BackupShelf(config.kms_dir, runtime.sealer),
        staged=StagedRestore(config.kms_dir),
        recipient=recipient,
        replication=ReplicationPrimary(
            verifier=_verifier(config),
            policy=Policy(measurements=(ReferenceMeasurement("self", b"\x00" * 48),)),
            kms_identity=runtime.kms_id,
            audit=runtime.audit.record,
            clock=runtime.clock,
        ),
        emergency=(
            EmergencyService(kms, runtime.hierarchy, runtime.hsm, runtime.clock) if kms else None
        ),
        raise_alert=alerts,
    )
    registry = ExecutorRegistry(_executors(feature, kms))
    try:
        quorum = QuorumConfig.from_launch_config(runtime.policy.launch_config)
        feature.governance = Governance(
            quorum,
            kms_identity=runtime.kms_id,
            measurement=runtime.launch_identity.measurement,
            store=runtime.store.store,
            executors=registry,
            audit=runtime.audit.record,
            clock=runtime.clock,
        )
    except GovernanceConfigError as exc:
        feature.unavailable = f"the attested launch configuration has no usable quorum: {exc}"
        log.warning("%s", feature.unavailable)
    feature.puller = _puller(launch, feature, config)
    app[GOVERNANCE] = feature
    _schedule(app, feature)
    yield


def _kms_service(app: web.Application) -> KmsService | None:
    try:
        from enclave.features.kms_api import KMS_SERVICE
    except ImportError:  # pragma: no cover - the KMS API is installed with this feature
        return None
    return app.get(KMS_SERVICE)


def _alerter(app: web.Application) -> Callable[[str, str], None]:
    def alert(kind: str, detail: str) -> None:
        log.critical("%s: %s", kind, detail)
        try:
            from enclave.features.monitoring import MONITORING
            from enclave.monitoring.alerts import AlertLevel
        except ImportError:  # pragma: no cover
            return
        monitoring = app.get(MONITORING)
        if monitoring is not None:
            monitoring.alerts.raise_alert(AlertLevel.CRITICAL, kind, kind, detail)

    return alert


def _schedule(app: web.Application, feature: GovernanceFeature) -> None:
    """The jobs, on the monitoring feature's scheduler (an own asyncio loop otherwise)."""
    from enclave.scheduler import Daily, Every, Job

    jobs = [
        Job(
            "backup.verify",
            Daily(VERIFY_AT),
            lambda _now: feature.verify_latest(),
            timeout=600,
            description="verify the newest backup bundle; alert when it fails",
        )
    ]
    if feature.puller is not None:
        puller = feature.puller
        jobs.append(
            Job(
                "replication.pull",
                Every(puller.interval),
                lambda _now: puller.pull_once(),
                timeout=600,
                description="pull the primary's newest bundle and its attested key",
            )
        )
    try:
        from enclave.features.monitoring import MONITORING
    except ImportError:  # pragma: no cover
        return
    monitoring = app.get(MONITORING)
    if monitoring is None:  # pragma: no cover - monitoring is installed with this feature
        return
    for job in jobs:
        monitoring.scheduler.add(job)


def _puller(launch: Any, feature: GovernanceFeature, config: EnclaveConfig) -> ReplicaPuller | None:
    section = launch.get("replication") if isinstance(launch, dict) else None
    primary = section.get("primary") if isinstance(section, dict) else None
    if not isinstance(section, dict) or not isinstance(primary, dict):
        return None
    try:
        url = str(primary["url"]).rstrip("/")
        identity = bytes.fromhex(str(primary["identity_public_key"]))
        interval = timedelta(minutes=int(section.get("interval_minutes", 60)))
    except (KeyError, ValueError, TypeError) as exc:
        log.warning("replication.primary is unusable: %s", exc)
        return None
    return ReplicaPuller(
        transport=http_transport(url),
        provider=feature.runtime.evidence_provider,
        primary_identity_key=identity,
        directory=config.kms_dir / "replicas",
        sealer=feature.runtime.sealer,
        interval=interval,
    )


Transport = Callable[[str, str, bytes | None], Awaitable[tuple[int, bytes]]]


def http_transport(base_url: str) -> Transport:
    """Requests to the primary through the untrusted hosts. TLS is not what protects the
    exchange (the bundle is signed and encrypted, the key HPKE-wrapped to an attested key),
    so the primary's certificate is not checked here."""

    async def send(method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        async with (
            ClientSession(timeout=ClientTimeout(total=120)) as session,
            session.request(
                method,
                base_url + path,
                data=body,
                ssl=False,
                headers={"Content-Type": "application/json"} if body is not None else None,
            ) as response,
        ):
            return response.status, await response.content.read(MAX_BUNDLE_UPLOAD_BYTES)

    return send


# -- executors -----------------------------------------------------------------------------------


def _executors(feature: GovernanceFeature, kms: KmsService | None) -> dict[str, Executor]:
    runtime = feature.runtime

    async def rotate_master_key(proposal: Proposal) -> Mapping[str, Any]:
        # The HSM master key is non-extractable and fixed per token: the key level under it
        # that the quorum rotates is the service KEK; a new master key is made by restoring
        # a backup into a new token (docs/operations.md).
        if kms is None:
            raise GovernanceError("the KMS service is not running")
        kek = await kms.repository.rotate_kek()
        return {"kek": kek.key_id, "new_version": kek.latest.version}

    async def export_backup(proposal: Proposal) -> Mapping[str, Any]:
        if feature.custodians is None:
            raise CustodianError("the launch configuration names no backup custodians")
        async with feature._lock:
            result = await export_state(runtime, feature.custodians)
            created = result.created
            digest = await asyncio.to_thread(feature.shelf.save, created)
        manifest = created.manifest
        return {
            "backup_id": manifest.backup_id,
            "bundle_sha256": digest,
            "records": len(manifest.records),
            "kek_versions": result.kek_versions,
            "canaries": result.canaries,
            "audit_head": manifest.audit_head.to_dict() if manifest.audit_head else None,
            "download": f"/v1/backup/bundles/{manifest.backup_id}",
        }

    async def restore_backup(proposal: Proposal) -> Mapping[str, Any]:
        params = proposal.parameters
        backup_id = str(params["backup_id"])
        bundle = feature.staged.bundle(backup_id)
        if bundle is None:
            raise RestoreFailed(f"no bundle {backup_id} is staged for restore")
        if bundle_digest(bundle) != params["bundle_sha256"]:
            raise RestoreFailed("the staged bundle is not the one the proposal names")
        key = _restore_key(feature, backup_id, bundle, str(params.get("key_source", "shares")))
        async with feature._lock:
            report = await restore_state(
                runtime,
                bundle,
                key,
                identity_key=bytes.fromhex(str(params["identity_public_key"])),
                kms_id=str(params["kms_id"]),
            )
        feature.restored = backup_id
        return report.to_dict()

    async def change_measurements(proposal: Proposal) -> Mapping[str, Any]:
        entries = thaw(proposal.parameters["measurements"])
        value = persist.dump({"measurements": entries})
        runtime.store.store.put(GOVERNANCE_CONFIG_KIND, REFERENCE_MEASUREMENTS_ID, value)
        return {"measurements": [e["name"] for e in entries]}

    def emergency() -> EmergencyService:
        if feature.emergency is None:
            raise GovernanceError("the KMS service is not running")
        return feature.emergency

    async def compromise(proposal: Proposal) -> Mapping[str, Any]:
        params = proposal.parameters
        report = await emergency().respond_to_compromise(
            str(params["key_id"]), reason=str(params.get("reason", ""))
        )
        return report.to_dict()

    async def rotate(proposal: Proposal) -> Mapping[str, Any]:
        return await emergency().rotate(str(proposal.parameters["key_id"]))

    async def isolate(proposal: Proposal) -> Mapping[str, Any]:
        params = proposal.parameters
        if "principal_id" in params:
            return await emergency().isolate_principal(str(params["principal_id"]))
        return await emergency().isolate_key(str(params["key_id"]))

    async def disable_key(proposal: Proposal) -> Mapping[str, Any]:
        return await emergency().isolate_key(str(proposal.parameters["key_id"]))

    return {
        ROTATE_MASTER_KEY: rotate_master_key,
        EXPORT_BACKUP: export_backup,
        RESTORE_BACKUP: restore_backup,
        CHANGE_REFERENCE_MEASUREMENTS: change_measurements,
        EMERGENCY_COMPROMISE: compromise,
        EMERGENCY_ROTATE: rotate,
        EMERGENCY_ISOLATE: isolate,
        EMERGENCY_DISABLE_KEY: disable_key,
    }


def _restore_key(
    feature: GovernanceFeature, backup_id: str, bundle: bytes, source: str
) -> BackupKey:
    from enclave.backup.bundle import Bundle, backup_key_from_shares
    from enclave.backup.manifest import Manifest

    if source == "replica":
        key = feature.puller.replica_key(backup_id) if feature.puller else None
        if key is None:
            raise RestoreFailed(f"no attested replica key for {backup_id} on this instance")
        return key
    manifest = Manifest.from_bytes(Bundle.from_bytes(bundle).manifest_bytes)
    shares = []
    for sealed in feature.staged.shares(backup_id):
        try:
            shares.append(feature.recipient.open(sealed, backup_id))
        except RestoreFailed:
            continue  # a share sealed for another recipient or backup: not counted
    return backup_key_from_shares(manifest, shares)


# -- parameter checks (before admins are asked to sign anything) -------------------------------


def _check_parameters(operation: str, params: Mapping[str, Any]) -> None:
    def fields(required: set[str], optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        missing = required - set(params)
        unknown = set(params) - required - optional
        if missing or unknown:
            raise InvalidProposal(
                f"{operation} takes {sorted(required)} (optional {sorted(optional)}); "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )

    def key_id(name: str = "key_id") -> None:
        if not isinstance(params.get(name), str) or not _KEY_ID_RE.fullmatch(params[name]):
            raise InvalidProposal(f"{name} is key_ + 32 hex digits")

    if operation in (ROTATE_MASTER_KEY, EXPORT_BACKUP):
        fields(set(), {"reason"})
    elif operation == RESTORE_BACKUP:
        fields({"backup_id", "bundle_sha256", "kms_id", "identity_public_key"}, {"key_source"})
        if not BACKUP_ID_RE.fullmatch(str(params["backup_id"])):
            raise InvalidProposal("backup_id is bak_ + 32 hex digits")
        if not re.fullmatch(r"[0-9a-f]{64}", str(params["bundle_sha256"])) or not re.fullmatch(
            r"[0-9a-f]{64}", str(params["identity_public_key"])
        ):
            raise InvalidProposal("bundle_sha256 and identity_public_key are 64 hex digits")
        if params.get("key_source", "shares") not in ("shares", "replica"):
            raise InvalidProposal("key_source is shares or replica")
    elif operation == CHANGE_REFERENCE_MEASUREMENTS:
        fields({"measurements"})
        entries = params["measurements"]
        if not isinstance(entries, list | tuple) or not all(
            isinstance(e, Mapping)
            and set(e) == {"name", "value"}
            and isinstance(e["value"], str)
            and _HEX_RE.fullmatch(e["value"])
            and len(e["value"]) in (64, 96)
            for e in entries
        ):
            raise InvalidProposal("measurements is a list of {name, value (hex, 32/48 bytes)}")
    elif operation in (EMERGENCY_COMPROMISE, EMERGENCY_ROTATE, EMERGENCY_DISABLE_KEY):
        fields({"key_id"}, {"reason"})
        key_id()
    elif operation == EMERGENCY_ISOLATE:
        if "principal_id" in params:
            fields({"principal_id"}, {"reason"})
            if not PRINCIPAL_ID_PATTERN.fullmatch(str(params["principal_id"])):
                raise InvalidProposal("principal_id is prn_ + 24 hex digits")
        else:
            fields({"key_id"}, {"reason"})
            key_id()


# -- HTTP ----------------------------------------------------------------------------------------


def _feature(request: web.Request) -> GovernanceFeature:
    feature = request.app.get(GOVERNANCE)
    if feature is None:
        raise _Unavailable("the KMS is starting")
    return feature


def _problem(exc: BaseException) -> Problem:
    problem = problem_for(exc)
    assert problem is not None
    return problem


async def _admin(request: web.Request) -> Principal:
    """A system administrator (level 4), authenticated by the KMS API's own mechanism."""
    state = request.app.get(API_STATE)
    if state is None:
        raise _Refusal(_problem(unauthenticated("the KMS API is not running")))
    try:
        caller = authenticate(state, request)
    except AuthenticationError as exc:
        raise _Refusal(_problem(exc)) from None
    caller = state.kms.guard.current(caller)
    request[CALLER_KEY] = caller
    if not caller.active or caller.system_level != Level.SYSTEM_ADMIN:
        raise _Refusal(_problem(AccessDenied("system administrators (level 4) only")))
    return caller


_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (UnknownProposal, 404),
    (MalformedApproval, 400),
    (ApprovalMismatch, 400),
    (DuplicateApproval, 409),
    (ProposalClosed, 409),
    (ProposalExpired, 410),
    (InvalidProposal, 400),
    (ExecutionFailed, 500),
    (GovernanceError, 403),
    (RestoreFailed, 422),
    (BundleInvalid, 422),
    (ReplicationRefused, 403),
    (BackupError, 400),
)


def _governance_problem(exc: Exception, instance: str) -> web.Response:
    status = next((s for kind, s in _STATUS if isinstance(exc, kind)), 500)
    slug = getattr(exc, "type", "governance-error")
    title = {400: "The request is invalid", 403: "Refused", 404: "No such proposal",
             409: "Conflict", 410: "The proposal has expired", 422: "The backup was refused",
             500: "The operation failed"}.get(status, "Refused")  # fmt: skip
    return problem_response(status, slug, title, str(exc)[:300], instance=instance)


Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guarded(handler: Route) -> Route:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (GovernanceError, BackupError) as exc:
            return _governance_problem(exc, request.path)
        except BadInput as exc:  # a body too large or not JSON (``_json``, ``read_body``)
            return _problem(exc).response(request.path)

    wrapped.__name__ = handler.__name__
    return wrapped


async def _json(request: web.Request) -> dict[str, Any]:
    from enclave.api.routes import read_body

    value = parse_json(await read_body(request, MAX_JSON_BYTES))
    if not isinstance(value, dict):
        raise _BadRequest("the body is a JSON object")
    return value


def _state_view(feature: GovernanceFeature, state: ProposalState) -> dict[str, Any]:
    governance = feature.require_governance()
    view = state.to_dict()
    view["approvals"] = len(state.approvals)
    view["threshold"] = governance.config.threshold
    view["approval_digest"] = approval_digest(state.proposal).hex()
    view["approval_message"] = approval_message(state.proposal).decode()
    return view


def _routes() -> list[web.AbstractRouteDef]:
    routes = web.RouteTableDef()

    @routes.post("/v1/governance/proposals")
    @_guarded
    async def propose(request: web.Request) -> web.StreamResponse:
        caller = await _admin(request)
        feature = _feature(request)
        governance = feature.require_governance()
        body = await _json(request)
        unknown = set(body) - {"operation", "parameters", "ttl_seconds"}
        if unknown or not isinstance(body.get("operation"), str):
            raise _BadRequest("the body is {operation, parameters, ttl_seconds}")
        operation = body["operation"]
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise _BadRequest("parameters is an object")
        if operation == CHANGE_ADMINS:
            # An admin change is a quorum change that keeps the threshold unless it says.
            operation = CHANGE_QUORUM
            parameters = {"threshold": governance.config.threshold, **parameters}
        elif operation != CHANGE_QUORUM:
            _check_parameters(operation, parameters)
        ttl = body.get("ttl_seconds")
        if ttl is not None and (type(ttl) is not int or ttl <= 0):
            raise _BadRequest("ttl_seconds is a positive integer")
        if ttl is not None and ttl > governance.settings.max_ttl.total_seconds():
            # Checked here too: a huge number overflows timedelta before propose sees it.
            raise InvalidProposal(f"a proposal lives at most {governance.settings.max_ttl}")
        proposal = await governance.propose(
            operation,
            parameters,
            proposer=f"principal:{caller.id}",
            ttl=timedelta(seconds=ttl) if ttl else None,
        )
        return web.json_response(_state_view(feature, governance.get(proposal.id)), status=201)

    @routes.get("/v1/governance/proposals")
    @_guarded
    async def list_proposals(request: web.Request) -> web.StreamResponse:
        await _admin(request)
        feature = _feature(request)
        governance = feature.require_governance()
        return web.json_response(
            {"proposals": [_state_view(feature, s) for s in governance.list()]}
        )

    @routes.get("/v1/governance/proposals/{proposal_id}")
    @_guarded
    async def show(request: web.Request) -> web.StreamResponse:
        await _admin(request)
        feature = _feature(request)
        governance = feature.require_governance()
        state = governance.get(request.match_info["proposal_id"])
        return web.json_response(_state_view(feature, state))

    @routes.post("/v1/governance/proposals/{proposal_id}/approvals")
    @_guarded
    async def approve(request: web.Request) -> web.StreamResponse:
        await _admin(request)
        feature = _feature(request)
        governance = feature.require_governance()
        approval = Approval.from_dict(await _json(request))
        result = await governance.approve(approval, proposal_id=request.match_info["proposal_id"])
        return web.json_response(
            {
                "proposal_id": result.proposal_id,
                "admin": result.admin,
                "approvals": result.approvals,
                "threshold": result.threshold,
                "status": result.status,
                "result": thaw(result.result) if result.result is not None else None,
            }
        )

    @routes.get("/v1/backup/identity")
    async def backup_identity(request: web.Request) -> web.StreamResponse:
        await _admin(request)
        runtime = _feature(request).runtime
        return web.json_response(
            {"kms_id": runtime.kms_id, "identity_public_key": identity_public_key(runtime).hex()}
        )

    @routes.get("/v1/backup/bundles")
    async def list_bundles(request: web.Request) -> web.StreamResponse:
        await _admin(request)
        return web.json_response({"bundles": _feature(request).shelf.describe()})

    @routes.get("/v1/backup/bundles/{backup_id}")
    @_guarded
    async def get_bundle(request: web.Request) -> web.StreamResponse:
        await _admin(request)
        data = _feature(request).shelf.bundle(request.match_info["backup_id"])
        return web.Response(body=data, content_type="application/octet-stream")

    @routes.get("/v1/backup/status")
    async def backup_status(request: web.Request) -> web.StreamResponse:
        await _admin(request)
        feature = _feature(request)
        return web.json_response(
            {
                "verified_at": feature.last_verified_at.isoformat()
                if feature.last_verified_at
                else None,
                "checks": [
                    {"bundle": c.name, "ok": c.ok, "backup_id": c.backup_id, "error": c.error}
                    for c in feature.last_verification
                ],
                "restored": feature.restored,
            }
        )

    @routes.put("/v1/backup/restore/bundles/{backup_id}")
    @_guarded
    async def stage_bundle(request: web.Request) -> web.StreamResponse:
        import base64
        import binascii

        from enclave.api.routes import read_body
        from enclave.backup.bundle import Bundle
        from enclave.backup.manifest import Manifest

        await _admin(request)
        feature = _feature(request)
        backup_id = request.match_info["backup_id"]
        body = await read_body(request, MAX_BUNDLE_UPLOAD_BYTES * 4 // 3 + 1024)
        try:
            document: Any = parse_json(body)  # not an object: TypeError below
            data = base64.b64decode(document["bundle"], validate=True)
            manifest = Manifest.from_bytes(Bundle.from_bytes(data).manifest_bytes)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _BadRequest("the body is {bundle: base64 of a backup bundle}") from None
        if manifest.backup_id != backup_id:
            raise _BadRequest(f"the bundle is {manifest.backup_id}, not {backup_id}")
        await asyncio.to_thread(feature.staged.put_bundle, backup_id, data)
        return web.json_response(
            {
                "backup_id": backup_id,
                "bundle_sha256": bundle_digest(data),
                "kms_id": manifest.kms_identity,
                "threshold": manifest.threshold,
                "custodians": [c.name for c in manifest.custodians],
            },
            status=201,
        )

    @routes.get("/v1/backup/restore/recipient")
    @_guarded
    async def recipient(request: web.Request) -> web.StreamResponse:
        await _admin(request)
        nonce_hex = request.query.get("nonce", "")
        if not re.fullmatch(r"[0-9a-f]{64}", nonce_hex):
            raise _BadRequest("nonce is 64 lower-case hex digits")
        offer = await asyncio.to_thread(_feature(request).recipient.offer, bytes.fromhex(nonce_hex))
        return web.json_response(offer.to_dict())

    @routes.post("/v1/backup/restore/shares")
    @_guarded
    async def post_share(request: web.Request) -> web.StreamResponse:
        import base64
        import binascii

        await _admin(request)
        body = await _json(request)
        if set(body) != {"backup_id", "sealed_share"}:
            raise _BadRequest("the body is {backup_id, sealed_share}")
        try:
            sealed = base64.b64decode(str(body["sealed_share"]), validate=True)
        except (binascii.Error, ValueError):
            raise _BadRequest("sealed_share is base64") from None
        name = await asyncio.to_thread(
            _feature(request).staged.put_share, str(body["backup_id"]), sealed
        )
        return web.json_response({"backup_id": body["backup_id"], "share": name}, status=201)

    # -- replication (the secondary authenticates by attestation) ---------------------------

    @routes.post("/v1/replication/challenge")
    @_guarded
    async def challenge(request: web.Request) -> web.StreamResponse:
        return web.json_response(_feature(request).replication.issue_challenge().to_dict())

    @routes.post("/v1/replication/release")
    @_guarded
    async def release(request: web.Request) -> web.StreamResponse:
        feature = _feature(request)
        body = await _json(request)
        if set(body) != {"backup_id", "request"} or not isinstance(body["request"], dict):
            raise _BadRequest("the body is {backup_id, request}")
        backup_id = str(body["backup_id"])
        key = await asyncio.to_thread(feature.shelf.backup_key, backup_id)
        feature.replication.policy = feature.replication_policy()
        released = await feature.replication.release_backup_key(
            ReplicationRequest.from_dict(body["request"]), key
        )
        return web.json_response(released.to_dict())

    @routes.get("/v1/replication/bundles/latest")
    @_guarded
    async def latest_bundle(request: web.Request) -> web.StreamResponse:
        shelf = _feature(request).shelf
        newest = shelf.latest()
        if newest is None:
            raise web.HTTPNotFound()
        return web.Response(
            body=shelf.bundle(newest),
            content_type="application/octet-stream",
            headers={"Backup-Id": newest},
        )

    return list(routes)
