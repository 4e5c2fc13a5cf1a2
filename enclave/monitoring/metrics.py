"""Prometheus metrics for the enclave: ``/metrics`` in the text exposition format.

``KmsMetrics`` registers everything on the ``CollectorRegistry`` it is given (one per app;
never the process-global default registry):

- per request, from ``metrics_middleware``: ``kms_requests_total{method,route,status}``,
  ``kms_request_duration_seconds{method,route}`` (histogram) and
  ``kms_request_errors_total{method,route,class}`` (class ``client``/``server``);
- read at scrape time through the callables in ``MetricsSources`` (live state, no copies):
  keys by state, compromised keys, rotation compliance (keys past their schedule), HSM
  latency histograms and errors per operation (``HsmStats.snapshot``), the audit queue depth
  and health (``AuditLog.stats``), alerts by level (``AlertManager.counts``) and webhook
  delivery counters.

Labels are bounded: ``route`` is the matched route's template (``/v1/keys/{key_id}``), never
the raw path, so key ids and query strings never become label values; unknown methods are
``other`` and unmatched paths ``unmatched``.

It also keeps a per-minute request/error series in memory (``RequestRates``) for the
dashboard's charts, since the dashboard must not need a Prometheus server.
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from enclave.audit.log import AuditStats
from enclave.hsm.stats import LATENCY_BUCKETS_SECONDS, OperationSnapshot
from enclave.keys.metadata import KeyMetadata
from enclave.monitoring.inventory import count_states, is_compromised, rotation_status
from enclave.monitoring.webhook import WebhookStats
from enclave.problems import Handler

REQUEST_BUCKETS_SECONDS: tuple[float, ...] = (
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
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
RATE_WINDOW_MINUTES = 24 * 60


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class MetricsSources:
    """Where the scrape-time metrics come from. Every field is optional: a missing source
    leaves its families out. Callables are invoked on every scrape and must be cheap."""

    keys: Callable[[], Iterable[KeyMetadata]] | None = None
    hsm: Callable[[], Mapping[str, OperationSnapshot]] | None = None
    audit: Callable[[], AuditStats] | None = None
    alert_counts: Callable[[], Mapping[str, int]] | None = None
    webhook: Callable[[], WebhookStats] | None = None
    now: Callable[[], datetime] = _utc_now


@dataclass(frozen=True)
class RatePoint:
    minute: datetime  # start of the minute, UTC
    requests: int
    errors: int


class RequestRates:
    """Requests and errors per minute over the last ``window_minutes``. Thread-safe."""

    def __init__(self, window_minutes: int = RATE_WINDOW_MINUTES) -> None:
        self._window = window_minutes
        self._lock = threading.Lock()
        self._buckets: collections.OrderedDict[int, list[int]] = collections.OrderedDict()

    def record(self, at: datetime, error: bool) -> None:
        minute = int(at.timestamp() // 60)
        with self._lock:
            bucket = self._buckets.get(minute)
            if bucket is None:
                bucket = self._buckets[minute] = [0, 0]
                while len(self._buckets) > self._window:
                    self._buckets.popitem(last=False)
            bucket[0] += 1
            bucket[1] += int(error)

    def series(self, now: datetime, minutes: int = 60) -> list[RatePoint]:
        """One point per minute, oldest first, ending with the current minute."""
        last = int(now.timestamp() // 60)
        with self._lock:
            snapshot = dict(self._buckets)
        out = []
        for minute in range(last - minutes + 1, last + 1):
            requests, errors = snapshot.get(minute, (0, 0))
            out.append(RatePoint(datetime.fromtimestamp(minute * 60, UTC), requests, errors))
        return out


@dataclass(frozen=True, slots=True)
class _Series:
    """What a request of one (method, route, status) updates: its labelled children, the
    errors child (error statuses only) and its route's totals (``KmsMetrics._route_stats``)."""

    requests: Any
    latency: Any
    errors: Any | None
    stats: list[float]


@dataclass(frozen=True)
class RouteStats:
    method: str
    route: str
    count: int
    errors: int
    mean_seconds: float
    p95_seconds: float | None


