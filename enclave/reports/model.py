"""The compliance report's data model: frozen rows and ``ReportData``, JSON-serialisable.

``ReportData.to_dict()`` gives only str/int/float/bool/None/list/dict values, grouped in
the seed's sections (Compliance Auditing Scenario, "Audit Trail Generation"): key
lifecycle events, access patterns, policy changes, security incidents, rotation
compliance, performance, plus the key inventory. ``ReportData.from_dict`` rebuilds and
validates it (unknown or missing fields are refused), so the client can render a report
it fetched as JSON.

Must never: hold a secret. Rows carry ids, names, operations, outcomes, counts and times;
audit record ``details`` (which may hold HMACs of sensitive values) are not copied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

REPORT_TYPE = "kms-compliance-report/v1"

T = TypeVar("T")


class ReportFormatError(ValueError):
    """A report document does not have the expected shape."""


def _row_from(cls: type[T], data: object, where: str) -> T:
    if not isinstance(data, Mapping):
        raise ReportFormatError(f"{where}: expected an object")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if set(data) != names:
        raise ReportFormatError(
            f"{where}: unknown {sorted(set(data) - names)}, missing {sorted(names - set(data))}"
        )
    return cls(**data)


def _rows_from(cls: type[T], data: object, where: str) -> tuple[T, ...]:
    if not isinstance(data, list):
        raise ReportFormatError(f"{where}: expected a list")
    return tuple(_row_from(cls, item, f"{where}[{i}]") for i, item in enumerate(data))


def _int_map(data: object, where: str) -> dict[str, int]:
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in data.items()
    ):
        raise ReportFormatError(f"{where}: expected a map of counts")
    return dict(data)


def _rows(rows: Sequence[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in rows]


@dataclass(frozen=True)
class AuditEvent:
    """One audit record, reduced to what a report may show."""

    seq: int
    time: str
    principal: str
    operation: str
    outcome: str
    key_id: str | None
    key_version: int | None


@dataclass(frozen=True)
class PrincipalActivity:
    principal: str
    requests: int
    allowed: int
    denied: int
    invalid: int
    errors: int
    distinct_keys: int
    last_seen: str


@dataclass(frozen=True)
class OperationCount:
    operation: str
    count: int
    denied: int


@dataclass(frozen=True)
class DailyCount:
    date: str  # YYYY-MM-DD (UTC)
    allowed: int
    denied: int  # denied + invalid
    errors: int


@dataclass(frozen=True)
class Incident:
    id: str
    at: str
    level: str
    kind: str
    title: str
    subject: str | None


@dataclass(frozen=True)
class RotationRow:
    key_id: str
    owner: str
    state: str
    period_days: int | None
    last_rotated: str | None
    due: str | None
    overdue: bool
    days_overdue: int


@dataclass(frozen=True)
class KeyRow:
    key_id: str
    owner: str
    purpose: str
    algorithm: str
    security_level: str
    state: str
    versions: int
    compromised: bool
    created_at: str
    expires_at: str | None


@dataclass(frozen=True)
class PerformanceRow:
    name: str  # "GET /v1/keys/{key_id}" or an HSM operation
    count: int
    errors: int
    mean_ms: float
    p95_ms: float | None


@dataclass(frozen=True)
class RatePointRow:
    minute: str
    requests: int
    errors: int


@dataclass(frozen=True)
class ReportData:
    title: str
    kms_id: str
    generated_at: str
    period_start: str
    period_end: str
    totals: Mapping[str, int]
    lifecycle_counts: Mapping[str, int]
    key_lifecycle: tuple[AuditEvent, ...]
    access_by_principal: tuple[PrincipalActivity, ...]
    access_by_operation: tuple[OperationCount, ...]
    access_daily: tuple[DailyCount, ...]
    policy_changes: tuple[AuditEvent, ...]
    incidents_by_level: Mapping[str, int]
    incidents: tuple[Incident, ...]
    rotation_compliance_ratio: float
    rotation: tuple[RotationRow, ...]
    inventory: tuple[KeyRow, ...]
    performance_routes: tuple[PerformanceRow, ...]
    performance_hsm: tuple[PerformanceRow, ...]
    request_rate: tuple[RatePointRow, ...]
    truncated: Mapping[str, int] = field(default_factory=dict)  # section -> rows left out

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": REPORT_TYPE,
            "title": self.title,
            "kms_id": self.kms_id,
            "generated_at": self.generated_at,
            "period": {"start": self.period_start, "end": self.period_end},
            "totals": dict(self.totals),
            "key_lifecycle": {
                "counts": dict(self.lifecycle_counts),
                "events": _rows(self.key_lifecycle),
            },
            "access_patterns": {
                "by_principal": _rows(self.access_by_principal),
                "by_operation": _rows(self.access_by_operation),
                "daily": _rows(self.access_daily),
            },
            "policy_changes": {"events": _rows(self.policy_changes)},
            "security_incidents": {
                "by_level": dict(self.incidents_by_level),
                "alerts": _rows(self.incidents),
            },
            "rotation_compliance": {
                "ratio": self.rotation_compliance_ratio,
                "keys": _rows(self.rotation),
            },
            "inventory": {"keys": _rows(self.inventory)},
            "performance": {
                "routes": _rows(self.performance_routes),
                "hsm": _rows(self.performance_hsm),
                "request_rate": _rows(self.request_rate),
            },
            "truncated": dict(self.truncated),
        }

    @classmethod
    def from_dict(cls, data: object) -> ReportData:
        if not isinstance(data, Mapping) or data.get("type") != REPORT_TYPE:
            raise ReportFormatError(f"not a {REPORT_TYPE} document")

        def section(name: str, keys: set[str]) -> Mapping[str, Any]:
            value = data.get(name)
            if not isinstance(value, Mapping) or set(value) != keys:
                raise ReportFormatError(f"{name}: expected exactly {sorted(keys)}")
            return value

        expected = {
            "type",
            "title",
            "kms_id",
            "generated_at",
            "period",
            "totals",
            "key_lifecycle",
            "access_patterns",
            "policy_changes",
            "security_incidents",
            "rotation_compliance",
            "inventory",
            "performance",
            "truncated",
        }
        if set(data) != expected:
            raise ReportFormatError(
                f"report: unknown or missing fields {sorted(set(data) ^ expected)}"
            )
        period = section("period", {"start", "end"})
        lifecycle = section("key_lifecycle", {"counts", "events"})
        access = section("access_patterns", {"by_principal", "by_operation", "daily"})
        policy = section("policy_changes", {"events"})
        incidents = section("security_incidents", {"by_level", "alerts"})
        rotation = section("rotation_compliance", {"ratio", "keys"})
        inventory = section("inventory", {"keys"})
        perf = section("performance", {"routes", "hsm", "request_rate"})
        for name in ("title", "kms_id", "generated_at"):
            if not isinstance(data[name], str):
                raise ReportFormatError(f"{name}: expected text")
        ratio = rotation["ratio"]
        if not isinstance(ratio, int | float) or isinstance(ratio, bool):
            raise ReportFormatError("rotation_compliance.ratio: expected a number")
        return cls(
            title=data["title"],
            kms_id=data["kms_id"],
            generated_at=data["generated_at"],
            period_start=str(period["start"]),
            period_end=str(period["end"]),
            totals=_int_map(data["totals"], "totals"),
            lifecycle_counts=_int_map(lifecycle["counts"], "key_lifecycle.counts"),
            key_lifecycle=_rows_from(AuditEvent, lifecycle["events"], "key_lifecycle.events"),
            access_by_principal=_rows_from(
                PrincipalActivity, access["by_principal"], "access_patterns.by_principal"
            ),
            access_by_operation=_rows_from(
                OperationCount, access["by_operation"], "access_patterns.by_operation"
            ),
            access_daily=_rows_from(DailyCount, access["daily"], "access_patterns.daily"),
            policy_changes=_rows_from(AuditEvent, policy["events"], "policy_changes.events"),
            incidents_by_level=_int_map(incidents["by_level"], "security_incidents.by_level"),
            incidents=_rows_from(Incident, incidents["alerts"], "security_incidents.alerts"),
            rotation_compliance_ratio=float(ratio),
            rotation=_rows_from(RotationRow, rotation["keys"], "rotation_compliance.keys"),
            inventory=_rows_from(KeyRow, inventory["keys"], "inventory.keys"),
            performance_routes=_rows_from(PerformanceRow, perf["routes"], "performance.routes"),
            performance_hsm=_rows_from(PerformanceRow, perf["hsm"], "performance.hsm"),
            request_rate=_rows_from(RatePointRow, perf["request_rate"], "performance.request_rate"),
            truncated=_int_map(data["truncated"], "truncated"),
        )
