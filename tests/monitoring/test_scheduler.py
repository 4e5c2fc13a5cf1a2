"""Scheduler semantics: cadences, run_due, no overlap, failure isolation, run_forever."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from enclave.monitoring.alerts import AlertLevel, AlertManager
from enclave.monitoring.jobs import job_failure_alerter
from enclave.scheduler import (
    Daily,
    Every,
    Job,
    Monthly,
    Scheduler,
    SchedulerError,
    Weekly,
)
from tests.monitoring.support import T0, Clock


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cadence", "moment", "expected"),
    [
        (Every(timedelta(hours=1)), at(2025, 3, 3, 8, 20), at(2025, 3, 3, 9, 0)),
        (Every(timedelta(hours=1)), at(2025, 3, 3, 9, 0), at(2025, 3, 3, 10, 0)),
        (Daily(time(1, 0)), at(2025, 3, 3, 0, 59), at(2025, 3, 3, 1, 0)),
        (Daily(time(1, 0)), at(2025, 3, 3, 1, 0), at(2025, 3, 4, 1, 0)),
        (Weekly(0, time(2, 0)), at(2025, 3, 3, 1, 0), at(2025, 3, 3, 2, 0)),  # Monday
        (Weekly(0, time(2, 0)), at(2025, 3, 3, 2, 0), at(2025, 3, 10, 2, 0)),
        (Weekly(6, time(0, 0)), at(2025, 3, 3, 2, 0), at(2025, 3, 9, 0, 0)),  # Sunday
        (Monthly(1, time(3, 0)), at(2025, 3, 3, 8, 0), at(2025, 4, 1, 3, 0)),
        (Monthly(31), at(2025, 2, 10), at(2025, 2, 28)),  # clamped to month end
        (Monthly(31), at(2025, 12, 31, 1), at(2026, 1, 31)),
    ],
    ids=[
        "hourly",
        "hourly-boundary",
        "daily",
        "daily-boundary",
        "weekly",
        "weekly-boundary",
        "weekly-sunday",
        "monthly",
        "monthly-clamp",
        "monthly-year-end",
    ],
)
def test_cadence_next_after(cadence: Any, moment: datetime, expected: datetime) -> None:
    assert cadence.next_after(moment) == expected


def test_bad_cadences_are_refused() -> None:
    with pytest.raises(SchedulerError):
        Every(timedelta(0))
    with pytest.raises(SchedulerError):
        Weekly(7)
    with pytest.raises(SchedulerError):
        Monthly(0)


async def test_run_due_runs_exactly_what_is_due_without_replaying_missed_runs() -> None:
    clock = Clock(at(2025, 3, 3, 0, 30))
    runs: list[str] = []

    def job(name: str) -> Any:
        async def run(now: datetime) -> dict[str, Any]:
            runs.append(name)
            return {"at": now.isoformat()}

        return run

    scheduler = Scheduler(clock=clock)
    scheduler.add(Job("daily", Daily(time(1, 0)), job("daily")))
    scheduler.add(Job("weekly", Weekly(0, time(2, 0)), job("weekly")))
    scheduler.add(Job("monthly", Monthly(1), job("monthly")))
    assert await scheduler.run_due(at(2025, 3, 3, 0, 59)) == []
    results = await scheduler.run_due(at(2025, 3, 3, 1, 0))
    assert [r.job for r in results] == ["daily"] and results[0].ok
    await scheduler.run_due(at(2025, 3, 3, 2, 0))
    assert runs == ["daily", "weekly"]
    # The enclave was down for ten days: each job runs once, not once per missed day.
    await scheduler.run_due(at(2025, 3, 13, 12, 0))
    assert runs == ["daily", "weekly", "daily", "weekly"]
    await scheduler.run_due(at(2025, 4, 1, 0, 0))
    assert runs[-1] == "monthly"
    status = {s.name: s for s in scheduler.status()}
    assert status["daily"].runs == 3 and status["daily"].next_due == at(2025, 4, 1, 1, 0)
    assert scheduler.results()[0].job == "monthly"


async def test_a_running_job_is_not_started_again() -> None:
    clock = Clock(T0)
    release = asyncio.Event()
    started = 0

    async def slow(now: datetime) -> None:
        nonlocal started
        started += 1
        await release.wait()

    scheduler = Scheduler(clock=clock)
    scheduler.add(Job("slow", Every(timedelta(minutes=1)), slow))
    first = asyncio.create_task(scheduler.run_due(T0 + timedelta(minutes=1)))
    await asyncio.sleep(0.01)
    assert await scheduler.run_due(T0 + timedelta(minutes=2)) == []  # skipped: still running
    assert await scheduler.run_now("slow") is None
    release.set()
    results = await first
    assert started == 1 and len(results) == 1
    status = scheduler.status()[0]
    assert status.skipped == 2 and status.runs == 1 and not status.running
    assert len(await scheduler.run_due(T0 + timedelta(minutes=3))) == 1


async def test_a_failing_job_is_logged_alerted_and_isolated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(T0)
    alerts = AlertManager(clock=clock)
    ran: list[str] = []

    async def broken(now: datetime) -> None:
        raise RuntimeError("database unreachable")

    async def fine(now: datetime) -> dict[str, int]:
        ran.append("fine")
        return {"checked": 3}

    async def hangs(now: datetime) -> None:
        await asyncio.sleep(10)

    scheduler = Scheduler(clock=clock, on_failure=job_failure_alerter(alerts))
    scheduler.add(Job("broken", Every(timedelta(hours=1)), broken))
    scheduler.add(Job("fine", Every(timedelta(hours=1)), fine))
    scheduler.add(Job("hangs", Every(timedelta(hours=1)), hangs, timeout=0.05))
    results = {r.job: r for r in await scheduler.run_due(T0 + timedelta(hours=1))}
    assert results["fine"].ok and results["fine"].summary == {"checked": 3}
    assert not results["broken"].ok
    assert results["broken"].error == "RuntimeError: database unreachable"
    assert not results["hangs"].ok and "TimeoutError" in (results["hangs"].error or "")
    assert "job broken failed" in caplog.text
    failed = [a for a in alerts.recent() if a.kind == "job-failed"]
    assert {a.subject for a in failed} == {"broken", "hangs"}
    assert all(a.level is AlertLevel.ERROR for a in failed)
    # The next occurrence runs everything again.
    assert len(await scheduler.run_due(T0 + timedelta(hours=2))) == 3
    assert ran == ["fine", "fine"]


async def test_run_forever_uses_the_injected_clock_and_sleep() -> None:
    clock = Clock(at(2025, 3, 3, 0, 0))
    sleeps: list[float] = []
    ran: list[datetime] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds=seconds)
        if len(ran) >= 3:
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    async def job(now: datetime) -> None:
        ran.append(now)

    scheduler = Scheduler(clock=clock, sleep=fake_sleep, max_tick=3600)
    scheduler.add(Job("every-10-min", Every(timedelta(minutes=10)), job))
    with pytest.raises(asyncio.CancelledError):
        await scheduler.run_forever()
    assert ran[:3] == [at(2025, 3, 3, 0, 10), at(2025, 3, 3, 0, 20), at(2025, 3, 3, 0, 30)]
    assert sleeps[0] == 600.0


def test_duplicate_names_are_refused() -> None:
    async def noop(now: datetime) -> None:
        return None

    scheduler = Scheduler(clock=Clock())
    scheduler.add(Job("a", Daily(), noop))
    with pytest.raises(SchedulerError):
        scheduler.add(Job("a", Daily(), noop))
