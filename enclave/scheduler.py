"""The enclave's job scheduler: routine work at intervals or daily/weekly/monthly times.

Semantics, all in terms of the injected ``clock`` (UTC ``datetime``) and ``sleep``:

- A job is due when the clock reaches its ``next_due``. The first ``next_due`` is the
  cadence's first occurrence after the job is added (or ``first_run`` if given). After a
  run starts, ``next_due`` moves to the cadence's first occurrence after *now*: missed
  occurrences (the enclave was down, a run was long) are not replayed one by one.
- A job never overlaps itself: if it is still running when due again, that occurrence is
  skipped and counted (``JobStatus.skipped``). Different jobs run concurrently.
- A job that raises (or exceeds its ``timeout``) is logged and reported to the alert
  callback (Error level) and recorded as a failed result; the other jobs and the loop go on.
- Results (start, end, ok, the job's summary or the error's type and message) are kept in
  a bounded history for the dashboard.

``run_due(now)`` runs whatever is due at ``now`` and returns once those runs finished: the
deterministic entry point for tests. ``run_forever()`` (or ``scheduler_context`` for
``app.cleanup_ctx``) loops on the injected sleep and starts due jobs as tasks.

Must never: put secrets in results or alerts (a job's summary is reported as is, so jobs
return counts, ids and names only).
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, Protocol

from aiohttp import web

log = logging.getLogger("enclave.scheduler")

JobFunc = Callable[[datetime], Awaitable[Mapping[str, Any] | None]]
FailureCallback = Callable[[str, str], object]  # (job name, "ErrorType: message")
MAX_ERROR_TEXT = 300
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class SchedulerError(Exception):
    """Caller misuse: a duplicate job name, an impossible cadence."""


class Cadence(Protocol):
    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after ``moment``."""
        ...

    def describe(self) -> str: ...


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise SchedulerError("scheduler times must carry a zone")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Every:
    """A fixed interval, aligned to ``anchor`` (default the Unix epoch): with a 1-hour
    interval a job runs on the hour, however late it was added."""

    interval: timedelta
    anchor: datetime = datetime(1970, 1, 1, tzinfo=UTC)

    def __post_init__(self) -> None:
        if self.interval <= timedelta(0):
            raise SchedulerError("an interval must be positive")
        _aware(self.anchor)

    def next_after(self, moment: datetime) -> datetime:
        elapsed = _aware(moment) - self.anchor
        periods = elapsed // self.interval + 1
        return self.anchor + periods * self.interval

    def describe(self) -> str:
        return f"every {self.interval}"


@dataclass(frozen=True)
class Daily:
    at: time = time(0, 0)

    def next_after(self, moment: datetime) -> datetime:
        moment = _aware(moment)
        candidate = datetime.combine(moment.date(), self.at, tzinfo=UTC)
        return candidate if candidate > moment else candidate + timedelta(days=1)

    def describe(self) -> str:
        return f"daily at {self.at.strftime('%H:%M')} UTC"


@dataclass(frozen=True)
class Weekly:
    weekday: int = 0  # Monday = 0
    at: time = time(0, 0)

    def __post_init__(self) -> None:
        if not 0 <= self.weekday <= 6:
            raise SchedulerError("weekday must be 0 (Monday) .. 6 (Sunday)")

    def next_after(self, moment: datetime) -> datetime:
        moment = _aware(moment)
        ahead = (self.weekday - moment.weekday()) % 7
        candidate = datetime.combine(moment.date() + timedelta(days=ahead), self.at, tzinfo=UTC)
        return candidate if candidate > moment else candidate + timedelta(days=7)

    def describe(self) -> str:
        return f"weekly on {WEEKDAYS[self.weekday]} at {self.at.strftime('%H:%M')} UTC"


@dataclass(frozen=True)
class Monthly:
    """On ``day`` of each month (clamped to the month's last day: 31 means month end)."""

    day: int = 1
    at: time = time(0, 0)

    def __post_init__(self) -> None:
        if not 1 <= self.day <= 31:
            raise SchedulerError("day of month must be 1..31")

    def _in_month(self, year: int, month: int) -> datetime:
        day = min(self.day, calendar.monthrange(year, month)[1])
        return datetime(year, month, day, self.at.hour, self.at.minute, self.at.second, tzinfo=UTC)

    def next_after(self, moment: datetime) -> datetime:
        moment = _aware(moment)
        year, month = moment.year, moment.month
        while True:
            candidate = self._in_month(year, month)
            if candidate > moment:
                return candidate
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)

    def describe(self) -> str:
        return f"monthly on day {self.day} at {self.at.strftime('%H:%M')} UTC"


@dataclass(frozen=True)
class Job:
    name: str
    cadence: Cadence
    func: JobFunc = field(repr=False)
    timeout: float | None = None  # seconds; a run that takes longer fails
    description: str = ""


@dataclass(frozen=True)
class JobResult:
    job: str
    scheduled_for: datetime
    started_at: datetime
    finished_at: datetime
    ok: bool
    summary: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "scheduled_for": self.scheduled_for.isoformat(),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "ok": self.ok,
            "summary": dict(self.summary),
            "error": self.error,
        }


