"""A realistic monitoring state for the report and dashboard tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry

from enclave.audit.records import AuditRecord
from enclave.hsm.stats import HsmStats
from enclave.keys.metadata import KeyMetadata, VersionState
from enclave.monitoring.alerts import AlertManager
from enclave.monitoring.metrics import KmsMetrics, MetricsSources
from enclave.monitoring.rules import AlertRules, default_alert_config
from tests.monitoring.support import T0, Clock, make_key, normal_traffic

SECRET_DIGEST = "hmac:" + "ab" * 32
ALERT_PRINCIPAL = "prn_intruder"


@dataclass
class World:
    clock: Clock
    keys: list[KeyMetadata]
    records: list[AuditRecord]
    alerts: AlertManager
    metrics: KmsMetrics
    hsm: HsmStats

    def records_between(self, start: datetime, end: datetime) -> list[AuditRecord]:
        return [r for r in self.records if start <= datetime.fromisoformat(r.time) < end]


def build_world() -> World:
    clock = Clock(T0)
    keys = [
        make_key(1, created=T0 - timedelta(days=120), owner="team-auction"),
        make_key(2, created=T0 - timedelta(days=10), owner="team-bidding"),
        make_key(
            3, created=T0 - timedelta(days=40), owner="team-bidding", state=VersionState.DISABLED
        ),
        make_key(4, created=T0 - timedelta(days=5), period_days=None, compromised=True),
    ]
    records: list[AuditRecord] = []
    seq = 0

    def add(
        at: datetime, principal: str, operation: str, outcome: str, key_id: str | None = None
    ) -> None:
        nonlocal seq
        records.append(
            AuditRecord(
                seq=seq,
                time=at.isoformat(),
                principal=principal,
                operation=operation,
                outcome=outcome,
                key_id=key_id,
                key_version=1 if key_id else None,
                request_digest="d" * 64,
                status=200 if outcome == "allowed" else 403,
                details={"context": SECRET_DIGEST},
            )
        )
        seq += 1

    start = T0 - timedelta(days=6)
    add(start, "prn_admin", "keys.create", "allowed", keys[1].key_id)
    add(start + timedelta(hours=1), "prn_admin", "grants.grant", "allowed", keys[1].key_id)
    add(start + timedelta(days=1), "prn_admin", "keys.disable", "allowed", keys[2].key_id)
    add(start + timedelta(days=2), "prn_admin", "principals.isolate", "allowed")
    add(start + timedelta(days=3), "prn_admin", "keys.rotate", "allowed", keys[1].key_id)
    for ev in normal_traffic(
        T0 - timedelta(hours=3), 170, {"prn_auction": 6.0, "prn_bidding": 3.0}, seed=3
    ):
        add(ev.at, ev.principal, ev.operation, ev.outcome, keys[0].key_id)
    alerts = AlertManager(config=default_alert_config(), clock=clock)
    rules = AlertRules(alerts)
    clock.now = T0 - timedelta(minutes=5)
    for _ in range(12):
        rules.observe_request(ALERT_PRINCIPAL, "keys.decrypt", "invalid", 401)
        add(clock.now, ALERT_PRINCIPAL, "keys.decrypt", "invalid")
    rules.check_rotation(keys)
    rules.audit_write_failed("audit log write failed: No space left on device")
    clock.now = T0
    hsm = HsmStats()
    for i in range(50):
        hsm.record("encrypt", 0.0005 + i * 0.0001, 0.0004, ok=True)
    hsm.record("sign", 0.02, 0.02, ok=False)
    metrics = KmsMetrics(
        CollectorRegistry(),
        MetricsSources(keys=lambda: keys, hsm=hsm.snapshot, alert_counts=alerts.counts, now=clock),
    )
    # Request-rate history for the charts: an hour of traffic through the metrics.
    for ev in normal_traffic(T0 - timedelta(minutes=59), 60, {"a": 20.0, "b": 8.0}, seed=5):
        clock.now = ev.at
        metrics.observe("POST", "/v1/keys/{key_id}/encrypt", ev.status, 0.004)
    clock.now = T0
    return World(clock, keys, records, alerts, metrics, hsm)
