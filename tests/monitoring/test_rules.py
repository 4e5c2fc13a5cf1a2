"""Alert rules over realistic traffic: bursts, normal load, audit failure, HSM, attestation,
rotation; deduplication; the log sink keeps secrets out."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.audit.log import AuditLog, AuditUnavailable
from enclave.audit.sink import FileAuditSink
from enclave.hsm.stats import HsmStats
from enclave.monitoring.alerts import AlertConfig, AlertLevel, AlertManager, LogAlertSink
from enclave.monitoring.rules import (
    KIND_ANOMALY_REQUESTS,
    KIND_FAILED_ACCESS,
    AlertRules,
    default_alert_config,
)
from tests.monitoring.support import T0, Clock, make_key, normal_traffic

PRINCIPALS = {"prn_auction": 40.0, "prn_bidding": 25.0, "prn_reporting": 6.0, "prn_admin": 1.0}


def make_rules(clock: Clock) -> tuple[AlertManager, AlertRules]:
    manager = AlertManager(config=default_alert_config(), clock=clock)
    return manager, AlertRules(manager)


def replay(rules: AlertRules, clock: Clock, events) -> list:  # type: ignore[no-untyped-def]
    raised = []
    for ev in events:
        clock.now = ev.at
        raised += rules.observe_request(ev.principal, ev.operation, ev.outcome, ev.status)
    return raised


def test_normal_load_of_several_principals_raises_nothing() -> None:
    clock = Clock()
    manager, rules = make_rules(clock)
    events = list(normal_traffic(T0, 180, PRINCIPALS, failure_ratio=0.02))
    assert len(events) > 10_000
    assert replay(rules, clock, events) == []
    assert manager.recent() == []
    assert manager.counts() == {"info": 0, "warning": 0, "error": 0, "critical": 0}


def test_burst_of_failed_authentication_from_one_principal_warns_once() -> None:
    clock = Clock()
    manager, rules = make_rules(clock)
    warmup = list(normal_traffic(T0, 60, PRINCIPALS))
    assert replay(rules, clock, warmup) == []
    # An attacker with a stolen principal id and bad tokens: 30 refusals in 20 seconds,
    # interleaved with everyone else's normal traffic.
    start = T0 + timedelta(minutes=60)
    attack = [
        type(warmup[0])(
            start + timedelta(seconds=i * 0.66), "prn_reporting", "keys.decrypt", "invalid", 401
        )
        for i in range(30)
    ]
    others = list(normal_traffic(start, 2, {"prn_auction": 40.0, "prn_bidding": 25.0}, seed=9))
    raised = replay(rules, clock, sorted(attack + others, key=lambda e: e.at))
    bursts = [a for a in raised if a.kind == KIND_FAILED_ACCESS]
    assert len(bursts) == 1, raised
    alert = bursts[0]
    assert alert.level is AlertLevel.WARNING
    assert alert.subject == "prn_reporting"
    assert "prn_reporting" in alert.title and "failed requests" in alert.detail
    assert all(a.subject == "prn_reporting" for a in raised)
    # The same condition within the cool-down is suppressed, after it alerts again.
    clock.advance(minutes=3)
    for _ in range(12):
        rules.observe_request("prn_reporting", "keys.decrypt", "denied", 403)
    assert len([a for a in manager.recent() if a.kind == KIND_FAILED_ACCESS]) == 1
    assert manager.suppressed > 0
    clock.advance(minutes=11)
    for _ in range(12):
        rules.observe_request("prn_reporting", "keys.decrypt", "denied", 403)
    assert len([a for a in manager.recent() if a.kind == KIND_FAILED_ACCESS]) == 2


def test_request_rate_spike_after_warmup_is_an_anomaly_warning() -> None:
    clock = Clock()
    manager, rules = make_rules(clock)
    replay(rules, clock, normal_traffic(T0, 45, PRINCIPALS))
    assert manager.recent() == []
    base = T0 + timedelta(minutes=45)
    for i in range(400):  # prn_reporting normally sends ~6/min; now 400 in a minute
        clock.now = base + timedelta(seconds=i * 0.15)
        rules.observe_request("prn_reporting", "keys.decrypt", "allowed", 200)
    alerts = manager.recent()
    assert [a.kind for a in alerts] == [KIND_ANOMALY_REQUESTS]
    assert alerts[0].level is AlertLevel.WARNING and alerts[0].subject == "prn_reporting"
    assert "baseline" in alerts[0].detail


def test_feeding_audit_records_works_like_direct_observations() -> None:
    from enclave.audit.records import AuditRecord

    clock = Clock()
    manager, rules = make_rules(clock)
    for i in range(10):
        record = AuditRecord(
            seq=i,
            time=(T0 + timedelta(seconds=i)).isoformat(),
            principal="prn_x",
            operation="keys.encrypt",
            outcome="denied",
            status=403,
        )
        rules.observe_audit_record(record)
    assert [a.kind for a in manager.recent()] == [KIND_FAILED_ACCESS]


def _audit_log(path: Path, rules: AlertRules) -> tuple[AuditLog, FlakySink]:
    sink = FlakySink(path)
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    log = AuditLog(
        sink,
        sign=key.sign,
        public_key=public,
        hmac_key=b"k" * 32,
        kms_id="kms-test",
        on_failure=rules.audit_write_failed,
        on_recovery=rules.audit_recovered,
    )
    log.start()
    return log, sink


class FlakySink(FileAuditSink):
    broken = False

    def append(self, lines: list[bytes]) -> None:
        if self.broken:
            raise OSError(28, "No space left on device")
        super().append(lines)


def test_audit_write_failure_is_critical_and_recovery_is_info(tmp_path: Path) -> None:
    manager = AlertManager(config=default_alert_config())
    rules = AlertRules(manager)
    log, sink = _audit_log(tmp_path / "audit.log", rules)
    try:
        log.record_sync(principal="prn_a", operation="keys.encrypt", outcome="allowed")
        sink.broken = True
        with pytest.raises(AuditUnavailable):
            log.record_sync(principal="prn_a", operation="keys.encrypt", outcome="allowed")
        with pytest.raises(AuditUnavailable):
            log.record_sync(principal="prn_a", operation="keys.encrypt", outcome="allowed")
        critical = manager.recent(min_level=AlertLevel.CRITICAL)
        assert len(critical) == 1
        assert critical[0].kind == "audit-write-failure"
        assert "No space left" in critical[0].detail
        sink.broken = False
        log.record_sync(principal="prn_a", operation="keys.encrypt", outcome="allowed")
        assert manager.recent()[0].level is AlertLevel.INFO
        assert manager.counts()["critical"] == 1 and manager.counts()["info"] == 1
    finally:
        log.stop()


def test_hsm_errors_alert_once_per_window() -> None:
    clock = Clock()
    _manager, rules = make_rules(clock)
    stats = HsmStats()
    stats.record("encrypt", 0.001, 0.001, ok=True)
    assert rules.poll_hsm(stats.snapshot()) == []
    stats.record("encrypt", 0.5, 0.5, ok=False)
    raised = rules.poll_hsm(stats.snapshot())
    assert [(a.level, a.kind) for a in raised] == [(AlertLevel.ERROR, "hsm-error")]
    stats.record("decrypt", 0.5, 0.5, ok=False)
    assert rules.poll_hsm(stats.snapshot()) == []  # same condition, inside the cool-down
    clock.advance(minutes=11)
    assert rules.hsm_error("sign", "PKCS11Error") is not None


def test_attestation_failures() -> None:
    clock = Clock()
    _manager, rules = make_rules(clock)
    local = rules.attestation_failed("sev-guest", "configfs-tsm unavailable", local=True)
    assert [a.level for a in local] == [AlertLevel.ERROR]
    levels = []
    for i in range(5):
        clock.advance(seconds=10)
        levels += [a.level for a in rules.attestation_failed(f"10.0.0.{i}", "measurement")]
    assert levels.count(AlertLevel.WARNING) == 5
    assert levels.count(AlertLevel.CRITICAL) == 1


def test_overdue_rotation_warns_per_key_once_a_day() -> None:
    clock = Clock()
    _manager, rules = make_rules(clock)
    keys = [
        make_key(1, created=T0 - timedelta(days=100), period_days=90),  # overdue
        make_key(2, created=T0 - timedelta(days=10), period_days=90),  # fine
        make_key(3, created=T0 - timedelta(days=400), period_days=None),  # on demand
    ]
    raised = rules.check_rotation(keys)
    assert [a.subject for a in raised] == [keys[0].key_id]
    assert raised[0].level is AlertLevel.WARNING and "10 days overdue" in raised[0].detail
    assert rules.check_rotation(keys) == []
    clock.advance(hours=25)
    assert len(rules.check_rotation(keys)) == 1


def test_log_sink_is_structured_and_redacts_secret_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = AlertManager([LogAlertSink()], config=AlertConfig(recent_limit=3))
    with caplog.at_level(logging.INFO, logger="enclave.alerts"):
        manager.raise_alert(
            AlertLevel.ERROR,
            "test",
            "Something broke",
            "detail",
            subject="prn_a",
            details={
                "token": "eyJhbGciOiJFZERTQSJ9.secret",
                "api_key": "sk-123",
                "count": 3,
                "plaintext": b"top secret",
            },
        )
    line = caplog.records[-1].getMessage()
    data = json.loads(line)
    assert data["level"] == "error" and data["kind"] == "test" and data["subject"] == "prn_a"
    assert data["details"]["count"] == 3
    assert data["details"]["token"] == "[redacted]"
    assert "secret" not in line.replace("[redacted]", "") and "sk-123" not in line
    assert caplog.records[-1].levelno == logging.ERROR
    for i in range(5):
        manager.raise_alert(AlertLevel.INFO, f"k{i}", "t")
    assert len(manager.recent()) == 3 and manager.recent()[0].kind == "k4"


def test_a_broken_sink_does_not_stop_alerting() -> None:
    class Broken:
        def emit(self, alert: object) -> None:
            raise RuntimeError("boom")

    got = []

    class Keep:
        def emit(self, alert: object) -> None:
            got.append(alert)

    manager = AlertManager([Broken(), Keep()])
    assert manager.raise_alert(AlertLevel.WARNING, "x", "y") is not None
    assert len(got) == 1
