"""The compliance report: sections, JSON round trip, client rendering, no secrets, no
network references; the HTTP routes and their access check."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web

from enclave.problems import ProblemError, problem_middleware
from enclave.reports.compliance import build_report
from enclave.reports.dashboard import DashboardSources, build_dashboard, render_dashboard_html
from enclave.reports.html import render_report_html
from enclave.reports.model import ReportData, ReportFormatError
from enclave.reports.routes import ReportSources, setup_monitoring
from kms.report import render_report
from tests.monitoring.support import T0
from tests.reports.support import ALERT_PRINCIPAL, SECRET_DIGEST, World, build_world

NETWORK_REFERENCE = re.compile(r"https?://|<script|\bsrc\s*=|@import|url\(", re.IGNORECASE)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world()


def make_report(world: World) -> ReportData:
    start, end = T0 - timedelta(days=7), T0 + timedelta(minutes=1)
    return build_report(
        world.records_between(start, end),
        world.keys,
        world.alerts.recent(),
        world.metrics,
        start,
        end,
        kms_id="kms-test",
        generated_at=T0,
    )


def test_report_covers_every_section(world: World) -> None:
    report = make_report(world)
    data = report.to_dict()
    assert set(data) >= {
        "key_lifecycle",
        "access_patterns",
        "policy_changes",
        "security_incidents",
        "rotation_compliance",
        "performance",
    }
    assert report.lifecycle_counts["keys.create"] == 1
    assert {e.operation for e in report.key_lifecycle} == {
        "keys.create",
        "keys.disable",
        "keys.rotate",
    }
    assert {e.operation for e in report.policy_changes} == {"grants.grant", "principals.isolate"}
    principals = {p.principal: p for p in report.access_by_principal}
    assert principals[ALERT_PRINCIPAL].invalid == 12
    assert principals["prn_auction"].requests > 500
    assert len(report.access_daily) == 8 and sum(d.allowed for d in report.access_daily) > 500
    assert report.incidents_by_level["critical"] == 1
    assert {i.kind for i in report.incidents} >= {
        "failed-access-burst",
        "rotation-overdue",
        "audit-write-failure",
    }
    overdue = [r.key_id for r in report.rotation if r.overdue]
    assert overdue == [world.keys[0].key_id]
    assert report.rotation_compliance_ratio == 0.5  # keys 1 and 2 scheduled and active
    assert [r.name for r in report.performance_hsm] == ["encrypt", "sign"]
    assert report.performance_routes[0].count > 1000
    assert sum(p.requests for p in report.request_rate) > 1000
    assert report.totals["rotation_overdue"] == 1


def test_json_round_trip_and_client_rendering(world: World) -> None:
    report = make_report(world)
    text = json.dumps(report.to_dict())
    assert SECRET_DIGEST not in text and "d" * 64 not in text
    again = ReportData.from_dict(json.loads(text))
    assert again == report
    assert json.loads(render_report(json.loads(text), "json")) == report.to_dict()
    page = render_report(json.loads(text), "html").decode()
    assert page == render_report_html(report)
    with pytest.raises(ValueError):
        render_report(json.loads(text), "pdf")
    broken = json.loads(text)
    broken["access_patterns"]["extra"] = 1
    with pytest.raises(ReportFormatError):
        render_report(broken, "html")


def test_pages_are_self_contained(world: World) -> None:
    report_page = render_report_html(make_report(world))
    dashboard_page = render_dashboard_html(
        build_dashboard(
            DashboardSources(
                keys=lambda: world.keys,
                alerts=world.alerts.recent,
                metrics=world.metrics,
                clock=world.clock,
            )
        )
    )
    for page in (report_page, dashboard_page):
        assert "http://" not in page and "https://" not in page
        assert "<script" not in page.lower()
        assert NETWORK_REFERENCE.search(page) is None
        assert "<svg" in page and "Content-Security-Policy" in page
        assert SECRET_DIGEST not in page


def test_labels_are_escaped() -> None:
    from enclave.reports.charts import bar_chart

    svg = bar_chart([("<script>alert(1)</script>", 3.0)], title='"><img>')
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "<img>" not in svg


class Forbidden(ProblemError):
    status = 403
    slug = "access-denied"
    title = "Access denied"


def admin_only(request: web.Request) -> None:
    if request.headers.get("X-Test-Admin") != "yes":
        raise Forbidden("the dashboard needs system administration (level 4)")


async def test_routes_require_the_callers_access_check(
    world: World, aiohttp_client: Callable[..., Any]
) -> None:
    app = web.Application(middlewares=[problem_middleware])
    setup_monitoring(
        app,
        metrics=world.metrics,
        dashboard=DashboardSources(
            keys=lambda: world.keys,
            alerts=world.alerts.recent,
            metrics=world.metrics,
            clock=world.clock,
        ),
        reports=ReportSources(
            records=world.records_between,
            keys=lambda: world.keys,
            alerts=world.alerts.recent,
            metrics=world.metrics,
            clock=world.clock,
        ),
        require_admin=admin_only,
    )
    client = await aiohttp_client(app)
    denied = await client.get("/v1/dashboard")
    assert denied.status == 403
    assert denied.headers["Content-Type"] == "application/problem+json"
    assert (await client.get("/v1/reports/compliance")).status == 403
    admin = {"X-Test-Admin": "yes"}
    page = await client.get("/v1/dashboard", headers=admin)
    assert page.status == 200 and page.content_type == "text/html"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"
    assert world.keys[0].key_id in await page.text()
    data = await (await client.get("/v1/dashboard.json", headers=admin)).json()
    assert data["keys_total"] == 4 and data["rotation_overdue"] == 1
    report = await client.get(
        "/v1/reports/compliance?start=2025-02-24T00:00:00Z&end=2025-03-03T08:01:00Z",
        headers=admin,
    )
    assert report.status == 200
    body = await report.json()
    assert ReportData.from_dict(body).totals["lifecycle_events"] == 3
    html_report = await client.get("/v1/reports/compliance?format=html", headers=admin)
    assert html_report.status == 200 and "<svg" in await html_report.text()
    for bad in (
        "?format=pdf",
        "?start=yesterday",
        "?start=2025-03-04T00:00:00",
        "?start=2020-01-01T00:00:00Z",
    ):
        answer = await client.get("/v1/reports/compliance" + bad, headers=admin)
        assert answer.status == 400, bad
    metrics = await client.get("/metrics")
    assert metrics.status == 200 and "kms_requests_total" in await metrics.text()
