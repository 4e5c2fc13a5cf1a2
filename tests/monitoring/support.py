"""Helpers for the monitoring and report tests: a settable clock, keys, traffic."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from enclave.keys.entropy import EntropyKind
from enclave.keys.metadata import (
    Algorithm,
    KeyMetadata,
    KeyVersion,
    Purpose,
    RotationSchedule,
    SecurityLevel,
    VersionState,
    WrappingRef,
)

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)  # a Monday


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


def make_key(
    index: int,
    *,
    created: datetime,
    period_days: int | None = 90,
    state: VersionState = VersionState.ACTIVE,
    owner: str = "team-auction",
    compromised: bool = False,
) -> KeyMetadata:
    key_id = f"key_{index:032x}"
    version = KeyVersion(
        key_id=key_id,
        version=1,
        algorithm=Algorithm.AES_256_GCM,
        state=state,
        created_at=created,
        state_changed_at=created,
        entropy=EntropyKind.HSM,
        wrapped_by=WrappingRef(f"key_{0xFFFF:032x}", 1),
        wrapped=b"\x01" * 40,
        compromised=compromised,
    )
    return KeyMetadata(
        key_id=key_id,
        created_at=created,
        algorithm=Algorithm.AES_256_GCM,
        purpose=Purpose.ENCRYPT,
        owner=owner,
        security_level=SecurityLevel.L2,
        versions=(version,),
        rotation=RotationSchedule(period_days),
    )


@dataclass(frozen=True)
class Event:
    at: datetime
    principal: str
    operation: str
    outcome: str
    status: int


def normal_traffic(
    start: datetime,
    minutes: int,
    rates: dict[str, float],
    *,
    failure_ratio: float = 0.01,
    seed: int = 7,
) -> Iterator[Event]:
    """Poisson-ish traffic: each principal sends ~rate requests per minute at random
    instants, a small share refused (typos, expired tokens)."""
    rng = random.Random(seed)
    operations = ["keys.encrypt", "keys.decrypt", "keys.describe", "keys.sign"]
    events = []
    for minute in range(minutes):
        base = start + timedelta(minutes=minute)
        for principal, rate in rates.items():
            # Binomial approximation of Poisson(rate) with 4*rate trials.
            trials = int(rate * 4)
            count = sum(rng.random() < 0.25 for _ in range(trials))
            for _ in range(count):
                at = base + timedelta(seconds=rng.random() * 60)
                failed = rng.random() < failure_ratio
                events.append(
                    Event(
                        at,
                        principal,
                        rng.choice(operations),
                        "denied" if failed else "allowed",
                        403 if failed else 200,
                    )
                )
    events.sort(key=lambda e: e.at)
    return iter(events)
