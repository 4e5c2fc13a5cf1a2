"""Retry decisions: which failures are retried, and how long to wait (exponential backoff
with full jitter, ``Retry-After`` respected). Pure functions of their inputs, so the
client's behaviour is unit-testable without sleeping or a clock.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass
from datetime import UTC, datetime

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRYABLE_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the client tries.

    ``max_attempts`` counts every try of one request across all endpoints. The wait before
    retry ``n`` (1-based) is uniform in [0, min(max_delay, base_delay * 2**(n-1))] ("full
    jitter"), or the server's ``Retry-After`` when it asks for longer, capped by
    ``max_retry_after`` (a hostile host must not park the client forever).
    """

    max_attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 5.0
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The jittered wait before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, retry - 1)))
        return (rng or random).uniform(0.0, ceiling)

    def delay(
        self, retry: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        wait = self.backoff(retry, rng)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


def is_idempotent(method: str) -> bool:
    return method.upper() in IDEMPOTENT_METHODS


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())
