"""Per-operation latency of the HSM backend, kept small for a Prometheus exporter later.

Each operation name accumulates a count, an error count, the total and maximum of its
end-to-end latency (queue wait on the worker included) and of its time on the worker
thread alone, and a cumulative histogram over fixed buckets (the shape of a Prometheus
histogram). Thread-safe: recorded from the worker thread and the event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True)
class OperationSnapshot:
    count: int
    errors: int
    total_seconds: float
    max_seconds: float
    worker_seconds: float
    bucket_counts: tuple[int, ...]  # cumulative, one per LATENCY_BUCKETS_SECONDS, then +Inf

    @property
    def mean_seconds(self) -> float:
        return self.total_seconds / self.count if self.count else 0.0


@dataclass
class _Accumulator:
    count: int = 0
    errors: int = 0
    total: float = 0.0
    maximum: float = 0.0
    worker: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_SECONDS) + 1))


class HsmStats:
    """Latency accounting per operation name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[str, _Accumulator] = {}

    def record(self, operation: str, seconds: float, worker_seconds: float, ok: bool) -> None:
        with self._lock:
            acc = self._ops.setdefault(operation, _Accumulator())
            acc.count += 1
            acc.errors += 0 if ok else 1
            acc.total += seconds
            acc.worker += worker_seconds
            acc.maximum = max(acc.maximum, seconds)
            for index, bound in enumerate(LATENCY_BUCKETS_SECONDS):
                if seconds <= bound:
                    acc.buckets[index] += 1
                    break
            else:
                acc.buckets[-1] += 1

    def snapshot(self) -> dict[str, OperationSnapshot]:
        with self._lock:
            out = {}
            for name, acc in self._ops.items():
                cumulative, running = [], 0
                for n in acc.buckets:
                    running += n
                    cumulative.append(running)
                out[name] = OperationSnapshot(
                    acc.count, acc.errors, acc.total, acc.maximum, acc.worker, tuple(cumulative)
                )
            return out

    def total_operations(self) -> int:
        with self._lock:
            return sum(acc.count for acc in self._ops.values())
