"""The monitoring feature: audit of every request, fail-closed audit, metrics, alerts, the
routine jobs, the admin dashboard, compliance reports and the audit export.

``install(app)`` wires, on top of the runtime (``app[RUNTIME]``):

- ``request_middleware``, outermost: the request metrics and the request log (in place
  of the app's own ``request_log_middleware``), and the audit of every request, outside
  every other feature's middleware:

  * fail closed: while the audit log is unhealthy every request except the unaudited
    public ones (``MonitoringOptions.unaudited_paths``: health, attestation, metrics) is
    refused with 503 ``audit-unavailable`` problem+json, and an ``AuditUnavailable`` that
    escapes a handler (storage failed during the request) becomes the same 503;
  * the gap record: the service layer audits every KMS operation (``enclave.kms.guard``);
    a request for which no audit record was submitted while it was handled (counted with
    ``AuditLog.request_scope``) gets one here (``api.*`` operations: unauthenticated,
    forbidden, invalid, not found, or allowed for API-level answers), awaited before the
    answer leaves, so a refusal before the service layer is audited exactly once.

- alerts: a ``LogAlertSink`` and, when the attested launch configuration names one
  (``{"monitoring": {"alert_webhook": {"url": "https://...", "ca_pem": "..."}}}``), an
  HTTPS ``WebhookSink``. ``AlertRules`` are fed from every durable audit record (failed
  access bursts, anomalies, rejected attestation evidence), the audit log's failure and
  recovery (Critical / Info), the HSM's statistics (polled), the enclave's own evidence
  failures (a 503 from ``/v1/attestation``) and the key inventory (overdue rotation).
- ``/metrics`` (Prometheus; readable without a token: counts and latencies only), the
  dashboard (``/v1/dashboard``, ``/v1/dashboard.json``), compliance reports
  (``/v1/reports/compliance``), the audit export (``/v1/audit/export``) and the audit
  public key (``/v1/audit/public-key``, a public document served over attested TLS).
- the scheduler: daily health check and access review, weekly policy compliance, monthly
  compliance report (each leaves an ``event`` record in the audit log and its result on
  the dashboard), plus the inventory refresh and HSM poll that feed the rules.

Who may read the dashboard, reports and export is decided by ``enclave.api``'s access
mechanism (``_require_admin_or_auditor``); this module has no token checker of its own.

Must never: let an operation answer without a durable audit record, or put a secret (a
token, a key, a plaintext) in a record, an alert, a metric or a page. Claimed principal
ids from unverified tokens are recorded only after a strict character check.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry

from enclave.api.auth import API_STATE, CALLER_KEY, authenticate
from enclave.api.errors import Problem, problem_for, unauthenticated
from enclave.app import (
    REQUEST_LOG,
    RUNTIME,
    SERVICE_STATE,
    RequestLog,
    log_request,
    request_log_middleware,
)
from enclave.audit.log import AuditListener, AuditStats, AuditUnavailable
from enclave.audit.records import AuditRecord, Outcome
from enclave.auth.access import AccessDenied, Grant
from enclave.auth.principals import Level, Principal
from enclave.auth.tokens import AuthenticationError
from enclave.hsm.stats import OperationSnapshot
from enclave.keys.metadata import KeyMetadata
from enclave.kms.grants import GrantStore
from enclave.kms.principals import PrincipalStore
from enclave.monitoring.alerts import Alert, AlertManager, LogAlertSink
from enclave.monitoring.jobs import (
    audit_emitter,
    job_failure_alerter,
    records_from_lines,
    standard_jobs,
)
from enclave.monitoring.metrics import KmsMetrics, MetricsSources, route_label
from enclave.monitoring.rules import AlertRules, RulesConfig, default_alert_config
from enclave.monitoring.webhook import WebhookConfig, WebhookConfigError, WebhookSink, WebhookStats
from enclave.problems import Handler, ProblemError, problem_response
from enclave.reports.dashboard import DashboardSources
from enclave.reports.model import ReportData
from enclave.reports.routes import ReportSources, dashboard_routes
from enclave.runtime import KEYS_KIND, KmsRuntime
from enclave.scheduler import Every, Job, Scheduler
from verifier.errors import VerificationError

log = logging.getLogger("enclave.monitoring")

AUDIT_UNAVAILABLE = "audit-unavailable"
# A principal id as the KMS mints them; anything else from an unverified token is "malformed".
_CLAIMED_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,80}\Z")
MAX_EXPORT_LINES = 5_000_000


def _verification_types() -> frozenset[str]:
    seen: set[str] = set()
    pending: list[type[VerificationError]] = [VerificationError]
    while pending:
        cls = pending.pop()
        seen.add(cls.type)
        pending.extend(cls.__subclasses__())
    return frozenset(seen)


@dataclass(frozen=True)
class MonitoringOptions:
    """Named limits and exemptions of the monitoring feature."""

    # Public, read-only answers that carry no principal's action: not audited, and still
    # answered while the audit log is down (a health probe must be able to say so).
    unaudited_paths: frozenset[str] = frozenset(
        {"/healthz", "/readyz", "/v1/attestation", "/metrics", "/v1/audit/public-key"}
    )
    unaudited_prefixes: tuple[str, ...] = ("/.well-known/", "/v1/public/")
    inventory_refresh: timedelta = timedelta(seconds=30)
    hsm_poll: timedelta = timedelta(seconds=60)
    max_reports: int = 12
    rules: RulesConfig = field(default_factory=RulesConfig)

    def unaudited(self, path: str) -> bool:
        return path in self.unaudited_paths or path.startswith(self.unaudited_prefixes)


class KeyInventory:
    """The service keys' metadata, re-read from the store by ``refresh`` (the metrics
    collector and the dashboard read it synchronously, so they get the last snapshot)."""

    def __init__(self) -> None:
        self._keys: tuple[KeyMetadata, ...] = ()
        self._lock = asyncio.Lock()
        self.refreshed_at: datetime | None = None

    def snapshot(self) -> tuple[KeyMetadata, ...]:
        return self._keys

    async def refresh(self, runtime: KmsRuntime) -> tuple[KeyMetadata, ...]:
        async with self._lock:
            refs = await runtime.store.list(KEYS_KIND)
            keys = []
            for ref in refs:
                record = await runtime.store.get(KEYS_KIND, ref.id)
                if record is None:
                    continue
                try:
                    keys.append(KeyMetadata.from_dict(json.loads(record.value)))
                except (ValueError, KeyError, TypeError):
                    log.warning("key record %s does not parse; left out of the inventory", ref.id)
            self._keys = tuple(keys)
            self.refreshed_at = runtime.clock()
            return self._keys


@dataclass
class Monitoring:
    """The monitoring state of one application (``app[MONITORING]``)."""

    options: MonitoringOptions
    alerts: AlertManager
    rules: AlertRules
    metrics: KmsMetrics
    scheduler: Scheduler
    inventory: KeyInventory
    reports: collections.deque[ReportData]
    webhook: WebhookSink | None = None
    refused_while_down: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count_refusal(self) -> None:
        with self._lock:
            self.refused_while_down += 1

    def take_refusals(self) -> int:
        with self._lock:
            count, self.refused_while_down = self.refused_while_down, 0
            return count


MONITORING = web.AppKey("monitoring", Monitoring)


# -- access -------------------------------------------------------------------------------


class _Refusal(ProblemError):
    """An access refusal, answered with the API's problem document for the error."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail, headers=problem.headers)
        self.problem = problem

    def response(self, instance: str | None = None) -> web.Response:
        return self.problem.response(instance or "")


