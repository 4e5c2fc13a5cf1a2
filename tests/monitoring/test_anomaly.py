"""The EWMA z-score detector: spikes after warm-up fire; steady traffic and warm-up do not."""

from __future__ import annotations

import random

import pytest

from enclave.monitoring.anomaly import AnomalyConfig, EwmaRateDetector


def feed_minute(
    det: EwmaRateDetector, principal: str, minute: int, count: int, *, failed: bool = False
) -> list:
    found = []
    for i in range(count):
        found += det.observe(principal, minute * 60 + (i * 59.0 / max(count, 1)), failed=failed)
    return found


def test_steady_traffic_never_fires() -> None:
    det = EwmaRateDetector()
    rng = random.Random(1)
    found = []
    for minute in range(600):
        found += feed_minute(det, "prn_steady", minute, 25 + rng.randint(-6, 6))
    assert found == []
    mean, std, samples = det.baseline("prn_steady", "requests")  # type: ignore[misc]
    assert 20 < mean < 30 and samples >= 599 and std < 10


def test_spike_after_warmup_fires_once_per_minute() -> None:
    det = EwmaRateDetector(AnomalyConfig(warmup_minutes=15))
    for minute in range(30):
        assert feed_minute(det, "prn_a", minute, 20) == []
    found = feed_minute(det, "prn_a", 30, 200)
    assert len(found) == 1  # reported while the minute fills, once
    anomaly = found[0]
    assert anomaly.principal == "prn_a" and anomaly.signal == "requests"
    assert anomaly.z_score >= 4.0 and anomaly.baseline_mean == pytest.approx(20, abs=1)
    assert anomaly.observed < 200  # caught before the minute ended


def test_no_alarm_during_warmup_even_for_a_huge_rate() -> None:
    det = EwmaRateDetector(AnomalyConfig(warmup_minutes=15))
    found = []
    for minute in range(10):
        found += feed_minute(det, "prn_new", minute, 5)
    found += feed_minute(det, "prn_new", 10, 500)
    assert found == []


def test_failure_rate_spike_fires_on_the_failure_signal() -> None:
    det = EwmaRateDetector()
    for minute in range(40):
        feed_minute(det, "prn_b", minute, 30)
        feed_minute(det, "prn_b", minute, 1, failed=True)
    found = feed_minute(det, "prn_b", 40, 40, failed=True)
    assert {a.signal for a in found} >= {"failures"}


def test_idle_minutes_count_as_zero_and_memory_is_bounded() -> None:
    det = EwmaRateDetector(AnomalyConfig(max_principals=3))
    for minute in range(20):
        feed_minute(det, "prn_x", minute, 10)
    feed_minute(det, "prn_x", 100, 1)  # 80 idle minutes folded in (capped at 60)
    mean, _, samples = det.baseline("prn_x", "requests")  # type: ignore[misc]
    assert mean < 1.0 and samples == 19 + 1 + 60  # minutes 0..18, then 19, then 60 idle
    for i in range(5):
        det.observe(f"prn_{i}", 0.0)
    assert det.tracked() == 3


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        AnomalyConfig(alpha=1.5)
    with pytest.raises(ValueError):
        AnomalyConfig(warmup_minutes=0)