class KmsMetrics:
    """The KMS's metric families on one registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        sources: MetricsSources | None = None,
        *,
        namespace: str = "kms",
        monotonic: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.registry = registry
        self.sources = sources or MetricsSources()
        self.monotonic = monotonic
        self.rates = RequestRates()
        self.requests = Counter(
            "requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            namespace=namespace,
            registry=registry,
        )
        self.errors = Counter(
            "request_errors",
            "HTTP requests answered with an error (class client = 4xx, server = 5xx)",
            ["method", "route", "class"],
            namespace=namespace,
            registry=registry,
        )
        self.latency = Histogram(
            "request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            buckets=REQUEST_BUCKETS_SECONDS,
            namespace=namespace,
            registry=registry,
        )
        registry.register(_LiveStateCollector(self.sources, namespace))
        self._lock = threading.Lock()
        self._route_stats: dict[tuple[str, str], list[float]] = {}
        self._series: dict[tuple[str, str, int], _Series] = {}

    def _new_series(self, method: str, route: str, status: int) -> _Series:
        errors = None
        if status >= 400:
            errors = self.errors.labels(method, route, "server" if status >= 500 else "client")
        with self._lock:
            stats = self._route_stats.get((method, route))
            if stats is None:
                stats = self._route_stats[(method, route)] = [0.0] * (
                    3 + len(REQUEST_BUCKETS_SECONDS)
                )
        return _Series(
            self.requests.labels(method, route, str(status)),
            self.latency.labels(method, route),
            errors,
            stats,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "other"
        # What one (method, route, status) updates, looked up once: labels are bounded
        # (known methods, route templates, statuses), and so is this dict.
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._new_series(method, route, status)
        series.requests.inc()
        series.latency.observe(seconds)
        errors = series.errors
        error = errors is not None  # status >= 400
        if errors is not None:
            errors.inc()
        self.rates.record(self.sources.now(), error)
        # The first bucket whose bound is >= seconds (none beyond the last bound).
        bucket = bisect.bisect_left(REQUEST_BUCKETS_SECONDS, seconds)
        acc = series.stats
        with self._lock:
            acc[0] += 1
            acc[1] += int(error)
            acc[2] += seconds
            if bucket < len(REQUEST_BUCKETS_SECONDS):
                acc[3 + bucket] += 1

    def route_stats(self) -> list[RouteStats]:
        """Per-route totals for the dashboard and reports (p95 from the histogram)."""
        with self._lock:
            items = {k: list(v) for k, v in self._route_stats.items()}
        out = []
        for (method, route), acc in sorted(items.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            count = int(acc[0])
            out.append(
                RouteStats(
                    method,
                    route,
                    count,
                    int(acc[1]),
                    acc[2] / count if count else 0.0,
                    quantile_from_buckets(REQUEST_BUCKETS_SECONDS, acc[3:], count, 0.95),
                )
            )
        return out


def quantile_from_buckets(
    bounds: tuple[float, ...], counts: Iterable[float], total: int, q: float
) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` (per-bucket, not cumulative counts);
    ``None`` if it lies beyond the last bound or nothing was counted."""
    if total <= 0:
        return None
    target, running = q * total, 0.0
    for bound, n in zip(bounds, counts, strict=False):
        running += n
        if running >= target:
            return bound
    return None


def route_label(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None) if route is not None else None
    if resource is None:
        return "unmatched"
    canonical = str(resource.canonical)
    return canonical if canonical else "unmatched"