def _caller(request: web.Request) -> Principal | None:
    """The authenticated caller the API's authentication put on the request, if any."""
    principal = request.get(CALLER_KEY)
    return principal if isinstance(principal, Principal) else None


def _may_review(principal: Principal) -> bool:
    return principal.active and (
        principal.system_level == Level.SYSTEM_ADMIN or principal.kind == "auditor"
    )


async def _require_admin_or_auditor(request: web.Request) -> None:
    """Administrators (system level 4) and auditors may read the dashboard, the reports and
    the audit export. The token is checked by the API's own authentication
    (``enclave.api.auth.authenticate``); the principal is re-read from the directory so a
    principal disabled a moment ago is refused. Refusals are audited by the audit
    middleware (no record was made for them)."""
    state = request.app.get(API_STATE)
    if state is None:
        raise _Refusal(_problem(unauthenticated("the KMS API is not running")))
    try:
        caller = authenticate(state, request)
    except AuthenticationError as exc:
        raise _Refusal(_problem(exc)) from None
    caller = state.kms.guard.current(caller)
    request[CALLER_KEY] = caller
    if not _may_review(caller):
        raise _Refusal(_problem(AccessDenied("administrators (level 4) and auditors only")))


def _problem(exc: BaseException) -> Problem:
    problem = problem_for(exc)
    assert problem is not None
    return problem


