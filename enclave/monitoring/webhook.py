"""The HTTPS webhook alert sink: a JSON POST per alert, off the request path.

``emit`` (any thread) only puts the alert in a bounded in-memory queue and wakes the
delivery task; it never waits on the network. The delivery task (started by ``start()``,
or by the ``webhook_context`` cleanup context) POSTs each alert with a per-attempt timeout
and retries transport errors, timeouts, 408, 429 and 5xx answers with capped exponential
backoff; other 4xx answers are permanent. An alert that exhausts its attempts is counted
as failed and dropped, and delivery goes on with the next one, so a webhook that is down
costs alerts, never the KMS. When the queue is full the lowest-level, oldest alert is the
one dropped (a Critical alert displaces an Info one, never the reverse).

TLS is verified: against the system store, or against ``ca_bundle`` (a PEM file) for a
webhook with a private CA. Plain ``http://`` URLs are refused. With ``signing_key`` each
body carries ``X-KMS-Signature: sha256=<HMAC-SHA256 of the body>`` so the receiver can
authenticate it; the key never appears in a repr or a log.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

from enclave.monitoring.alerts import Alert, AlertLevel

BODY_TYPE = "kms-alert/v1"
RETRY_STATUSES = frozenset({408, 425, 429})


class WebhookConfigError(ValueError):
    """The webhook configuration is unusable (not HTTPS, bad limits)."""


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    ca_bundle: Path | None = None
    timeout: float = 5.0  # seconds, per attempt (connect + TLS + answer)
    max_attempts: int = 4
    backoff_initial: float = 0.5
    backoff_max: float = 15.0
    queue_size: int = 1000
    min_level: AlertLevel = AlertLevel.WARNING
    source: str = "enclave-kms"  # names this KMS in the body
    drain_timeout: float = 2.0  # at shutdown, how long queued alerts may still be sent
    signing_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        url = URL(self.url)
        if url.scheme != "https" or not url.host:
            raise WebhookConfigError("the alert webhook must be an https:// URL")
        if url.user or url.password:
            raise WebhookConfigError("put no credentials in the webhook URL")
        if self.timeout <= 0 or self.max_attempts < 1 or self.queue_size < 1:
            raise WebhookConfigError("timeout, attempts and queue size must be positive")
        if self.backoff_initial < 0 or self.backoff_max < self.backoff_initial:
            raise WebhookConfigError("backoff must satisfy 0 <= initial <= max")

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based)."""
        return float(min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class WebhookStats:
    queued: int
    delivered: int
    failed: int
    dropped: int
    retries: int


class WebhookSink:
    """Alert sink that delivers to an HTTPS webhook from a background task."""

    def __init__(
        self,
        config: WebhookConfig,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._log = logger or logging.getLogger("enclave.alerts.webhook")
        self._lock = threading.Lock()
        self._queue: collections.deque[Alert] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = False
        self._in_flight = 0
        self._delivered = self._failed = self._dropped = self._retries = 0

    # -- producer side (any thread, never blocks) -----------------------------------------
    def emit(self, alert: Alert) -> None:
        if alert.level < self.config.min_level:
            return
        with self._lock:
            if len(self._queue) >= self.config.queue_size:
                lowest = min(self._queue, key=lambda a: a.level)
                if lowest.level >= alert.level:
                    self._dropped += 1
                    return
                self._queue.remove(lowest)
                self._dropped += 1
            self._queue.append(alert)
            loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def stats(self) -> WebhookStats:
        with self._lock:
            return WebhookStats(
                len(self._queue) + self._in_flight,
                self._delivered,
                self._failed,
                self._dropped,
                self._retries,
            )

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        ctx = ssl.create_default_context(
            cafile=str(self.config.ca_bundle) if self.config.ca_bundle else None
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=4),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            raise_for_status=False,
        )
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            pending = bool(self._queue)
        if pending:
            self._wake.set()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="alert-webhook")

    async def close(self) -> None:
        """Send what is queued for up to ``drain_timeout`` seconds, then stop."""
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            if self._wake is not None:
                self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), self.config.drain_timeout)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        with self._lock:
            self._loop = self._wake = None

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until the queue is empty and nothing is in flight (tests, shutdown)."""
        async with asyncio.timeout(timeout):
            while self.stats().queued:
                await asyncio.sleep(0.01)

    # -- delivery -------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            with self._lock:
                alert = self._queue.popleft() if self._queue else None
                if alert is not None:
                    self._in_flight += 1
            if alert is None:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                ok = await self._deliver(alert)
            except Exception:
                self._log.exception("alert webhook delivery crashed")
                ok = False
            with self._lock:
                self._in_flight -= 1
                if ok:
                    self._delivered += 1
                else:
                    self._failed += 1

    def _body(self, alert: Alert) -> bytes:
        return json.dumps(
            {"type": BODY_TYPE, "source": self.config.source, "alert": alert.to_dict()},
            sort_keys=True,
        ).encode()

    async def _deliver(self, alert: Alert) -> bool:
        assert self._session is not None
        body = self._body(alert)
        headers = {"Content-Type": "application/json", "X-KMS-Alert-Id": alert.id}
        if self.config.signing_key is not None:
            mac = hmac.new(self.config.signing_key, body, hashlib.sha256).hexdigest()
            headers["X-KMS-Signature"] = "sha256=" + mac
        last = ""
        for attempt in range(1, self.config.max_attempts + 1):
            if attempt > 1:
                with self._lock:
                    self._retries += 1
                await self._sleep(self.config.backoff(attempt - 1))
            try:
                async with self._session.post(self.config.url, data=body, headers=headers) as r:
                    await r.read()
                    if 200 <= r.status < 300:
                        return True
                    last = f"HTTP {r.status}"
                    if r.status < 500 and r.status not in RETRY_STATUSES:
                        break
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = type(exc).__name__
        self._log.warning(
            "alert %s (%s) not delivered to the webhook: %s", alert.id, alert.kind, last
        )
        return False


def webhook_context(
    sink: WebhookSink,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """For ``app.cleanup_ctx``: the delivery task runs exactly while the app does."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        await sink.start()
        yield
        await sink.close()

    return context
