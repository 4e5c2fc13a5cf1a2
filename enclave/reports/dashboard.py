"""The admin dashboard: a snapshot of live state, rendered as one self-contained page.

``build_dashboard(sources)`` reads everything through the callables of
``DashboardSources`` (no globals, nothing cached) into a frozen ``DashboardData``;
``render_dashboard_html`` turns it into HTML (inline CSS and SVG, no script, refreshes
itself with a ``<meta>`` tag). Sections: status tiles, key inventory, rotation compliance,
recent alerts, request rates (charts), routine jobs.

Must never: show a secret. Keys appear by id, owner, purpose, algorithm and state; alerts
by their (already secret-free) title and subject.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from enclave.audit.log import AuditStats
from enclave.hsm.stats import OperationSnapshot
from enclave.keys.metadata import KeyMetadata
from enclave.monitoring.alerts import Alert, AlertLevel
from enclave.monitoring.inventory import count_states, is_compromised, key_state, rotation_status
from enclave.monitoring.metrics import KmsMetrics
from enclave.reports import charts
from enclave.reports.compliance import iso
from enclave.reports.html import badge, e, page, section, table, tiles
from enclave.scheduler import JobStatus

MAX_KEY_ROWS = 500
MAX_ALERT_ROWS = 50
RATE_MINUTES = 60


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DashboardSources:
    keys: Callable[[], Iterable[KeyMetadata]] = lambda: ()
    alerts: Callable[[], Sequence[Alert]] = lambda: ()
    alert_counts: Callable[[], Mapping[str, int]] | None = None
    metrics: KmsMetrics | None = None
    jobs: Callable[[], Sequence[JobStatus]] | None = None
    audit: Callable[[], AuditStats] | None = None
    hsm: Callable[[], Mapping[str, OperationSnapshot]] | None = None
    clock: Callable[[], datetime] = _utc_now
    kms_id: Callable[[], str] = lambda: "enclave-kms"
    title: str = "Enclave KMS dashboard"
    refresh_seconds: int = 30


@dataclass(frozen=True)
class KeySummary:
    key_id: str
    owner: str
    purpose: str
    algorithm: str
    state: str
    versions: int
    compromised: bool
    rotation_period_days: int | None
    rotation_due: str | None
    rotation_overdue: bool


@dataclass(frozen=True)
class AlertRow:
    id: str
    at: str
    level: str
    kind: str
    title: str
    detail: str
    subject: str | None


@dataclass(frozen=True)
class JobRow:
    name: str
    cadence: str
    next_due: str
    running: bool
    runs: int
    failures: int
    skipped: int
    last_ok: bool | None
    last_finished: str | None
    last_error: str | None


@dataclass(frozen=True)
class DashboardData:
    title: str
    kms_id: str
    generated_at: str
    key_counts: Mapping[str, int]
    keys_total: int
    keys_shown: tuple[KeySummary, ...]
    rotation_scheduled: int
    rotation_overdue: int
    rotation_ratio: float
    alerts: tuple[AlertRow, ...]
    alert_counts: Mapping[str, int]
    rate_labels: tuple[str, ...]
    rate_requests: tuple[int, ...]
    rate_errors: tuple[int, ...]
    routes: tuple[tuple[str, int, int, float], ...]  # (route, count, errors, mean ms)
    hsm: tuple[tuple[str, int, int, float], ...]
    jobs: tuple[JobRow, ...]
    audit_healthy: bool | None
    audit_queue_depth: int | None
    refresh_seconds: int = 30
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["key_counts"] = dict(self.key_counts)
        data["alert_counts"] = dict(self.alert_counts)
        data["extra"] = dict(self.extra)
        return data


def build_dashboard(sources: DashboardSources) -> DashboardData:
    now = sources.clock()
    keys = list(sources.keys())
    statuses = {k.key_id: rotation_status(k, now) for k in keys}
    # Problems first: compromised, overdue, then by id.
    keys.sort(key=lambda k: (not is_compromised(k), not statuses[k.key_id].overdue, k.key_id))
    shown = tuple(
        KeySummary(
            k.key_id,
            k.owner,
            k.purpose.value,
            k.algorithm.value,
            key_state(k),
            len(k.versions),
            is_compromised(k),
            k.rotation.period_days,
            None if statuses[k.key_id].due is None else iso(statuses[k.key_id].due),  # type: ignore[arg-type]
            statuses[k.key_id].overdue,
        )
        for k in keys[:MAX_KEY_ROWS]
    )
    scheduled = [s for s in statuses.values() if s.scheduled]
    overdue = sum(s.overdue for s in scheduled)
    alerts = tuple(
        AlertRow(a.id, iso(a.at), a.level.label, a.kind, a.title, a.detail, a.subject)
        for a in list(sources.alerts())[:MAX_ALERT_ROWS]
    )
    if sources.alert_counts is not None:
        alert_counts = dict(sources.alert_counts())
    else:
        alert_counts = {lvl.label: 0 for lvl in AlertLevel}
        for a in sources.alerts():
            alert_counts[a.level.label] += 1
    labels: tuple[str, ...] = ()
    requests: tuple[int, ...] = ()
    errors: tuple[int, ...] = ()
    routes: tuple[tuple[str, int, int, float], ...] = ()
    if sources.metrics is not None:
        series = sources.metrics.rates.series(now, RATE_MINUTES)
        labels = tuple(p.minute.strftime("%H:%M") for p in series)
        requests = tuple(p.requests for p in series)
        errors = tuple(p.errors for p in series)
        routes = tuple(
            (f"{r.method} {r.route}", r.count, r.errors, round(r.mean_seconds * 1000, 3))
            for r in sources.metrics.route_stats()
        )
    hsm_source = sources.hsm
    if hsm_source is None and sources.metrics is not None:
        hsm_source = sources.metrics.sources.hsm
    hsm = tuple(
        (name, s.count, s.errors, round(s.mean_seconds * 1000, 3))
        for name, s in sorted((hsm_source() if hsm_source else {}).items())
    )
    jobs = tuple(
        JobRow(
            j.name,
            j.cadence,
            iso(j.next_due),
            j.running,
            j.runs,
            j.failures,
            j.skipped,
            None if j.last is None else j.last.ok,
            None if j.last is None else iso(j.last.finished_at),
            None if j.last is None else j.last.error,
        )
        for j in (sources.jobs() if sources.jobs else ())
    )
    audit = sources.audit() if sources.audit else None
    return DashboardData(
        title=sources.title,
        kms_id=sources.kms_id(),
        generated_at=iso(now),
        key_counts=count_states(keys),
        keys_total=len(keys),
        keys_shown=shown,
        rotation_scheduled=len(scheduled),
        rotation_overdue=overdue,
        rotation_ratio=(len(scheduled) - overdue) / len(scheduled) if scheduled else 1.0,
        alerts=alerts,
        alert_counts=alert_counts,
        rate_labels=labels,
        rate_requests=requests,
        rate_errors=errors,
        routes=routes,
        hsm=hsm,
        jobs=jobs,
        audit_healthy=None if audit is None else audit.healthy,
        audit_queue_depth=None if audit is None else audit.queue_depth,
        refresh_seconds=sources.refresh_seconds,
    )


def render_dashboard_html(data: DashboardData) -> str:
    audit_text = (
        "unknown" if data.audit_healthy is None else "healthy" if data.audit_healthy else "FAILING"
    )
    total_requests = sum(data.rate_requests)
    total_errors = sum(data.rate_errors)
    status = section(
        "Status",
        tiles(
            [
                ("keys", data.keys_total),
                ("active keys", data.key_counts.get("active", 0)),
                ("rotation overdue", data.rotation_overdue),
                (
                    "alerts (warning+)",
                    sum(n for lvl, n in data.alert_counts.items() if lvl != "info"),
                ),
                ("critical alerts", data.alert_counts.get("critical", 0)),
                (f"requests, last {RATE_MINUTES} min", total_requests),
                (f"errors, last {RATE_MINUTES} min", total_errors),
                ("audit log", audit_text),
            ]
        ),
        section_id="status",
    )
    more = data.keys_total - len(data.keys_shown)
    inventory = section(
        "Key inventory",
        '<div class="charts">'
        + charts.bar_chart(
            [(state, float(n)) for state, n in data.key_counts.items()],
            title="Keys by state",
            width=460,
        )
        + "</div>"
        + table(
            [
                "key",
                "owner",
                "purpose",
                "algorithm",
                "state",
                "versions",
                "compromised",
                "rotation due",
            ],
            (
                (
                    k.key_id,
                    k.owner,
                    k.purpose,
                    k.algorithm,
                    k.state,
                    k.versions,
                    "yes" if k.compromised else "no",
                    (k.rotation_due or "on demand") + (" (overdue)" if k.rotation_overdue else ""),
                )
                for k in data.keys_shown
            ),
            numeric=(5,),
            empty="No keys yet.",
        )
        + (f'<p class="muted">{more} more keys not shown.</p>' if more > 0 else ""),
        section_id="inventory",
    )
    overdue_rows = [k for k in data.keys_shown if k.rotation_overdue]
    rotation = section(
        "Rotation compliance",
        '<div class="charts">'
        + charts.ratio_gauge(data.rotation_ratio, title="Keys rotated on schedule")
        + f"<p>{data.rotation_scheduled - data.rotation_overdue} of {data.rotation_scheduled} "
        "keys with a rotation schedule are on time.</p></div>"
        + table(
            ["key", "owner", "period (days)", "was due"],
            ((k.key_id, k.owner, k.rotation_period_days, k.rotation_due) for k in overdue_rows),
            empty="No key is past its rotation schedule.",
        ),
        section_id="rotation",
    )
    alerts = section(
        "Recent alerts",
        '<div class="charts">'
        + charts.bar_chart(
            [(lvl, float(n)) for lvl, n in data.alert_counts.items()],
            title="Alerts since start, by level",
            colors=[charts.LEVEL_COLORS.get(lvl, "#6b7280") for lvl in data.alert_counts],
            width=460,
        )
        + "</div>"
        + table(
            ["time", "level", "alert", "detail", "subject"],
            (
                (a.at, badge(a.level), e(a.title), e(a.detail), e(a.subject or "-"))
                for a in data.alerts
            ),
            raw=(1, 2, 3, 4),
            empty="No alerts.",
        ),
        section_id="alerts",
    )
    rates = section(
        "Request rates",
        charts.line_chart(
            data.rate_labels,
            [
                ("requests/min", [float(v) for v in data.rate_requests]),
                ("errors/min", [float(v) for v in data.rate_errors]),
            ],
            title=f"Requests per minute, last {RATE_MINUTES} minutes",
        )
        + table(
            ["route", "requests", "errors", "mean ms"],
            data.routes,
            numeric=(1, 2, 3),
            empty="No requests recorded.",
        )
        + "<h3>HSM operations</h3>"
        + table(
            ["operation", "count", "errors", "mean ms"],
            data.hsm,
            numeric=(1, 2, 3),
            empty="No HSM operations recorded.",
        ),
        section_id="rates",
    )
    jobs = section(
        "Routine jobs",
        table(
            ["job", "cadence", "next run", "runs", "failures", "skipped", "last result"],
            (
                (
                    j.name,
                    j.cadence,
                    j.next_due,
                    j.runs,
                    j.failures,
                    j.skipped,
                    "running"
                    if j.running
                    else "never run"
                    if j.last_ok is None
                    else "ok"
                    if j.last_ok
                    else f"failed: {j.last_error or ''}",
                )
                for j in data.jobs
            ),
            numeric=(3, 4, 5),
            empty="No scheduled jobs.",
        ),
        section_id="jobs",
    )
    subtitle = f"{data.kms_id} \u00b7 generated {data.generated_at}"
    return page(
        data.title,
        subtitle,
        status + alerts + inventory + rotation + rates + jobs,
        refresh_seconds=data.refresh_seconds,
    )
