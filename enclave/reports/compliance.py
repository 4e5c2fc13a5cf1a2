"""The compliance report builder: audit records, keys, alerts and metrics in, ``ReportData``
out (the seed's Compliance Auditing Scenario: log collection -> audit analysis -> report).

``build_report`` is a pure function of its inputs and the period ``[start, end)``: no
clock, no I/O. Audit records outside the period are ignored; alerts likewise. Which audit
operations count as key lifecycle events and which as policy changes is data
(``Taxonomy``), defaulting to the operation names of ``enclave.kms.guard`` and
``enclave.governance``.

Must never: copy an audit record's ``details`` or ``request_digest`` into a report.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from enclave.audit.records import CHECKPOINT_OPERATION, AuditRecord
from enclave.hsm.stats import LATENCY_BUCKETS_SECONDS, OperationSnapshot
from enclave.keys.metadata import KeyMetadata
from enclave.monitoring.alerts import Alert, AlertLevel
from enclave.monitoring.inventory import is_compromised, key_state, rotation_status
from enclave.monitoring.metrics import KmsMetrics, RatePoint, RouteStats, quantile_from_buckets
from enclave.reports.model import (
    AuditEvent,
    DailyCount,
    Incident,
    KeyRow,
    OperationCount,
    PerformanceRow,
    PrincipalActivity,
    RatePointRow,
    ReportData,
    RotationRow,
)

RowT = TypeVar("RowT")
MAX_EVENTS = 1000  # per event list; the rest is counted in ``truncated``
MAX_RATE_POINTS = 24 * 60

LIFECYCLE_OPERATIONS = frozenset(
    {
        "keys.create",
        "keys.import",
        "keys.enable",
        "keys.disable",
        "keys.expire",
        "keys.rotate",
        "keys.schedule_deletion",
        "keys.cancel_deletion",
        "keys.destroy",
        "keys.compromise",
        "master_key.rotate",
        "emergency.rotate",
        "emergency.disable_key",
    }
)
POLICY_OPERATIONS = frozenset(
    {
        "principals.register",
        "principals.register_workload",
        "principals.onboard",
        "principals.disable",
        "principals.enable",
        "principals.isolate",
        "grants.grant",
        "grants.revoke",
        "keys.set_rotation",
        "keys.set_release_policy",
        "quorum.change",
        "admins.change",
        "measurements.change",
        "emergency.isolate",
    }
)
POLICY_PREFIXES = ("governance.", "policy.")


@dataclass(frozen=True)
class Taxonomy:
    lifecycle: frozenset[str] = LIFECYCLE_OPERATIONS
    policy: frozenset[str] = POLICY_OPERATIONS
    policy_prefixes: tuple[str, ...] = POLICY_PREFIXES

    def is_lifecycle(self, operation: str) -> bool:
        return operation in self.lifecycle

    def is_policy(self, operation: str) -> bool:
        return operation in self.policy or operation.startswith(self.policy_prefixes)


@dataclass(frozen=True)
class PerformanceInput:
    """What the report's performance section is built from (a ``KmsMetrics`` works too)."""

    routes: Sequence[RouteStats] = ()
    hsm: Mapping[str, OperationSnapshot] = field(default_factory=dict)
    rates: Sequence[RatePoint] = ()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _record_time(record: AuditRecord) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(record.time.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _event(record: AuditRecord) -> AuditEvent:
    return AuditEvent(
        record.seq,
        record.time,
        record.principal,
        record.operation,
        record.outcome,
        record.key_id,
        record.key_version,
    )


def _performance(
    metrics: PerformanceInput | KmsMetrics | None, start: datetime, end: datetime
) -> PerformanceInput:
    if metrics is None:
        return PerformanceInput()
    if isinstance(metrics, PerformanceInput):
        return metrics
    minutes = max(1, min(MAX_RATE_POINTS, int((end - start).total_seconds() // 60)))
    hsm = metrics.sources.hsm() if metrics.sources.hsm is not None else {}
    return PerformanceInput(metrics.route_stats(), hsm, metrics.rates.series(end, minutes))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def build_report(  # noqa: PLR0917 (the documented positional signature)
    audit_records: Iterable[AuditRecord],
    keys: Iterable[KeyMetadata],
    alerts: Iterable[Alert],
    metrics: PerformanceInput | KmsMetrics | None,
    start: datetime,
    end: datetime,
    *,
    kms_id: str = "enclave-kms",
    title: str = "Enclave KMS compliance report",
    generated_at: datetime | None = None,
    taxonomy: Taxonomy | None = None,
) -> ReportData:
    if start.tzinfo is None or end.tzinfo is None or end <= start:
        raise ValueError("the report period needs zone-aware start < end")
    tax = taxonomy or Taxonomy()
    truncated: dict[str, int] = {}

    lifecycle: list[AuditEvent] = []
    policy: list[AuditEvent] = []
    lifecycle_counts: collections.Counter[str] = collections.Counter()
    totals: collections.Counter[str] = collections.Counter()
    per_principal: dict[str, dict[str, int]] = {}
    principal_keys: dict[str, set[str]] = collections.defaultdict(set)
    last_seen: dict[str, str] = {}
    per_operation: dict[str, list[int]] = {}
    daily: dict[str, list[int]] = {}

    for record in audit_records:
        if record.operation == CHECKPOINT_OPERATION:
            continue
        at = _record_time(record)
        if at is None or not start <= at < end:
            continue
        totals["records"] += 1
        totals[record.outcome] += 1
        if tax.is_lifecycle(record.operation):
            lifecycle_counts[record.operation] += 1
            if record.outcome == "allowed":
                lifecycle_counts["completed"] += 1
            _append(lifecycle, _event(record), "key_lifecycle", truncated)
        if tax.is_policy(record.operation):
            _append(policy, _event(record), "policy_changes", truncated)
        if record.outcome == "event":
            continue  # the enclave's own events are not access
        stats = per_principal.setdefault(
            record.principal, {"requests": 0, "allowed": 0, "denied": 0, "invalid": 0, "error": 0}
        )
        stats["requests"] += 1
        stats[record.outcome] = stats.get(record.outcome, 0) + 1
        if record.key_id:
            principal_keys[record.principal].add(record.key_id)
        last_seen[record.principal] = max(last_seen.get(record.principal, ""), iso(at))
        op = per_operation.setdefault(record.operation, [0, 0])
        op[0] += 1
        op[1] += int(record.outcome in ("denied", "invalid"))
        day = daily.setdefault(at.date().isoformat(), [0, 0, 0])
        if record.outcome == "allowed":
            day[0] += 1
        elif record.outcome in ("denied", "invalid"):
            day[1] += 1
        else:
            day[2] += 1

    access_by_principal = tuple(
        PrincipalActivity(
            principal,
            s["requests"],
            s["allowed"],
            s["denied"],
            s["invalid"],
            s["error"],
            len(principal_keys[principal]),
            last_seen[principal],
        )
        for principal, s in sorted(
            per_principal.items(), key=lambda kv: (-kv[1]["requests"], kv[0])
        )
    )
    access_by_operation = tuple(
        OperationCount(name, c[0], c[1])
        for name, c in sorted(per_operation.items(), key=lambda kv: (-kv[1][0], kv[0]))
    )
    access_daily = tuple(_daily_rows(daily, start, end))

    incidents: list[Incident] = []
    by_level = dict.fromkeys((lvl.label for lvl in AlertLevel), 0)
    for alert in sorted(alerts, key=lambda a: a.at):
        if not start <= alert.at < end:
            continue
        by_level[alert.level.label] += 1
        if alert.level >= AlertLevel.WARNING:
            _append(
                incidents,
                Incident(
                    alert.id,
                    iso(alert.at),
                    alert.level.label,
                    alert.kind,
                    alert.title,
                    alert.subject,
                ),
                "security_incidents",
                truncated,
            )

    key_list = sorted(keys, key=lambda k: k.key_id)
    inventory = tuple(
        KeyRow(
            k.key_id,
            k.owner,
            k.purpose.value,
            k.algorithm.value,
            k.security_level.value,
            key_state(k),
            len(k.versions),
            is_compromised(k),
            iso(k.created_at),
            None if k.expires_at is None else iso(k.expires_at),
        )
        for k in key_list
    )
    rotation_rows = []
    for k in key_list:
        st = rotation_status(k, end)
        rotation_rows.append(
            RotationRow(
                st.key_id,
                st.owner,
                key_state(k),
                st.period_days,
                None if st.last_rotated is None else iso(st.last_rotated),
                None if st.due is None else iso(st.due),
                st.overdue,
                st.days_overdue,
            )
        )
    scheduled = [r for r in rotation_rows if r.due is not None]
    overdue = sum(r.overdue for r in scheduled)
    ratio = (len(scheduled) - overdue) / len(scheduled) if scheduled else 1.0

    perf = _performance(metrics, start, end)
    routes = tuple(
        PerformanceRow(
            f"{r.method} {r.route}",
            r.count,
            r.errors,
            _ms(r.mean_seconds) or 0.0,
            _ms(r.p95_seconds),
        )
        for r in perf.routes
    )
    hsm = tuple(
        PerformanceRow(
            name,
            snap.count,
            snap.errors,
            _ms(snap.mean_seconds) or 0.0,
            _ms(_hsm_p95(snap)),
        )
        for name, snap in sorted(perf.hsm.items())
    )
    rates = tuple(
        RatePointRow(iso(p.minute), p.requests, p.errors)
        for p in perf.rates[-MAX_RATE_POINTS:]
        if start <= p.minute < end
    )

    summary = {
        "records": totals["records"],
        "allowed": totals["allowed"],
        "denied": totals["denied"],
        "invalid": totals["invalid"],
        "errors": totals["error"],
        "events": totals["event"],
        "principals": len(per_principal),
        "lifecycle_events": sum(v for k, v in lifecycle_counts.items() if k != "completed"),
        "policy_changes": len(policy) + truncated.get("policy_changes", 0),
        "incidents": sum(n for lvl, n in by_level.items() if lvl != "info"),
        "critical_alerts": by_level["critical"],
        "keys": len(key_list),
        "rotation_scheduled": len(scheduled),
        "rotation_overdue": overdue,
    }
    return ReportData(
        title=title,
        kms_id=kms_id,
        generated_at=iso(generated_at or end),
        period_start=iso(start),
        period_end=iso(end),
        totals=summary,
        lifecycle_counts=dict(sorted(lifecycle_counts.items())),
        key_lifecycle=tuple(lifecycle),
        access_by_principal=access_by_principal,
        access_by_operation=access_by_operation,
        access_daily=access_daily,
        policy_changes=tuple(policy),
        incidents_by_level=by_level,
        incidents=tuple(incidents),
        rotation_compliance_ratio=round(ratio, 4),
        rotation=tuple(rotation_rows),
        inventory=inventory,
        performance_routes=routes,
        performance_hsm=hsm,
        request_rate=rates,
        truncated=truncated,
    )


def _append(rows: list[RowT], row: RowT, section: str, truncated: dict[str, int]) -> None:
    if len(rows) < MAX_EVENTS:
        rows.append(row)
    else:
        truncated[section] = truncated.get(section, 0) + 1


def _daily_rows(daily: Mapping[str, list[int]], start: datetime, end: datetime) -> list[DailyCount]:
    """One row per day of the period (zeros included, so charts have no holes); at most
    400 days, beyond that only the days with records."""
    first, last = (
        start.astimezone(UTC).date(),
        (end - timedelta(microseconds=1)).astimezone(UTC).date(),
    )
    days = (last - first).days + 1
    if days > 400:
        names = sorted(daily)
    else:
        names = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    return [DailyCount(n, *daily.get(n, [0, 0, 0])) for n in names]


def _hsm_p95(snap: OperationSnapshot) -> float | None:
    per_bucket = []
    previous = 0
    for cumulative in snap.bucket_counts[: len(LATENCY_BUCKETS_SECONDS)]:
        per_bucket.append(cumulative - previous)
        previous = cumulative
    return quantile_from_buckets(LATENCY_BUCKETS_SECONDS, per_bucket, snap.count, 0.95)
