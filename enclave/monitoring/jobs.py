"""The seed's routine operations as scheduler jobs (Operational Procedures, Regular
Maintenance): daily health check and access review, weekly policy-compliance check, monthly
compliance report.

Each factory takes the data sources it needs as callables and an ``AuditEmit`` callable,
and returns a ``Job``. A run reads its sources, computes a summary (counts, ids and names
only), records it in the audit log as an ``event`` (operation ``monitoring.<job>``) and
returns it to the scheduler, which keeps it for the dashboard. Findings raise alerts through
the ``AlertManager`` when one is given. ``standard_jobs`` bundles the four with the default
cadences.

Must never: put a secret in a summary, an audit record or an alert.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from enclave.audit.log import AuditLog, AuditStats
from enclave.audit.records import CHECKPOINT_OPERATION, AuditRecord
from enclave.auth.access import ANY_KEY, Grant
from enclave.auth.principals import Level, Principal
from enclave.hsm.stats import OperationSnapshot
from enclave.keys.metadata import KeyMetadata
from enclave.monitoring.alerts import Alert, AlertLevel, AlertManager
from enclave.monitoring.inventory import overdue_keys
from enclave.monitoring.metrics import KmsMetrics
from enclave.monitoring.rules import AlertRules
from enclave.monitoring.webhook import WebhookStats
from enclave.reports.compliance import build_report
from enclave.reports.html import render_report_json
from enclave.reports.model import ReportData
from enclave.scheduler import Daily, FailureCallback, Job, Monthly, Weekly

AuditEmit = Callable[[str, Mapping[str, Any]], Awaitable[object]]
RecordsSource = Callable[[datetime, datetime], Iterable[AuditRecord]]
MAX_LISTED = 20  # ids listed in a summary; the counts are always complete

OP_HEALTH = "monitoring.health_check"
OP_ACCESS_REVIEW = "monitoring.access_review"
OP_POLICY = "monitoring.policy_compliance"
OP_REPORT = "monitoring.compliance_report"


def audit_emitter(audit: AuditLog, principal: str = "kms") -> AuditEmit:
    """Job summaries as audit ``event`` records by the KMS itself."""

    async def emit(operation: str, details: Mapping[str, Any]) -> object:
        return await audit.record(
            principal=principal, operation=operation, outcome="event", details=dict(details)
        )

    return emit


def job_failure_alerter(alerts: AlertManager) -> FailureCallback:
    """``Scheduler(on_failure=...)``: a failed job is an Error alert (one per job/window)."""

    def on_failure(name: str, error: str) -> object:
        return alerts.raise_alert(
            AlertLevel.ERROR,
            "job-failed",
            f"Scheduled job {name} failed",
            error,
            subject=name,
        )

    return on_failure


def _parse_time(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def records_from_lines(read_lines: Callable[[], Iterable[bytes]]) -> RecordsSource:
    """A ``RecordsSource`` over audit lines (``AuditSink.read_lines``): the records whose
    time lies in ``[start, end)``, checkpoints and unreadable lines skipped."""

    def records(start: datetime, end: datetime) -> Iterable[AuditRecord]:
        for line in read_lines():
            if not line.strip():
                continue
            try:
                record = AuditRecord.from_json(json.loads(line))
            except (ValueError, TypeError):
                continue
            at = _parse_time(record.time)
            if at is not None and start <= at < end and record.operation != CHECKPOINT_OPERATION:
                yield record

    return records


# -- daily ---------------------------------------------------------------------------------


def health_check_job(
    *,
    audit: AuditEmit,
    audit_stats: Callable[[], AuditStats],
    hsm_stats: Callable[[], Mapping[str, OperationSnapshot]] | None = None,
    webhook_stats: Callable[[], WebhookStats] | None = None,
    ready: Callable[[], bool] | None = None,
    alerts: AlertManager | None = None,
    rules: AlertRules | None = None,
    max_audit_queue: int = 10_000,
    max_hsm_error_ratio: float = 0.01,
    cadence: Daily | None = None,
) -> Job:
    async def run(now: datetime) -> Mapping[str, Any]:
        problems: list[str] = []
        stats = audit_stats()
        if not stats.healthy:
            problems.append("audit log failing")
        if stats.queue_depth > max_audit_queue:
            problems.append(f"audit queue depth {stats.queue_depth}")
        summary: dict[str, Any] = {
            "audit_healthy": stats.healthy,
            "audit_queue_depth": stats.queue_depth,
            "audit_records_written": stats.written,
        }
        if hsm_stats is not None:
            snapshot = hsm_stats()
            ops = sum(s.count for s in snapshot.values())
            errors = sum(s.errors for s in snapshot.values())
            ratio = errors / ops if ops else 0.0
            summary.update(hsm_operations=ops, hsm_errors=errors, hsm_error_ratio=round(ratio, 5))
            if ratio > max_hsm_error_ratio:
                problems.append(f"HSM error ratio {ratio:.2%}")
            if rules is not None:
                rules.poll_hsm(snapshot, at=now)
        if webhook_stats is not None:
            w = webhook_stats()
            summary.update(alert_webhook_failed=w.failed, alert_webhook_dropped=w.dropped)
            if w.failed or w.dropped:
                problems.append("alert webhook deliveries failing")
        if ready is not None:
            summary["ready"] = ready()
            if not summary["ready"]:
                problems.append("service not ready")
        summary["status"] = "degraded" if problems else "ok"
        summary["problems"] = problems
        await audit(OP_HEALTH, summary)
        if problems and alerts is not None:
            alerts.raise_alert(
                AlertLevel.ERROR,
                "health-check-degraded",
                "Daily health check found problems",
                "; ".join(problems),
                subject="health-check",
                at=now,
            )
        return summary

    return Job(
        "daily-health-check",
        cadence or Daily(time(1, 0)),
        run,
        description="audit log, HSM, alert delivery and readiness (seed: daily health checks)",
    )


def access_review_job(
    *,
    audit: AuditEmit,
    records: RecordsSource,
    top: int = 10,
    period: timedelta = timedelta(days=1),
    cadence: Daily | None = None,
) -> Job:
    async def run(now: datetime) -> Mapping[str, Any]:
        outcomes: collections.Counter[str] = collections.Counter()
        requests: collections.Counter[str] = collections.Counter()
        refused: collections.Counter[str] = collections.Counter()
        for record in records(now - period, now):
            if record.outcome == "event":
                continue
            outcomes[record.outcome] += 1
            requests[record.principal] += 1
            if record.outcome in ("denied", "invalid"):
                refused[record.principal] += 1
        summary = {
            "period_start": (now - period).isoformat(),
            "period_end": now.isoformat(),
            "requests": sum(outcomes.values()),
            "allowed": outcomes["allowed"],
            "denied": outcomes["denied"],
            "invalid": outcomes["invalid"],
            "errors": outcomes["error"],
            "principals": len(requests),
            "top_principals": [
                {"principal": p, "requests": n} for p, n in requests.most_common(top)
            ],
            "top_refused": [{"principal": p, "refused": n} for p, n in refused.most_common(top)],
        }
        await audit(OP_ACCESS_REVIEW, summary)
        return summary

    return Job(
        "daily-access-review",
        cadence or Daily(time(1, 15)),
        run,
        description="who did what in the last day, refusals first (seed: access monitoring)",
    )


# -- weekly --------------------------------------------------------------------------------


def policy_compliance_job(
    *,
    audit: AuditEmit,
    keys: Callable[[], Iterable[KeyMetadata]],
    grants: Callable[[], Iterable[Grant]],
    principals: Callable[[], Iterable[Principal]],
    records: RecordsSource,
    alerts: AlertManager | None = None,
    unused_grant_days: int = 90,
    admin_inactive_days: int = 30,
    cadence: Weekly | None = None,
) -> Job:
    async def run(now: datetime) -> Mapping[str, Any]:
        overdue = overdue_keys(keys(), now)
        grant_window = now - timedelta(days=unused_grant_days)
        admin_window = now - timedelta(days=admin_inactive_days)
        used: set[tuple[str, str]] = set()
        active_any: set[str] = set()
        recent_admin_activity: set[str] = set()
        for record in records(min(grant_window, admin_window), now):
            at = _parse_time(record.time)
            if at is None:
                continue
            if at >= admin_window:
                recent_admin_activity.add(record.principal)
            if at >= grant_window and record.outcome == "allowed":
                active_any.add(record.principal)
                if record.key_id:
                    used.add((record.principal, record.key_id))
        unused = []
        for grant in grants():
            if grant.granted_at > grant_window:
                continue  # too young to be judged unused
            in_use = (
                grant.principal_id in active_any
                if grant.key_id == ANY_KEY
                else (grant.principal_id, grant.key_id) in used
            )
            if not in_use:
                unused.append(grant)
        idle_admins = [
            p
            for p in principals()
            if p.active
            and (p.kind == "admin" or p.system_level == Level.SYSTEM_ADMIN)
            and p.created_at <= admin_window
            and p.id not in recent_admin_activity
        ]
        summary = {
            "keys_overdue_rotation": len(overdue),
            "overdue_key_ids": [s.key_id for s in overdue[:MAX_LISTED]],
            "grants_unused": len(unused),
            "unused_grants": [
                {"principal": g.principal_id, "key_id": g.key_id, "level": int(g.level)}
                for g in unused[:MAX_LISTED]
            ],
            "admins_inactive": len(idle_admins),
            "inactive_admin_ids": [p.id for p in idle_admins[:MAX_LISTED]],
            "unused_grant_days": unused_grant_days,
            "admin_inactive_days": admin_inactive_days,
        }
        findings = len(overdue) + len(unused) + len(idle_admins)
        summary["findings"] = findings
        summary["status"] = "findings" if findings else "compliant"
        await audit(OP_POLICY, summary)
        if findings and alerts is not None:
            alerts.raise_alert(
                AlertLevel.WARNING,
                "policy-compliance-findings",
                "Weekly policy-compliance check found issues",
                f"{len(overdue)} keys past rotation, {len(unused)} grants unused for "
                f"{unused_grant_days} days, {len(idle_admins)} admins inactive for "
                f"{admin_inactive_days} days",
                subject="policy-compliance",
                at=now,
            )
        return summary

    return Job(
        "weekly-policy-compliance",
        cadence or Weekly(0, time(2, 0)),
        run,
        description="rotation schedule, unused grants, inactive admins (seed: policy compliance)",
    )


# -- monthly -------------------------------------------------------------------------------


def previous_month(now: datetime) -> tuple[datetime, datetime]:
    end = datetime(now.year, now.month, 1, tzinfo=UTC)
    start = (
        datetime(end.year - 1, 12, 1, tzinfo=UTC)
        if end.month == 1
        else end.replace(month=end.month - 1)
    )
    return start, end


def compliance_report_job(
    *,
    audit: AuditEmit,
    records: RecordsSource,
    keys: Callable[[], Iterable[KeyMetadata]],
    alerts: Callable[[], Sequence[Alert]],
    store: Callable[[ReportData], Awaitable[object]],
    metrics: KmsMetrics | None = None,
    kms_id: str = "enclave-kms",
    cadence: Monthly | None = None,
) -> Job:
    """Builds the previous calendar month's ``ReportData`` and hands it to ``store``; the
    audit record carries the SHA-256 of its JSON, so a stored report can be checked."""

    async def run(now: datetime) -> Mapping[str, Any]:
        start, end = previous_month(now)
        report = build_report(
            records(start, end),
            keys(),
            alerts(),
            metrics,
            start,
            end,
            kms_id=kms_id,
            generated_at=now,
        )
        await store(report)
        summary = {
            "period_start": report.period_start,
            "period_end": report.period_end,
            "sha256": hashlib.sha256(render_report_json(report)).hexdigest(),
            **{k: v for k, v in report.totals.items()},
        }
        await audit(OP_REPORT, summary)
        return summary

    return Job(
        "monthly-compliance-report",
        cadence or Monthly(1, time(3, 0)),
        run,
        description="compliance report for the previous month (seed: compliance reporting)",
    )


def standard_jobs(
    *,
    audit: AuditEmit,
    audit_stats: Callable[[], AuditStats],
    records: RecordsSource,
    keys: Callable[[], Iterable[KeyMetadata]],
    grants: Callable[[], Iterable[Grant]],
    principals: Callable[[], Iterable[Principal]],
    recent_alerts: Callable[[], Sequence[Alert]],
    store_report: Callable[[ReportData], Awaitable[object]],
    hsm_stats: Callable[[], Mapping[str, OperationSnapshot]] | None = None,
    webhook_stats: Callable[[], WebhookStats] | None = None,
    ready: Callable[[], bool] | None = None,
    alerts: AlertManager | None = None,
    rules: AlertRules | None = None,
    metrics: KmsMetrics | None = None,
    kms_id: str = "enclave-kms",
) -> list[Job]:
    """The seed's routine jobs with their default cadences (UTC)."""
    return [
        health_check_job(
            audit=audit,
            audit_stats=audit_stats,
            hsm_stats=hsm_stats,
            webhook_stats=webhook_stats,
            ready=ready,
            alerts=alerts,
            rules=rules,
        ),
        access_review_job(audit=audit, records=records),
        policy_compliance_job(
            audit=audit,
            keys=keys,
            grants=grants,
            principals=principals,
            records=records,
            alerts=alerts,
        ),
        compliance_report_job(
            audit=audit,
            records=records,
            keys=keys,
            alerts=recent_alerts,
            store=store_report,
            metrics=metrics,
            kms_id=kms_id,
        ),
    ]