@dataclass(frozen=True)
class JobStatus:
    name: str
    cadence: str
    description: str
    next_due: datetime
    running: bool
    runs: int
    failures: int
    skipped: int
    last: JobResult | None


@dataclass
class _Entry:
    job: Job
    next_due: datetime
    running: bool = False
    runs: int = 0
    failures: int = 0
    skipped: int = 0
    last: JobResult | None = None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_failure: FailureCallback | None = None,
        on_result: Callable[[JobResult], object] | None = None,
        history: int = 200,
        max_tick: float = 60.0,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._on_failure = on_failure
        self._on_result = on_result
        self._entries: dict[str, _Entry] = {}
        self._history: collections.deque[JobResult] = collections.deque(maxlen=history)
        self._tasks: set[asyncio.Task[JobResult]] = set()
        self._max_tick = max_tick

    def add(self, job: Job, *, first_run: datetime | None = None) -> None:
        if job.name in self._entries:
            raise SchedulerError(f"a job named {job.name!r} exists already")
        due = _aware(first_run) if first_run else job.cadence.next_after(self._clock())
        self._entries[job.name] = _Entry(job, due)

    def status(self) -> list[JobStatus]:
        return [
            JobStatus(
                e.job.name,
                e.job.cadence.describe(),
                e.job.description,
                e.next_due,
                e.running,
                e.runs,
                e.failures,
                e.skipped,
                e.last,
            )
            for e in sorted(self._entries.values(), key=lambda e: e.job.name)
        ]

    def results(self, limit: int | None = None) -> list[JobResult]:
        """Most recent first."""
        items = list(reversed(self._history))
        return items if limit is None else items[:limit]

    def next_due(self) -> datetime | None:
        return min((e.next_due for e in self._entries.values()), default=None)

    async def run_due(self, now: datetime | None = None) -> list[JobResult]:
        """Run every job due at ``now`` (default: the clock) and wait for those runs."""
        tasks = self._start_due(_aware(now) if now else self._clock())
        if not tasks:
            return []
        return list(await asyncio.gather(*tasks))

    async def run_now(self, name: str) -> JobResult | None:
        """Run one job at once (an operator's "run now"); ``None`` if it is running."""
        entry = self._entries.get(name)
        if entry is None:
            raise SchedulerError(f"no job named {name!r}")
        if entry.running:
            entry.skipped += 1
            return None
        now = self._clock()
        return await self._launch(entry, now, now)

    async def run_forever(self) -> None:
        while True:
            now = self._clock()
            self._start_due(now)
            due = self.next_due()
            delay = self._max_tick if due is None else (due - self._clock()).total_seconds()
            await self._sleep(min(max(delay, 0.0), self._max_tick))

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals --------------------------------------------------------------------------
    def _start_due(self, now: datetime) -> list[asyncio.Task[JobResult]]:
        started = []
        for entry in self._entries.values():
            if entry.next_due > now:
                continue
            scheduled = entry.next_due
            entry.next_due = entry.job.cadence.next_after(now)
            if entry.running:
                entry.skipped += 1
                log.warning("job %s still running at %s: occurrence skipped", entry.job.name, now)
                continue
            task = asyncio.create_task(
                self._launch(entry, scheduled, now), name=f"job-{entry.job.name}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started.append(task)
        return started

    def _finished(self, started: datetime) -> datetime:
        # run_due(now) may be given a time ahead of the clock (tests): never end before start.
        return max(self._clock(), started)

    def _launch(
        self, entry: _Entry, scheduled: datetime, now: datetime
    ) -> Coroutine[Any, Any, JobResult]:
        entry.running = True  # set synchronously, so no second run can start meanwhile
        return self._run(entry, scheduled, now)

    async def _run(self, entry: _Entry, scheduled: datetime, started: datetime) -> JobResult:
        """``started``: when the run was started; the job gets it as its ``now``."""
        job = entry.job
        try:
            if job.timeout is not None:
                summary = await asyncio.wait_for(job.func(started), job.timeout)
            else:
                summary = await job.func(started)
            result = JobResult(
                job.name, scheduled, started, self._finished(started), True, dict(summary or {})
            )
        except asyncio.CancelledError:
            entry.running = False
            raise
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, TimeoutError):
                text = f"TimeoutError: the job took longer than {job.timeout} s"
            text = text[:MAX_ERROR_TEXT]
            log.error("job %s failed: %s", job.name, text)
            result = JobResult(
                job.name, scheduled, started, self._finished(started), False, {}, text
            )
            entry.failures += 1
            if self._on_failure is not None:
                try:
                    self._on_failure(job.name, text)
                except Exception:
                    log.exception("the job failure callback failed")
        entry.running = False
        entry.runs += 1
        entry.last = result
        self._history.append(result)
        if self._on_result is not None:
            try:
                self._on_result(result)
            except Exception:
                log.exception("the job result callback failed")
        return result


def scheduler_context(
    scheduler: Scheduler,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """For ``app.cleanup_ctx``: the scheduler loop runs exactly while the app does."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        loop_task = asyncio.create_task(scheduler.run_forever(), name="scheduler")
        yield
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        await scheduler.aclose()

    return context
