"""Alerts: the seed's four levels, the alert manager, and the structured-log sink.

``AlertManager.raise_alert`` is the one door for every alert. It drops repeats of the same
condition (same ``kind`` and ``subject``) inside that kind's cool-down, so a condition alerts
once per window however often it is observed; counts what it emitted per level (for
``/metrics``); keeps the most recent alerts in a bounded list (for the dashboard); and hands
each alert to its sinks. Sinks must not block: the log sink writes one line, the webhook
sink (``enclave.monitoring.webhook``) only enqueues.

It may be called from any thread (the audit writer thread reports its failures here).

Must never: carry a secret. Alert details are restricted to scalar values, long text is
cut, and any detail whose name looks secret-bearing is replaced by ``[redacted]`` before an
alert exists, so no sink can leak what the alert never held.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from types import MappingProxyType
from typing import Any, Protocol

DetailValue = str | int | float | bool | None

MAX_TEXT = 300
MAX_DETAILS = 32
REDACTED = "[redacted]"
# Detail names that could carry secret material; their values never enter an alert.
_SECRET_NAME = re.compile(
    r"secret|token|passw|passphrase|private|plaintext|material|authoriz|cookie|credential"
    r"|wrapped|seed|share|pin\b|hmac_key|api_key",
    re.IGNORECASE,
)


class AlertLevel(IntEnum):
    """The seed's alert levels (Monitoring and Maintenance, Alert System)."""

    INFO = 0  # regular operations
    WARNING = 1  # unusual patterns
    ERROR = 2  # system issues
    CRITICAL = 3  # security threats

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> AlertLevel:
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown alert level {label!r}") from None


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def safe_details(details: Mapping[str, Any] | None) -> Mapping[str, DetailValue]:
    """Scalars only, clipped, secret-looking names redacted, at most ``MAX_DETAILS``."""
    out: dict[str, DetailValue] = {}
    for name, value in list((details or {}).items())[:MAX_DETAILS]:
        key = _clip(str(name), 64)
        if _SECRET_NAME.search(key):
            out[key] = REDACTED
        elif value is None or isinstance(value, bool | int | float):
            out[key] = value
        else:
            out[key] = _clip(str(value))
    return MappingProxyType(out)


@dataclass(frozen=True)
class Alert:
    """One alert. ``kind`` names the rule ("failed-access-burst"); ``subject`` names what it
    is about (a principal id, a key id, a job name), never a secret."""

    id: str
    level: AlertLevel
    kind: str
    title: str
    detail: str
    at: datetime
    subject: str | None = None
    details: Mapping[str, DetailValue] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "level": self.level.label,
            "kind": self.kind,
            "title": self.title,
            "detail": self.detail,
            "at": self.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "subject": self.subject,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        expected = {"id", "level", "kind", "title", "detail", "at", "subject", "details"}
        if set(data) != expected:
            raise ValueError(f"alert fields must be exactly {sorted(expected)}")
        at = datetime.fromisoformat(str(data["at"]).replace("Z", "+00:00"))
        if at.tzinfo is None:
            raise ValueError("alert time without zone")
        return cls(
            id=str(data["id"]),
            level=AlertLevel.from_label(str(data["level"])),
            kind=str(data["kind"]),
            title=_clip(str(data["title"])),
            detail=_clip(str(data["detail"])),
            at=at,
            subject=None if data["subject"] is None else str(data["subject"]),
            details=safe_details(data["details"]),
        )


class AlertSink(Protocol):
    """Receives every emitted alert. ``emit`` must return at once (enqueue, never wait)."""

    def emit(self, alert: Alert) -> None: ...


class LogAlertSink:
    """One structured (JSON) log line per alert, at the logging level matching its level."""

    _LEVELS: Mapping[AlertLevel, int] = MappingProxyType(
        {
            AlertLevel.INFO: logging.INFO,
            AlertLevel.WARNING: logging.WARNING,
            AlertLevel.ERROR: logging.ERROR,
            AlertLevel.CRITICAL: logging.CRITICAL,
        }
    )

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("enclave.alerts")

    def emit(self, alert: Alert) -> None:
        line = json.dumps({"event": "alert", **alert.to_dict()}, sort_keys=True)
        self._log.log(self._LEVELS[alert.level], "%s", line)


