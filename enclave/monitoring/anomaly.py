"""Anomaly detection over per-principal request and failure rates.

What this is, named honestly: a per-(principal, signal) **EWMA baseline of per-minute
counts** with an **EWMA variance** and a **z-score threshold**. It is statistics, not
machine learning: it notices "this principal is doing far more than it usually does per
minute", nothing cleverer.

- Counts are bucketed per whole minute of the injected clock. When a minute closes, its
  count (zero for idle minutes, up to ``max_gap_minutes`` of them) updates the baseline:
  ``diff = x - mean; mean += alpha * diff; var = (1 - alpha) * (var + alpha * diff**2)``.
- The minute in progress is compared with the baseline as it fills, so a spike is reported
  while it happens, not a minute later: ``z = (count - mean) / max(sqrt(var),
  sqrt(mean), min_std)``. The ``sqrt(mean)`` floor assumes counts are at least as noisy as
  a Poisson process; without it a perfectly steady principal would alarm on its first
  jitter.
- Nothing fires before ``warmup_minutes`` closed minutes of baseline, nor for counts below
  ``min_count``. A (principal, signal) reports at most once per minute; the alert manager's
  cool-down decides how often that becomes an alert.
- Memory is bounded: at most ``max_principals`` are tracked, least recently seen dropped.
"""

from __future__ import annotations

import collections
import math
import threading
from dataclasses import dataclass
from typing import Literal

Signal = Literal["requests", "failures"]
SIGNALS: tuple[Signal, ...] = ("requests", "failures")


@dataclass(frozen=True)
class AnomalyConfig:
    alpha: float = 0.1  # EWMA weight of the newest minute (~ a 20-minute memory)
    z_threshold: float = 4.0
    warmup_minutes: int = 15
    min_count: int = 10
    min_std: float = 1.0
    max_gap_minutes: int = 60
    max_principals: int = 10_000

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        if self.z_threshold <= 0 or self.min_std <= 0:
            raise ValueError("z_threshold and min_std must be positive")
        if self.warmup_minutes < 1 or self.max_gap_minutes < 1 or self.max_principals < 1:
            raise ValueError("warm-up, gap and principal limits must be positive")


@dataclass(frozen=True)
class Anomaly:
    principal: str
    signal: Signal
    minute: int  # minutes since the epoch of the injected clock
    observed: int  # count so far in that minute
    baseline_mean: float
    baseline_std: float
    z_score: float


class _Baseline:
    __slots__ = ("count", "mean", "minute", "reported_minute", "samples", "var")

    def __init__(self, minute: int) -> None:
        self.minute = minute
        self.count = 0
        self.mean = 0.0
        self.var = 0.0
        self.samples = 0
        self.reported_minute = -1

    def close_minutes(self, minute: int, alpha: float, max_gap: int) -> None:
        """Fold every closed minute before ``minute`` into the baseline."""
        if minute <= self.minute:
            return
        values = [float(self.count)] + [0.0] * min(minute - self.minute - 1, max_gap)
        for x in values:
            if self.samples == 0:
                self.mean, self.var = x, 0.0
            else:
                diff = x - self.mean
                self.mean += alpha * diff
                self.var = (1.0 - alpha) * (self.var + alpha * diff * diff)
            self.samples += 1
        self.minute = minute
        self.count = 0


class EwmaRateDetector:
    """Per-principal EWMA z-score detector for request and failure rates. Thread-safe."""

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self._lock = threading.Lock()
        self._state: collections.OrderedDict[tuple[str, Signal], _Baseline] = (
            collections.OrderedDict()
        )

    def observe(self, principal: str, at: float, *, failed: bool = False) -> list[Anomaly]:
        """Count one request (and one failure if ``failed``) at ``at`` (seconds)."""
        found = []
        for signal in SIGNALS:
            if signal == "failures" and not failed:
                continue
            anomaly = self._count(principal, signal, at)
            if anomaly is not None:
                found.append(anomaly)
        return found

    def baseline(self, principal: str, signal: Signal) -> tuple[float, float, int] | None:
        """(mean, std, closed minutes) of a principal's baseline, if tracked."""
        with self._lock:
            state = self._state.get((principal, signal))
            if state is None:
                return None
            return state.mean, math.sqrt(state.var), state.samples

    def tracked(self) -> int:
        with self._lock:
            return len(self._state)

    def _count(self, principal: str, signal: Signal, at: float) -> Anomaly | None:
        cfg = self.config
        minute = int(at // 60)
        key = (principal, signal)
        with self._lock:
            state = self._state.get(key)
            if state is None:
                state = _Baseline(minute)
                self._state[key] = state
                while len(self._state) > cfg.max_principals:
                    self._state.popitem(last=False)
            self._state.move_to_end(key)
            # A late event (clock skew between producers) counts in the current minute.
            minute = max(minute, state.minute)
            state.close_minutes(minute, cfg.alpha, cfg.max_gap_minutes)
            state.count += 1
            if state.samples < cfg.warmup_minutes or state.count < cfg.min_count:
                return None
            if state.reported_minute == minute:
                return None
            std = max(math.sqrt(state.var), math.sqrt(state.mean), cfg.min_std)
            z = (state.count - state.mean) / std
            if z < cfg.z_threshold:
                return None
            state.reported_minute = minute
            return Anomaly(principal, signal, minute, state.count, state.mean, std, z)