def _claimed_principal(request: web.Request) -> str:
    """Who a request that did not authenticate says it is (never verified: prefixed)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > 4096:
        return "anonymous"
    try:
        head = token.split(".", 1)[0]
        document = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        kid = document.get("kid") if isinstance(document, dict) else None
    except (ValueError, UnicodeDecodeError):
        kid = None
    if isinstance(kid, str) and _CLAIMED_ID.match(kid):
        return f"unauthenticated:{kid}"
    return "unauthenticated:malformed"


def _gap_operation(status: int) -> tuple[str, Outcome]:
    if status == 401:
        return "api.unauthenticated", "denied"
    if status == 403:
        return "api.forbidden", "denied"
    if status == 404:
        return "api.not_found", "invalid"
    if 400 <= status < 500:
        return "api.invalid_request", "invalid"
    if status >= 500:
        return "api.error", "error"
    return "api.request", "allowed"


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, _Refusal):
        return exc.problem.status
    if isinstance(exc, ProblemError):
        return exc.status
    if isinstance(exc, web.HTTPException):
        return exc.status
    return 500


def _audit_unavailable_response(request: web.Request) -> web.Response:
    return problem_response(
        503,
        AUDIT_UNAVAILABLE,
        "The audit log is unavailable",
        "operations are refused until audit records can be written again",
        instance=request.path,
        headers={"Retry-After": "5"},
    )


def request_middleware(monitoring: Monitoring, requests: RequestLog) -> Middleware:
    """The outermost middleware: metrics, the request log and the audit of every request,
    in one layer (they were three: each layer costs the hot path a call and a coroutine).

    From the outside in, as when they were separate: the metrics count the status the
    client gets (an ``HTTPException`` that escapes: its status; anything else: 500), the
    request log records it (anything that escapes: 500), and the audit part (``audited``)
    runs outside every other feature's middleware.
    """
    options = monitoring.options
    metrics = monitoring.metrics

    async def audited(request: web.Request, handler: Handler) -> web.StreamResponse:
        runtime = request.app.get(RUNTIME)
        path = request.path
        if runtime is None or options.unaudited(path):
            answer = await handler(request)
            if path == "/v1/attestation" and answer.status == 503:
                monitoring.rules.attestation_failed(
                    "enclave", "the platform did not produce evidence", local=True
                )
            return answer
        audit = runtime.audit
        if not audit.healthy:
            monitoring.count_refusal()
            return _audit_unavailable_response(request)
        status = 500
        raised: BaseException | None = None
        response: web.StreamResponse | None = None
        with audit.request_scope() as scope:
            try:
                response = await handler(request)
                status = response.status
            except AuditUnavailable:
                monitoring.count_refusal()
                return _audit_unavailable_response(request)
            except BaseException as exc:
                raised = exc
                status = _status_of(exc)
        if scope.records == 0 and not isinstance(raised, asyncio.CancelledError):
            operation, outcome = _gap_operation(status)
            caller = _caller(request)
            principal = caller.id if caller is not None else _claimed_principal(request)
            try:
                await audit.record(
                    principal=principal,
                    operation=operation,
                    outcome=outcome,
                    status=status,
                    details={"method": request.method, "route": route_label(request)},
                )
            except AuditUnavailable:
                monitoring.count_refusal()
                return _audit_unavailable_response(request)
        if status == 401:
            # Failed authentication: the audit record names no principal (none was
            # proven); the rules count it against the principal the token claims.
            monitoring.rules.observe_request(
                _claimed_principal(request), "api.authenticate", "denied", 401
            )
        if raised is not None:
            raise raised
        assert response is not None
        return response

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = metrics.monotonic()
        status = 500  # for the metrics
        logged = 500  # for the request log
        try:
            response = await audited(request, handler)
            status = logged = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            log_request(requests, request.method, request.path, logged)
            metrics.observe(
                request.method, route_label(request), status, metrics.monotonic() - start
            )

    return middleware


# -- runtime-bound sources -----------------------------------------------------------------


def _runtime(app: web.Application) -> KmsRuntime | None:
    return app.get(RUNTIME)


def _audit_stats(app: web.Application) -> AuditStats:
    runtime = _runtime(app)
    if runtime is None:
        return AuditStats(queue_depth=0, written=0, last_seq=-1, healthy=False, batches=0)
    return runtime.audit.stats()


def _hsm_stats(app: web.Application) -> Mapping[str, OperationSnapshot]:
    runtime = _runtime(app)
    return {} if runtime is None else runtime.hsm.stats.snapshot()


def _records(app: web.Application) -> Callable[[datetime, datetime], Iterable[AuditRecord]]:
    def lines() -> Iterable[bytes]:
        runtime = _runtime(app)
        return () if runtime is None else runtime.audit.read_lines()

    return records_from_lines(lines)


def _principals(app: web.Application) -> list[Principal]:
    runtime = _runtime(app)
    return [] if runtime is None else PrincipalStore(runtime.store.store).all()


def _grants(app: web.Application) -> list[Grant]:
    runtime = _runtime(app)
    if runtime is None:
        return []
    grants = GrantStore(runtime.store.store)
    return [g for p in _principals(app) for g in grants.grants_for(p.id)]


def _webhook_from_launch(runtime: KmsRuntime) -> WebhookSink | None:
    """The alert webhook named by the attested launch configuration, if any."""
    try:
        document = json.loads(runtime.policy.launch_config)
    except ValueError:
        return None
    section = document.get("monitoring") if isinstance(document, dict) else None
    hook = section.get("alert_webhook") if isinstance(section, dict) else None
    if not isinstance(hook, dict) or not isinstance(hook.get("url"), str):
        return None
    ca_bundle: Path | None = None
    if isinstance(hook.get("ca_pem"), str):
        # The CA is part of the attested configuration; the copy on disk is only what the
        # TLS library reads, written inside the KMS's own data directory.
        ca_bundle = runtime.config.kms_dir / "monitoring" / "webhook-ca.pem"
        ca_bundle.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca_bundle.write_text(hook["ca_pem"], encoding="ascii")
    try:
        return WebhookSink(
            WebhookConfig(url=hook["url"], ca_bundle=ca_bundle, source=runtime.kms_id)
        )
    except WebhookConfigError as exc:
        log.error("the launch configuration's alert webhook is unusable: %s", exc)
        return None


# -- routes ---------------------------------------------------------------------------------


def _audit_routes(monitoring: Monitoring) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.get("/v1/audit/public-key")
    async def public_key(request: web.Request) -> web.Response:
        runtime = request.app[RUNTIME]
        return web.json_response(
            {
                "kms_id": runtime.kms_id,
                "audit_public_key": base64.b64encode(runtime.audit.public_key).decode(),
                "algorithm": "Ed25519",
            },
            headers={"Cache-Control": "no-store"},
        )

    @routes.get("/v1/audit/export")
    async def export(request: web.Request) -> web.StreamResponse:
        await _require_admin_or_auditor(request)
        runtime = request.app[RUNTIME]
        caller = _caller(request)
        # The export is itself audited, before it is taken, so it ends with its own record
        # and the signed checkpoint after it.
        await runtime.audit.record(
            principal=caller.id if caller else "unknown",
            operation="audit.export",
            outcome="allowed",
            status=200,
        )
        lines = await asyncio.to_thread(runtime.audit.export_lines)
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson",
                "Cache-Control": "no-store",
                "Content-Disposition": 'attachment; filename="audit.log"',
            }
        )
        await response.prepare(request)
        chunk: list[bytes] = []
        for line in lines[:MAX_EXPORT_LINES]:
            chunk.append(line)
            if len(chunk) >= 1024:
                await response.write(b"".join(chunk))
                chunk = []
        if chunk:
            await response.write(b"".join(chunk))
        await response.write_eof()
        return response

    return routes


def _audited(
    check: Callable[[web.Request], Awaitable[None]], operation: str
) -> Callable[[web.Request], Awaitable[None]]:
    """The access check, then an audit record of who read what (the page's own record)."""

    async def require(request: web.Request) -> None:
        await check(request)
        caller = _caller(request)
        await request.app[RUNTIME].audit.record(
            principal=caller.id if caller else "unknown",
            operation=operation,
            outcome="allowed",
            status=200,
            details={"route": route_label(request)},
        )

    return require


# -- wiring ---------------------------------------------------------------------------------


def install(app: web.Application, options: MonitoringOptions | None = None) -> None:
    options = options or MonitoringOptions()
    alerts = AlertManager([LogAlertSink()], config=default_alert_config())
    rules = AlertRules(alerts, config=options.rules)
    inventory = KeyInventory()
    holder: list[WebhookSink | None] = [None]

    def webhook_stats() -> WebhookStats:
        sink = holder[0]
        return sink.stats() if sink is not None else WebhookStats(0, 0, 0, 0, 0)

    metrics = KmsMetrics(
        CollectorRegistry(auto_describe=False),
        MetricsSources(
            keys=inventory.snapshot,
            hsm=lambda: _hsm_stats(app),
            audit=lambda: _audit_stats(app),
            alert_counts=alerts.counts,
            webhook=webhook_stats,
        ),
    )
    scheduler = Scheduler(on_failure=job_failure_alerter(alerts))
    monitoring = Monitoring(
        options=options,
        alerts=alerts,
        rules=rules,
        metrics=metrics,
        scheduler=scheduler,
        inventory=inventory,
        reports=collections.deque(maxlen=options.max_reports),
    )
    app[MONITORING] = monitoring

    # Outermost, in place of the app's own request log: metrics, request log and audit,
    # outside every other feature's middleware (``request_middleware``).
    middlewares = app.middlewares
    combined = request_middleware(monitoring, app[REQUEST_LOG])
    middlewares[middlewares.index(request_log_middleware)] = combined

    app.router.add_get("/metrics", _metrics_handler(monitoring))
    report_sources = ReportSources(
        records=_records(app),
        keys=inventory.snapshot,
        alerts=alerts.recent,
        metrics=metrics,
        kms_id=lambda: _kms_id(app),
    )
    dashboard_sources = DashboardSources(
        kms_id=lambda: _kms_id(app),
        keys=inventory.snapshot,
        alerts=alerts.recent,
        alert_counts=alerts.counts,
        metrics=metrics,
        jobs=scheduler.status,
        audit=lambda: _audit_stats(app),
        hsm=lambda: _hsm_stats(app),
    )
    app.add_routes(
        dashboard_routes(
            dashboard_sources,
            _refreshing(monitoring, _audited(_require_admin_or_auditor, "monitoring.read")),
            reports=report_sources,
        )
    )
    app.add_routes(_audit_routes(monitoring))
    app.cleanup_ctx.append(_monitoring_context(monitoring))


def _kms_id(app: web.Application) -> str:
    runtime = app.get(RUNTIME)
    return runtime.kms_id if runtime is not None else "enclave-kms"


def _refreshing(
    monitoring: Monitoring, check: Callable[[web.Request], Awaitable[None]]
) -> Callable[[web.Request], Awaitable[None]]:
    async def require(request: web.Request) -> None:
        await check(request)
        runtime = request.app.get(RUNTIME)
        if runtime is not None:
            await monitoring.inventory.refresh(runtime)

    return require


def _metrics_handler(monitoring: Monitoring) -> Handler:
    from prometheus_client import generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    async def handler(request: web.Request) -> web.Response:
        runtime = request.app.get(RUNTIME)
        inventory = monitoring.inventory
        if runtime is not None and (
            inventory.refreshed_at is None
            or runtime.clock() - inventory.refreshed_at > timedelta(seconds=5)
        ):
            await inventory.refresh(runtime)
        body = generate_latest(monitoring.metrics.registry)
        return web.Response(
            body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
        )

    return handler


def _observe_record(
    monitoring: Monitoring, verification_types: frozenset[str]
) -> Callable[[AuditRecord], None]:
    def observe(record: AuditRecord) -> None:
        if record.status == 401:
            return  # counted by the audit middleware against the claimed principal
        monitoring.rules.observe_audit_record(record)
        error = record.details.get("error")
        if record.outcome == "denied" and isinstance(error, str) and error in verification_types:
            monitoring.rules.attestation_failed(record.principal, error)

    return observe


def _monitoring_context(
    monitoring: Monitoring,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        audit = runtime.audit
        loop = asyncio.get_running_loop()
        rules = monitoring.rules
        rules.baseline_hsm(runtime.hsm.stats.snapshot())

        def recovered() -> None:
            rules.audit_recovered()
            refused = monitoring.take_refusals()
            # Off the writer thread: submitting from it would wait on itself.
            loop.call_soon_threadsafe(
                lambda: audit.submit(
                    principal="kms",
                    operation="audit.recovered",
                    outcome="event",
                    details={"requests_refused_while_unavailable": refused},
                )
            )

        remove_listener = audit.add_listener(
            AuditListener(
                on_failure=rules.audit_write_failed,
                on_recovery=recovered,
                on_record=_observe_record(monitoring, _verification_types()),
            )
        )
        webhook = _webhook_from_launch(runtime)
        if webhook is not None:
            monitoring.webhook = webhook
            monitoring.alerts.add_sink(webhook)
            await webhook.start()
        _add_jobs(app, monitoring, runtime)
        await monitoring.inventory.refresh(runtime)
        loop_task = asyncio.create_task(monitoring.scheduler.run_forever(), name="scheduler")
        try:
            yield
        finally:
            loop_task.cancel()
            await asyncio.gather(loop_task, return_exceptions=True)
            await monitoring.scheduler.aclose()
            remove_listener()
            if webhook is not None:
                await webhook.close()

    return context


def _add_jobs(app: web.Application, monitoring: Monitoring, runtime: KmsRuntime) -> None:
    async def store_report(report: ReportData) -> None:
        monitoring.reports.append(report)

    jobs = standard_jobs(
        audit=audit_emitter(runtime.audit),
        audit_stats=runtime.audit.stats,
        records=_records(app),
        keys=monitoring.inventory.snapshot,
        grants=lambda: _grants(app),
        principals=lambda: _principals(app),
        recent_alerts=monitoring.alerts.recent,
        store_report=store_report,
        hsm_stats=lambda: _hsm_stats(app),
        webhook_stats=(monitoring.webhook.stats if monitoring.webhook is not None else None),
        ready=lambda: app[SERVICE_STATE].ready,
        alerts=monitoring.alerts,
        rules=monitoring.rules,
        metrics=monitoring.metrics,
        kms_id=runtime.kms_id,
    )

    async def refresh_inventory(now: datetime) -> Mapping[str, Any]:
        keys = await monitoring.inventory.refresh(runtime)
        raised = monitoring.rules.check_rotation(keys, at=now)
        return {"keys": len(keys), "rotation_alerts": len(raised)}

    async def poll_hsm(now: datetime) -> Mapping[str, Any]:
        raised = monitoring.rules.poll_hsm(runtime.hsm.stats.snapshot(), at=now)
        return {"hsm_alerts": len(raised)}

    jobs.append(
        Job(
            "key-inventory",
            Every(monitoring.options.inventory_refresh),
            refresh_inventory,
            description="re-read key metadata for metrics and the dashboard; overdue rotation",
        )
    )
    jobs.append(
        Job(
            "hsm-poll",
            Every(monitoring.options.hsm_poll),
            poll_hsm,
            description="new HSM errors since the last poll raise an Error alert",
        )
    )
    for job in jobs:
        monitoring.scheduler.add(job)


def recent_alerts(app: web.Application) -> list[Alert]:
    """The application's recent alerts, most recent first (tests and operators)."""
    return app[MONITORING].alerts.recent()


__all__ = [
    "MONITORING",
    "KeyInventory",
    "Monitoring",
    "MonitoringOptions",
    "install",
    "recent_alerts",
    "request_middleware",
]