@dataclass(frozen=True)
class AlertConfig:
    """``cooldowns`` per kind override ``default_cooldown``; ``recent_limit`` bounds the
    dashboard's list."""

    default_cooldown: timedelta = timedelta(minutes=15)
    cooldowns: Mapping[str, timedelta] = field(default_factory=lambda: MappingProxyType({}))
    recent_limit: int = 200
    max_tracked_conditions: int = 10_000

    def __post_init__(self) -> None:
        if self.recent_limit < 1 or self.max_tracked_conditions < 1:
            raise ValueError("alert limits must be positive")

    def cooldown_for(self, kind: str) -> timedelta:
        return self.cooldowns.get(kind, self.default_cooldown)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AlertManager:
    """Deduplicates, counts, remembers and dispatches alerts. Thread-safe."""

    def __init__(
        self,
        sinks: Iterable[AlertSink] = (),
        *,
        config: AlertConfig | None = None,
        clock: Callable[[], datetime] = _utc_now,
        logger: logging.Logger | None = None,
    ) -> None:
        self._config = config or AlertConfig()
        self._sinks: list[AlertSink] = list(sinks)
        self._clock = clock
        self._log = logger or logging.getLogger("enclave.alerts")
        self._lock = threading.Lock()
        self._recent: collections.deque[Alert] = collections.deque(maxlen=self._config.recent_limit)
        self._last_emitted: collections.OrderedDict[tuple[str, str | None], datetime] = (
            collections.OrderedDict()
        )
        self._counts = dict.fromkeys(AlertLevel, 0)
        self._suppressed = 0
        self._seq = 0

    @property
    def clock(self) -> Callable[[], datetime]:
        return self._clock

    def add_sink(self, sink: AlertSink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def raise_alert(
        self,
        level: AlertLevel,
        kind: str,
        title: str,
        detail: str = "",
        *,
        subject: str | None = None,
        details: Mapping[str, Any] | None = None,
        at: datetime | None = None,
        cooldown: timedelta | None = None,
    ) -> Alert | None:
        """Emit an alert, or return ``None`` if the same condition alerted within its
        cool-down (the repeat is counted as suppressed)."""
        now = at or self._clock()
        window = self._config.cooldown_for(kind) if cooldown is None else cooldown
        condition = (kind, subject)
        with self._lock:
            last = self._last_emitted.get(condition)
            if last is not None and now - last < window:
                self._suppressed += 1
                return None
            self._last_emitted[condition] = now
            self._last_emitted.move_to_end(condition)
            while len(self._last_emitted) > self._config.max_tracked_conditions:
                self._last_emitted.popitem(last=False)
            self._seq += 1
            alert = Alert(
                id=f"alr_{self._seq:08d}",
                level=level,
                kind=_clip(kind, 64),
                title=_clip(title),
                detail=_clip(detail),
                at=now,
                subject=None if subject is None else _clip(subject, 128),
                details=safe_details(details),
            )
            self._counts[level] += 1
            self._recent.append(alert)
            sinks = list(self._sinks)
        for sink in sinks:
            try:
                sink.emit(alert)
            except Exception:
                # A broken sink must not take the others (or the caller) down with it.
                self._log.exception("alert sink %s failed", type(sink).__name__)
        return alert

    def clear_condition(self, kind: str, subject: str | None = None) -> None:
        """Forget a condition's cool-down (it was resolved; the next occurrence alerts)."""
        with self._lock:
            self._last_emitted.pop((kind, subject), None)

    def recent(
        self, limit: int | None = None, min_level: AlertLevel = AlertLevel.INFO
    ) -> list[Alert]:
        """Most recent first."""
        with self._lock:
            items = [a for a in reversed(self._recent) if a.level >= min_level]
        return items if limit is None else items[:limit]

    def counts(self) -> dict[str, int]:
        """Alerts emitted since start, per level label (every level present)."""
        with self._lock:
            return {level.label: n for level, n in self._counts.items()}

    @property
    def suppressed(self) -> int:
        with self._lock:
            return self._suppressed
