"""Benchmark helpers: rates measured as medians over repeated timed runs.

Every benchmark reports a value beside a baseline measured in the same run, so the ratio
means something on a shared, noisy machine. Results are plain dicts in the shape that
``make bench`` writes to ``.bench/results.json``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypedDict


class BenchResult(TypedDict):
    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float
    target: str


def rate(operation: Callable[[], object], *, seconds: float = 1.0, repeats: int = 5) -> float:
    """Median operations per second of ``operation`` over ``repeats`` runs of ``seconds``."""
    operation()  # warm caches
    rates = []
    for _ in range(repeats):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            operation()
            count += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        rates.append(count / (now - start))
    return statistics.median(rates)


def result(
    name: str, value: float, unit: str, baseline: str, baseline_value: float, target: str
) -> BenchResult:
    ratio = value / baseline_value if baseline_value else 0.0
    return BenchResult(
        name=name,
        value=round(value, 3),
        unit=unit,
        baseline=baseline,
        baseline_value=round(baseline_value, 3),
        ratio=round(ratio, 3),
        target=target,
    )