def metrics_middleware(metrics: KmsMetrics) -> Callable[[web.Request, Handler], object]:
    """An aiohttp middleware recording method, route template, status and duration.

    Place it outermost (before the problem middleware) so the status is the one the client
    receives; an exception that escapes is recorded as 500 (or the HTTPException's status).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = metrics.monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.observe(
                request.method, route_label(request), status, metrics.monotonic() - start
            )

    return middleware


def metrics_handler(
    registry: CollectorRegistry,
    *,
    require_access: Callable[[web.Request], object] | None = None,
) -> Handler:
    """``GET /metrics``: the registry in the Prometheus text format. ``require_access``
    (sync or async, raises to refuse) lets the caller restrict who may scrape."""

    async def handler(request: web.Request) -> web.Response:
        if require_access is not None:
            result = require_access(request)
            if hasattr(result, "__await__"):
                await result
        body = generate_latest(registry)
        return web.Response(
            body=body,
            headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
        )

    return handler


class _LiveStateCollector(Collector):
    """Families computed from live state at scrape time."""

    def __init__(self, sources: MetricsSources, namespace: str) -> None:
        self._s = sources
        self._ns = namespace

    def describe(self) -> Iterable[Metric]:
        return []  # computed families: no duplicate-name check at registration

    def collect(self) -> Iterator[Metric]:
        ns = self._ns
        s = self._s
        if s.keys is not None:
            yield from self._keys(list(s.keys()), s.now())
        if s.hsm is not None:
            yield from self._hsm(s.hsm())
        if s.audit is not None:
            stats = s.audit()
            yield GaugeMetricFamily(
                f"{ns}_audit_queue_depth",
                "Audit records waiting to be written (queued and pending retry)",
                value=stats.queue_depth,
            )
            yield GaugeMetricFamily(
                f"{ns}_audit_healthy",
                "1 if the audit log is writing, 0 if it fails (operations are refused)",
                value=1 if stats.healthy else 0,
            )
            yield CounterMetricFamily(
                f"{ns}_audit_records_written",
                "Audit records written durably since start",
                value=stats.written,
            )
        if s.alert_counts is not None:
            family = CounterMetricFamily(
                f"{ns}_alerts", "Alerts emitted since start, by level", labels=["level"]
            )
            for level, count in s.alert_counts().items():
                family.add_metric([level], count)
            yield family
        if s.webhook is not None:
            w = s.webhook()
            family = CounterMetricFamily(
                f"{ns}_alert_webhook_deliveries",
                "Alert webhook deliveries by result",
                labels=["result"],
            )
            for result, count in (
                ("delivered", w.delivered),
                ("failed", w.failed),
                ("dropped", w.dropped),
            ):
                family.add_metric([result], count)
            yield family
            yield GaugeMetricFamily(
                f"{ns}_alert_webhook_queue_depth", "Alerts waiting for the webhook", value=w.queued
            )

    def _keys(self, keys: list[KeyMetadata], now: datetime) -> Iterator[Metric]:
        ns = self._ns
        by_state = GaugeMetricFamily(f"{ns}_keys", "Keys by state", labels=["state"])
        for state, count in count_states(keys).items():
            by_state.add_metric([state], count)
        yield by_state
        yield GaugeMetricFamily(
            f"{ns}_keys_compromised",
            "Keys with a version flagged compromised",
            value=sum(is_compromised(k) for k in keys),
        )
        statuses = [rotation_status(k, now) for k in keys]
        scheduled = [st for st in statuses if st.scheduled]
        overdue = sum(st.overdue for st in scheduled)
        yield GaugeMetricFamily(
            f"{ns}_rotation_scheduled_keys",
            "Active keys with an automatic rotation schedule",
            value=len(scheduled),
        )
        yield GaugeMetricFamily(
            f"{ns}_rotation_overdue_keys",
            "Keys past their rotation schedule",
            value=overdue,
        )
        yield GaugeMetricFamily(
            f"{ns}_rotation_compliance_ratio",
            "Share of scheduled keys rotated on time (1 when none is scheduled)",
            value=(len(scheduled) - overdue) / len(scheduled) if scheduled else 1.0,
        )

    def _hsm(self, snapshot: Mapping[str, OperationSnapshot]) -> Iterator[Metric]:
        ns = self._ns
        latency = HistogramMetricFamily(
            f"{ns}_hsm_operation_duration_seconds",
            "HSM operation latency (queue wait on the worker included), by operation",
            labels=["operation"],
        )
        errors = CounterMetricFamily(
            f"{ns}_hsm_operation_errors", "HSM operations that failed", labels=["operation"]
        )
        for name, snap in sorted(snapshot.items()):
            buckets = [
                (_bound(b), float(c))
                for b, c in zip(LATENCY_BUCKETS_SECONDS, snap.bucket_counts, strict=False)
            ]
            buckets.append(("+Inf", float(snap.count)))
            latency.add_metric([name], buckets, snap.total_seconds)
            errors.add_metric([name], snap.errors)
        yield latency
        yield errors


def _bound(value: float) -> str:
    return repr(float(value))
