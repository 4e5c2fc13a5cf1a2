"""/metrics: Prometheus text that parses, with every family, bounded labels, one registry
per app."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from enclave.audit.log import AuditStats
from enclave.hsm.stats import HsmStats
from enclave.keys.metadata import VersionState
from enclave.monitoring.alerts import AlertLevel, AlertManager
from enclave.monitoring.metrics import KmsMetrics, MetricsSources, metrics_middleware
from enclave.monitoring.webhook import WebhookStats
from enclave.problems import problem_middleware
from enclave.reports.routes import metrics_routes
from tests.monitoring.support import T0, Clock, make_key


def build_app() -> tuple[web.Application, KmsMetrics, AlertManager]:
    clock = Clock(T0)
    hsm = HsmStats()
    for seconds in (0.0004, 0.002, 0.02):
        hsm.record("encrypt", seconds, seconds, ok=True)
    hsm.record("sign", 0.3, 0.3, ok=False)
    keys = [
        make_key(1, created=T0 - timedelta(days=100)),
        make_key(2, created=T0 - timedelta(days=5)),
        make_key(3, created=T0 - timedelta(days=5), state=VersionState.DISABLED),
    ]
    alerts = AlertManager(clock=clock)
    alerts.raise_alert(AlertLevel.WARNING, "w", "warn")
    alerts.raise_alert(AlertLevel.CRITICAL, "c", "crit")
    registry = CollectorRegistry()
    metrics = KmsMetrics(
        registry,
        MetricsSources(
            keys=lambda: keys,
            hsm=hsm.snapshot,
            audit=lambda: AuditStats(
                queue_depth=7, written=100, last_seq=99, healthy=True, batches=3
            ),
            alert_counts=alerts.counts,
            webhook=lambda: WebhookStats(0, 2, 1, 0, 3),
            now=clock,
        ),
    )
    app = web.Application(middlewares=[metrics_middleware(metrics), problem_middleware])
    routes = web.RouteTableDef()

    @routes.get("/v1/keys/{key_id}")
    async def describe(request: web.Request) -> web.Response:
        if request.match_info["key_id"] == "missing":
            raise web.HTTPNotFound()
        return web.json_response({"ok": True})

    @routes.post("/v1/keys/{key_id}/encrypt")
    async def encrypt(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app.add_routes(routes)
    app.add_routes(metrics_routes(registry))
    return app, metrics, alerts


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_metrics_text_parses_and_has_every_family(
    aiohttp_client: Callable[..., Any],
) -> None:
    app, _, _ = build_app()
    client = await aiohttp_client(app)
    for _ in range(3):
        assert (await client.get(f"/v1/keys/key_{'a' * 32}")).status == 200
    assert (await client.get("/v1/keys/missing")).status == 404
    assert (await client.post(f"/v1/keys/key_{'b' * 32}/encrypt")).status == 500
    assert (await client.get("/nowhere")).status == 404
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = await response.text()
    fams = families(text)
    for name in (
        "kms_requests",
        "kms_request_duration_seconds",
        "kms_request_errors",
        "kms_keys",
        "kms_keys_compromised",
        "kms_rotation_overdue_keys",
        "kms_rotation_scheduled_keys",
        "kms_rotation_compliance_ratio",
        "kms_hsm_operation_duration_seconds",
        "kms_hsm_operation_errors",
        "kms_audit_queue_depth",
        "kms_audit_healthy",
        "kms_audit_records_written",
        "kms_alerts",
        "kms_alert_webhook_deliveries",
    ):
        assert name in fams, name

    def value(family: str, sample: str, **labels: str) -> float:
        for s in fams[family].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError((family, sample, labels))

    route = "/v1/keys/{key_id}"
    assert value("kms_requests", "kms_requests_total", route=route, status="200") == 3
    assert value("kms_requests", "kms_requests_total", route=route, status="404") == 1
    assert value("kms_requests", "kms_requests_total", route="unmatched", status="404") == 1
    assert (
        value(
            "kms_request_errors",
            "kms_request_errors_total",
            route="/v1/keys/{key_id}/encrypt",
            **{"class": "server"},
        )
        == 1
    )
    assert (
        value(
            "kms_request_duration_seconds",
            "kms_request_duration_seconds_count",
            route=route,
            method="GET",
        )
        == 4
    )
    assert "key_aaaa" not in text  # raw paths never become labels
    assert value("kms_keys", "kms_keys", state="active") == 2
    assert value("kms_keys", "kms_keys", state="disabled") == 1
    assert value("kms_rotation_overdue_keys", "kms_rotation_overdue_keys") == 1
    assert value("kms_rotation_compliance_ratio", "kms_rotation_compliance_ratio") == 0.5
    assert (
        value(
            "kms_hsm_operation_duration_seconds",
            "kms_hsm_operation_duration_seconds_count",
            operation="encrypt",
        )
        == 3
    )
    assert (
        value(
            "kms_hsm_operation_duration_seconds",
            "kms_hsm_operation_duration_seconds_bucket",
            operation="encrypt",
            le="0.001",
        )
        == 1
    )
    assert (
        value("kms_hsm_operation_errors", "kms_hsm_operation_errors_total", operation="sign") == 1
    )
    assert value("kms_audit_queue_depth", "kms_audit_queue_depth") == 7
    assert value("kms_alerts", "kms_alerts_total", level="critical") == 1
    assert value("kms_alerts", "kms_alerts_total", level="error") == 0


def test_each_app_has_its_own_registry() -> None:
    _app1, m1, _ = build_app()
    _app2, m2, _ = build_app()
    m1.observe("GET", "/x", 200, 0.01)
    assert m1.registry is not m2.registry
    assert m2.route_stats() == []
    stats = m1.route_stats()
    assert stats[0].count == 1 and stats[0].p95_seconds == 0.01
    series = m1.rates.series(T0, 5)
    assert len(series) == 5 and series[-1].requests == 1


def test_rates_use_the_wall_clock_by_default() -> None:
    metrics = KmsMetrics(CollectorRegistry())
    metrics.observe("POST", "/v1/encrypt", 200, 0.001)
    metrics.observe("POST", "/v1/encrypt", 503, 0.002)
    last = metrics.rates.series(datetime.now(UTC), 2)[-1]
    assert (last.requests, last.errors) == (2, 1)
    errors = metrics.registry.get_sample_value(
        "kms_request_errors_total", {"method": "POST", "route": "/v1/encrypt", "class": "server"}
    )
    assert errors == 1
