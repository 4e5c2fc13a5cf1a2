"""The routine jobs: each reads its sources, audits its summary, alerts on findings."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from enclave.audit.log import AuditStats
from enclave.audit.records import AuditRecord
from enclave.auth.access import Grant
from enclave.auth.principals import Level, Principal
from enclave.hsm.stats import HsmStats
from enclave.monitoring.alerts import AlertManager
from enclave.monitoring.jobs import (
    OP_ACCESS_REVIEW,
    OP_HEALTH,
    OP_POLICY,
    OP_REPORT,
    previous_month,
    standard_jobs,
)
from enclave.reports.model import ReportData
from enclave.scheduler import Scheduler
from tests.monitoring.support import T0, Clock, make_key


def record(
    seq: int,
    days_ago: float,
    principal: str,
    outcome: str = "allowed",
    key_id: str | None = None,
    operation: str = "keys.encrypt",
) -> AuditRecord:
    return AuditRecord(
        seq=seq,
        time=(T0 - timedelta(days=days_ago)).isoformat(),
        principal=principal,
        operation=operation,
        outcome=outcome,
        key_id=key_id,
    )


def principal(pid: str, kind: str, level: Level | None, created_days_ago: int) -> Principal:
    return Principal(
        pid,
        pid,
        kind,
        b"\x01" * 32,
        level,  # type: ignore[arg-type]
        T0 - timedelta(days=created_days_ago),
    )


async def test_standard_jobs_audit_their_results_and_raise_findings() -> None:
    clock = Clock(T0)
    key_old = make_key(1, created=T0 - timedelta(days=120))
    key_new = make_key(2, created=T0 - timedelta(days=3))
    records = [
        record(1, 0.5, "prn_svc", key_id=key_new.key_id),
        record(2, 0.4, "prn_svc", "denied", key_id=key_old.key_id),
        record(3, 0.3, "prn_bad", "invalid"),
        record(4, 0.2, "prn_bad", "invalid"),
        record(5, 10, "prn_admin_active", operation="grants.grant"),
        record(6, 100, "prn_svc", key_id=key_old.key_id),  # older than 90 days
    ]
    grants = [
        Grant(
            "prn_svc", key_new.key_id, Level.USE_KEY, "prn_admin_active", T0 - timedelta(days=100)
        ),
        Grant(
            "prn_svc", key_old.key_id, Level.USE_KEY, "prn_admin_active", T0 - timedelta(days=100)
        ),
        Grant("prn_gone", "*", Level.USE_KEY, "prn_admin_active", T0 - timedelta(days=200)),
        Grant(
            "prn_fresh", key_old.key_id, Level.USE_KEY, "prn_admin_active", T0 - timedelta(days=5)
        ),
    ]
    principals = [
        principal("prn_admin_active", "admin", Level.SYSTEM_ADMIN, 300),
        principal("prn_admin_idle", "admin", Level.SYSTEM_ADMIN, 300),
        principal("prn_admin_new", "admin", Level.SYSTEM_ADMIN, 2),
        principal("prn_svc", "service", None, 300),
    ]
    audited: list[tuple[str, dict[str, Any]]] = []
    stored: list[ReportData] = []

    async def audit(op: str, details: Any) -> None:
        audited.append((op, dict(details)))

    async def store(report: ReportData) -> None:
        stored.append(report)

    hsm = HsmStats()
    hsm.record("encrypt", 0.001, 0.001, ok=True)
    alerts = AlertManager(clock=clock)
    jobs = standard_jobs(
        audit=audit,
        audit_stats=lambda: AuditStats(0, 10, 9, False, 1),
        records=lambda s, e: [r for r in records if s <= datetime.fromisoformat(r.time) < e],
        keys=lambda: [key_old, key_new],
        grants=lambda: grants,
        principals=lambda: principals,
        recent_alerts=alerts.recent,
        store_report=store,
        hsm_stats=hsm.snapshot,
        alerts=alerts,
    )
    scheduler = Scheduler(clock=clock)
    for job in jobs:
        scheduler.add(job, first_run=T0)
    results = {r.job: r for r in await scheduler.run_due(T0)}
    assert all(r.ok for r in results.values()), results
    ops = [op for op, _ in audited]
    assert sorted(ops) == sorted([OP_HEALTH, OP_ACCESS_REVIEW, OP_POLICY, OP_REPORT])
    health = results["daily-health-check"].summary
    assert health["status"] == "degraded" and "audit log failing" in health["problems"]
    review = results["daily-access-review"].summary
    assert review["requests"] == 4 and review["denied"] == 1 and review["invalid"] == 2
    assert review["top_refused"][0] == {"principal": "prn_bad", "refused": 2}
    policy = results["weekly-policy-compliance"].summary
    assert policy["overdue_key_ids"] == [key_old.key_id]
    assert {(g["principal"], g["key_id"]) for g in policy["unused_grants"]} == {
        ("prn_svc", key_old.key_id),
        ("prn_gone", "*"),
    }
    assert policy["inactive_admin_ids"] == ["prn_admin_idle"]
    kinds = {a.kind for a in alerts.recent()}
    assert {"health-check-degraded", "policy-compliance-findings"} <= kinds
    assert len(stored) == 1
    assert (stored[0].period_start, stored[0].period_end) == (
        "2025-02-01T00:00:00Z",
        "2025-03-01T00:00:00Z",
    )
    assert len(results["monthly-compliance-report"].summary["sha256"]) == 64


def test_previous_month_wraps_the_year() -> None:
    start, end = previous_month(T0.replace(month=1, day=15))
    assert (start.year, start.month, end.year, end.month) == (2024, 12, 2025, 1)
