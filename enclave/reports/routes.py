"""HTTP routes for monitoring: ``/metrics``, the admin dashboard and compliance reports, and
``setup_monitoring`` that wires the whole monitoring stack into an aiohttp app.

Routes (each factory takes the access check from the caller, so the API layer decides who
may see what; the check raises a ``ProblemError`` to refuse):

- ``GET /v1/dashboard``: HTML page (key inventory, rotation compliance, alerts, request
  rates with charts, jobs); ``GET /v1/dashboard.json``: the same data as JSON.
- ``GET /v1/reports/compliance?start=&end=&format=json|html``: a compliance report for
  ``[start, end)`` (RFC 3339; default the last 30 days, at most 400 days).
- ``GET /metrics``: Prometheus text.

HTML answers carry a Content-Security-Policy that forbids loading anything, ``no-store``,
``nosniff`` and ``frame-ancestors 'none'``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web
from prometheus_client import CollectorRegistry

from enclave.audit.records import AuditRecord
from enclave.keys.metadata import KeyMetadata
from enclave.monitoring.alerts import Alert
from enclave.monitoring.metrics import KmsMetrics, metrics_handler, metrics_middleware
from enclave.monitoring.webhook import WebhookSink, webhook_context
from enclave.problems import BadRequest
from enclave.reports.compliance import build_report
from enclave.reports.dashboard import DashboardSources, build_dashboard, render_dashboard_html
from enclave.reports.html import PAGE_CSP, render_report_html, render_report_json
from enclave.scheduler import Scheduler, scheduler_context

AccessCheck = Callable[[web.Request], Awaitable[None] | None]
DEFAULT_REPORT_PERIOD = timedelta(days=30)
MAX_REPORT_PERIOD = timedelta(days=400)

HTML_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


async def _check(require_access: AccessCheck, request: web.Request) -> None:
    result = require_access(request)
    if inspect.isawaitable(result):
        await result


@dataclass(frozen=True)
class ReportSources:
    """What a compliance report is built from. ``records(start, end)`` yields the audit
    records of the period (e.g. read back from the audit sink)."""

    records: Callable[[datetime, datetime], Iterable[AuditRecord]]
    keys: Callable[[], Iterable[KeyMetadata]]
    alerts: Callable[[], Sequence[Alert]]
    metrics: KmsMetrics | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    kms_id: Callable[[], str] = lambda: "enclave-kms"


def _parse_time(request: web.Request, name: str, default: datetime) -> datetime:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an RFC 3339 time") from None
    if value.tzinfo is None:
        raise BadRequest(f"{name} must carry a zone (e.g. Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00
        raise BadRequest(f"{name} is out of range") from None


def _report_period(request: web.Request, now: datetime) -> tuple[datetime, datetime]:
    """The (start, end) the query asks for: by default the ``DEFAULT_REPORT_PERIOD`` up to
    ``now``; ``BadRequest`` for a period that is not start < end within 400 days."""
    end = _parse_time(request, "end", now)
    if end - datetime.min.replace(tzinfo=UTC) < DEFAULT_REPORT_PERIOD:
        raise BadRequest("end is out of range")  # the default start would overflow
    start = _parse_time(request, "start", end - DEFAULT_REPORT_PERIOD)
    if not start < end or end - start > MAX_REPORT_PERIOD:
        raise BadRequest("the period must have start < end and span at most 400 days")
    return start, end


def dashboard_routes(
    sources: DashboardSources,
    require_access: AccessCheck,
    *,
    reports: ReportSources | None = None,
) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.get("/v1/dashboard")
    async def dashboard(request: web.Request) -> web.Response:
        await _check(require_access, request)
        body = render_dashboard_html(build_dashboard(sources))
        return web.Response(
            text=body, content_type="text/html", charset="utf-8", headers=HTML_HEADERS
        )

    @routes.get("/v1/dashboard.json")
    async def dashboard_json(request: web.Request) -> web.Response:
        await _check(require_access, request)
        return web.json_response(build_dashboard(sources).to_dict(), headers=JSON_HEADERS)

    if reports is not None:
        report_sources = reports

        @routes.get("/v1/reports/compliance")
        async def compliance(request: web.Request) -> web.Response:
            # The query first: the access check audits the report as read, which a refused
            # query is not (it is audited as invalid, as a request no one read anything for).
            now = report_sources.clock()
            start, end = _report_period(request, now)
            fmt = request.query.get("format", "json")
            if fmt not in ("json", "html"):
                raise BadRequest("format must be json or html")
            await _check(require_access, request)
            report = build_report(
                report_sources.records(start, end),
                report_sources.keys(),
                report_sources.alerts(),
                report_sources.metrics,
                start,
                end,
                kms_id=report_sources.kms_id(),
                generated_at=now,
            )
            if fmt == "html":
                return web.Response(
                    text=render_report_html(report),
                    content_type="text/html",
                    charset="utf-8",
                    headers=HTML_HEADERS,
                )
            return web.Response(
                body=render_report_json(report),
                content_type="application/json",
                headers=JSON_HEADERS,
            )

    return routes


def metrics_routes(
    registry: CollectorRegistry, require_access: AccessCheck | None = None
) -> web.RouteTableDef:
    routes = web.RouteTableDef()
    routes.get("/metrics")(metrics_handler(registry, require_access=require_access))
    return routes


def setup_monitoring(
    app: web.Application,
    *,
    metrics: KmsMetrics,
    dashboard: DashboardSources,
    require_admin: AccessCheck,
    reports: ReportSources | None = None,
    metrics_access: AccessCheck | None = None,
    scheduler: Scheduler | None = None,
    webhook: WebhookSink | None = None,
) -> None:
    """Wire monitoring into ``app`` before it starts: the metrics middleware (outermost,
    so it sees the status the client gets), ``/metrics``, the dashboard and report routes,
    and the webhook delivery task and scheduler loop as cleanup contexts."""
    app.middlewares.insert(0, metrics_middleware(metrics))  # type: ignore[arg-type]
    app.add_routes(metrics_routes(metrics.registry, metrics_access))
    app.add_routes(dashboard_routes(dashboard, require_admin, reports=reports))
    if webhook is not None:
        app.cleanup_ctx.append(webhook_context(webhook))
    if scheduler is not None:
        app.cleanup_ctx.append(scheduler_context(scheduler))
