"""Alert rules: events from the enclave in, alerts out (through the ``AlertManager``).

Which event feeds which rule:

- every request's audit record (``observe_audit_record``) or the same facts directly
  (``observe_request``): bursts of failed access per principal within a window (Warning),
  a surge of failed access across all principals (Warning), and the per-principal
  request/failure-rate anomaly detector (Warning);
- ``AuditLog(on_failure=rules.audit_write_failed, on_recovery=rules.audit_recovered)``:
  the audit log cannot write, so the KMS refuses every operation (Critical), and its
  recovery (Info);
- HSM errors, reported one by one (``hsm_error``) or found by polling ``HsmStats``
  snapshots (``poll_hsm``) (Error);
- attestation failures: the enclave cannot produce evidence (Error), a peer's evidence is
  rejected (Warning), repeated rejections within a window (Critical);
- the key inventory (``check_rotation``): keys past their rotation schedule (Warning).

Repeats of one condition inside its cool-down are dropped by the manager, so a condition
alerts once per window. Alert texts name principals, key ids, operations and counts only.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from enclave.audit.records import AuditRecord
from enclave.hsm.stats import OperationSnapshot
from enclave.keys.metadata import KeyMetadata
from enclave.monitoring.alerts import Alert, AlertConfig, AlertLevel, AlertManager
from enclave.monitoring.anomaly import EwmaRateDetector
from enclave.monitoring.inventory import overdue_keys

FAILED_OUTCOMES = frozenset({"denied", "invalid"})
FAILED_STATUSES = frozenset({401, 403})

KIND_FAILED_ACCESS = "failed-access-burst"
KIND_FAILED_ACCESS_SURGE = "failed-access-surge"
KIND_ANOMALY_REQUESTS = "anomalous-request-rate"
KIND_ANOMALY_FAILURES = "anomalous-failure-rate"
KIND_AUDIT_FAILURE = "audit-write-failure"
KIND_AUDIT_RECOVERED = "audit-recovered"
KIND_HSM_ERROR = "hsm-error"
KIND_ATTESTATION_UNAVAILABLE = "attestation-unavailable"
KIND_ATTESTATION_REJECTED = "attestation-rejected"
KIND_ATTESTATION_BURST = "attestation-failure-burst"
KIND_ROTATION_OVERDUE = "rotation-overdue"

# Cool-downs per rule; anything not listed uses the manager's default.
DEFAULT_COOLDOWNS: Mapping[str, timedelta] = MappingProxyType(
    {
        KIND_FAILED_ACCESS: timedelta(minutes=10),
        KIND_FAILED_ACCESS_SURGE: timedelta(minutes=10),
        KIND_ANOMALY_REQUESTS: timedelta(minutes=30),
        KIND_ANOMALY_FAILURES: timedelta(minutes=30),
        KIND_AUDIT_FAILURE: timedelta(minutes=5),
        KIND_AUDIT_RECOVERED: timedelta(0),
        KIND_HSM_ERROR: timedelta(minutes=10),
        KIND_ATTESTATION_UNAVAILABLE: timedelta(minutes=10),
        KIND_ATTESTATION_REJECTED: timedelta(minutes=10),
        KIND_ATTESTATION_BURST: timedelta(minutes=30),
        KIND_ROTATION_OVERDUE: timedelta(hours=24),
    }
)


def default_alert_config(**changes: object) -> AlertConfig:
    """The manager config the rules expect: per-rule cool-downs."""
    return AlertConfig(cooldowns=DEFAULT_COOLDOWNS, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RulesConfig:
    failed_access_threshold: int = 10
    failed_access_window: timedelta = timedelta(seconds=60)
    failed_access_surge_threshold: int = 100  # across all principals, same window
    hsm_error_threshold: int = 1
    hsm_error_window: timedelta = timedelta(minutes=5)
    attestation_burst_threshold: int = 5
    attestation_window: timedelta = timedelta(minutes=10)
    rotation_grace: timedelta = timedelta(0)
    max_principals: int = 10_000
    anomaly_operations_excluded: frozenset[str] = field(
        default_factory=lambda: frozenset({"audit.checkpoint"})
    )

    def __post_init__(self) -> None:
        if (
            min(
                self.failed_access_threshold,
                self.failed_access_surge_threshold,
                self.hsm_error_threshold,
                self.attestation_burst_threshold,
                self.max_principals,
            )
            < 1
        ):
            raise ValueError("rule thresholds must be at least 1")


class _Window:
    """Timestamps of events within a sliding window, at most ``limit`` of them kept."""

    def __init__(self, limit: int) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=limit)

    def add(self, at: float, window: float) -> int:
        self._times.append(at)
        while self._times and self._times[0] <= at - window:
            self._times.popleft()
        return len(self._times)


class AlertRules:
    """The enclave's alert rules over one ``AlertManager``. Thread-safe."""

    def __init__(
        self,
        alerts: AlertManager,
        *,
        config: RulesConfig | None = None,
        detector: EwmaRateDetector | None = None,
    ) -> None:
        self.alerts = alerts
        self.config = config or RulesConfig()
        self.detector = detector if detector is not None else EwmaRateDetector()
        self._lock = threading.Lock()
        self._failures: collections.OrderedDict[str, _Window] = collections.OrderedDict()
        self._all_failures = _Window(self.config.failed_access_surge_threshold)
        self._hsm_errors = _Window(self.config.hsm_error_threshold)
        self._attestation_rejections = _Window(self.config.attestation_burst_threshold)
        self._hsm_seen: dict[str, int] = {}

    def _now(self, at: datetime | None) -> datetime:
        return at if at is not None else self.alerts.clock()

    # -- requests -------------------------------------------------------------------------
    def observe_audit_record(self, record: AuditRecord) -> list[Alert]:
        """Feed one audit record (after ``AuditLog.record`` returned it)."""
        if record.outcome == "event" or record.operation in self.config.anomaly_operations_excluded:
            return []
        try:
            at = datetime.fromisoformat(record.time)
        except ValueError:
            at = None
        return self.observe_request(
            record.principal, record.operation, record.outcome, record.status, at=at
        )

    def observe_request(
        self,
        principal: str,
        operation: str,
        outcome: str,
        status: int | None = None,
        *,
        at: datetime | None = None,
    ) -> list[Alert]:
        now = self._now(at)
        ts = now.timestamp()
        failed = outcome in FAILED_OUTCOMES or status in FAILED_STATUSES
        raised: list[Alert] = []
        cfg = self.config
        window = cfg.failed_access_window.total_seconds()
        burst = surge = 0
        if failed:
            with self._lock:
                tracker = self._failures.get(principal)
                if tracker is None:
                    tracker = self._failures[principal] = _Window(cfg.failed_access_threshold)
                    while len(self._failures) > cfg.max_principals:
                        self._failures.popitem(last=False)
                self._failures.move_to_end(principal)
                burst = tracker.add(ts, window)
                surge = self._all_failures.add(ts, window)
        if burst >= cfg.failed_access_threshold:
            self._keep(
                raised,
                self.alerts.raise_alert(
                    AlertLevel.WARNING,
                    KIND_FAILED_ACCESS,
                    f"Burst of failed access from {principal}",
                    f"{burst} failed requests from principal {principal} within "
                    f"{int(window)} s (last: {operation}, {outcome})",
                    subject=principal,
                    details={"principal": principal, "failures": burst, "window_s": window},
                    at=now,
                ),
            )
        if surge >= cfg.failed_access_surge_threshold:
            self._keep(
                raised,
                self.alerts.raise_alert(
                    AlertLevel.WARNING,
                    KIND_FAILED_ACCESS_SURGE,
                    "Surge of failed access across principals",
                    f"{surge} failed requests within {int(window)} s",
                    details={"failures": surge, "window_s": window},
                    at=now,
                ),
            )
        for anomaly in self.detector.observe(principal, ts, failed=failed):
            what = "request" if anomaly.signal == "requests" else "failed-request"
            self._keep(
                raised,
                self.alerts.raise_alert(
                    AlertLevel.WARNING,
                    KIND_ANOMALY_REQUESTS
                    if anomaly.signal == "requests"
                    else KIND_ANOMALY_FAILURES,
                    f"Unusual {what} rate from {principal}",
                    f"{anomaly.observed} {what}s this minute against a baseline of "
                    f"{anomaly.baseline_mean:.1f}/min (z = {anomaly.z_score:.1f})",
                    subject=principal,
                    details={
                        "principal": principal,
                        "signal": anomaly.signal,
                        "observed_per_min": anomaly.observed,
                        "baseline_per_min": round(anomaly.baseline_mean, 2),
                        "baseline_std": round(anomaly.baseline_std, 2),
                        "z_score": round(anomaly.z_score, 2),
                    },
                    at=now,
                ),
            )
        return raised

    # -- audit ----------------------------------------------------------------------------
    def audit_write_failed(self, reason: str) -> Alert | None:
        """``AuditLog(on_failure=...)``: the KMS now refuses every operation."""
        return self.alerts.raise_alert(
            AlertLevel.CRITICAL,
            KIND_AUDIT_FAILURE,
            "Audit log write failure: operations are refused",
            reason,
            subject="audit-log",
        )

    def audit_recovered(self) -> Alert | None:
        """``AuditLog(on_recovery=...)``."""
        self.alerts.clear_condition(KIND_AUDIT_FAILURE, "audit-log")
        return self.alerts.raise_alert(
            AlertLevel.INFO,
            KIND_AUDIT_RECOVERED,
            "Audit log recovered",
            "pending audit records were written; operations are accepted again",
            subject="audit-log",
        )

    # -- HSM --------------------------------------------------------------------------------
    def hsm_error(
        self, operation: str, error: str = "", *, at: datetime | None = None
    ) -> Alert | None:
        """One HSM operation failed (``error``: the error's type or class, no data)."""
        now = self._now(at)
        with self._lock:
            count = self._hsm_errors.add(
                now.timestamp(), self.config.hsm_error_window.total_seconds()
            )
        if count < self.config.hsm_error_threshold:
            return None
        return self.alerts.raise_alert(
            AlertLevel.ERROR,
            KIND_HSM_ERROR,
            "HSM operations are failing",
            f"{operation} failed{': ' + error if error else ''}",
            subject="hsm",
            details={"operation": operation, "recent_errors": count},
            at=now,
        )

    def baseline_hsm(self, snapshot: Mapping[str, OperationSnapshot]) -> None:
        """Take the current error counts as seen (when monitoring starts on a backend that
        already ran: its earlier errors were reported by what met them)."""
        with self._lock:
            for operation, snap in snapshot.items():
                self._hsm_seen[operation] = snap.errors

    def poll_hsm(
        self, snapshot: Mapping[str, OperationSnapshot], *, at: datetime | None = None
    ) -> list[Alert]:
        """Compare ``HsmStats.snapshot()`` with the previous poll; new errors alert."""
        raised: list[Alert] = []
        for operation, snap in sorted(snapshot.items()):
            with self._lock:
                before = self._hsm_seen.get(operation)
                self._hsm_seen[operation] = snap.errors
            new = snap.errors - (before or 0)
            if new > 0:
                alert: Alert | None = None
                for _ in range(min(new, self.config.hsm_error_threshold)):
                    alert = self.hsm_error(operation, f"{new} new error(s)", at=at)
                self._keep(raised, alert)
        return raised

    # -- attestation -------------------------------------------------------------------------
    def attestation_failed(
        self, source: str, reason: str, *, local: bool = False, at: datetime | None = None
    ) -> list[Alert]:
        """``local``: this enclave could not produce evidence (a system issue). Otherwise a
        peer's evidence (``source``: its address or principal) was rejected (``reason``:
        the failed check's name)."""
        now = self._now(at)
        raised: list[Alert] = []
        if local:
            self._keep(
                raised,
                self.alerts.raise_alert(
                    AlertLevel.ERROR,
                    KIND_ATTESTATION_UNAVAILABLE,
                    "The enclave cannot produce attestation evidence",
                    reason,
                    subject=source,
                    at=now,
                ),
            )
            return raised
        with self._lock:
            count = self._attestation_rejections.add(
                now.timestamp(), self.config.attestation_window.total_seconds()
            )
        self._keep(
            raised,
            self.alerts.raise_alert(
                AlertLevel.WARNING,
                KIND_ATTESTATION_REJECTED,
                f"Attestation evidence rejected from {source}",
                reason,
                subject=source,
                details={"source": source, "check": reason},
                at=now,
            ),
        )
        if count >= self.config.attestation_burst_threshold:
            self._keep(
                raised,
                self.alerts.raise_alert(
                    AlertLevel.CRITICAL,
                    KIND_ATTESTATION_BURST,
                    "Repeated attestation failures",
                    f"{count} rejected attestations within "
                    f"{int(self.config.attestation_window.total_seconds())} s",
                    details={"rejections": count},
                    at=now,
                ),
            )
        return raised

    # -- keys ---------------------------------------------------------------------------------
    def check_rotation(
        self, keys: Iterable[KeyMetadata], *, at: datetime | None = None
    ) -> list[Alert]:
        now = self._now(at)
        raised: list[Alert] = []
        for status in overdue_keys(keys, now, self.config.rotation_grace):
            due = status.due.astimezone(UTC).date().isoformat() if status.due else "?"
            self._keep(
                raised,
                self.alerts.raise_alert(
                    AlertLevel.WARNING,
                    KIND_ROTATION_OVERDUE,
                    f"Key {status.key_id} is past its rotation schedule",
                    f"rotation was due {due} ({status.days_overdue} days overdue, "
                    f"every {status.period_days} days, owner {status.owner})",
                    subject=status.key_id,
                    details={
                        "key_id": status.key_id,
                        "owner": status.owner,
                        "days_overdue": status.days_overdue,
                    },
                    at=now,
                ),
            )
        return raised

    @staticmethod
    def _keep(raised: list[Alert], alert: Alert | None) -> None:
        if alert is not None:
            raised.append(alert)
