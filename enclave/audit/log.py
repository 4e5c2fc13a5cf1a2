"""The audit log: log generator -> bounded thread-safe buffer -> buffer manager ->
storage writer -> secure storage (the seed's Audit Logging System).

``record()`` hands an entry to a bounded queue and waits until the writer thread has
written it, chained, in a group commit (one fsync for everything waiting), so an operation
answers only once its record is durable. When the sink fails, the log turns unhealthy:
callers get ``AuditUnavailable`` (the KMS refuses operations, fail closed), a Critical alert
is raised once, and the pending records stay queued, in order, until the sink accepts them
again: nothing acknowledged as recorded is ever lost. Checkpoints signed with the audit key
are appended every ``checkpoint_every`` records or ``checkpoint_interval`` seconds.

Listeners (``add_listener``) let the monitoring feature hear of failures, recoveries and
each durable record without the log's constructor knowing them; they run on the writer
thread, must be quick, and a listener that raises is logged and otherwise ignored.
``request_scope()`` counts the records submitted while a request is handled (a per-log
context variable), so the HTTP layer can add a record only for requests that no service
produced one for, and never a second one.

``record()`` (the asyncio callers) waits on a future of its own loop; after each group
commit the writer thread wakes each loop once for the whole batch (one
``call_soon_threadsafe`` per loop and batch, not one per record), and each future is
settled only after the sink's ``append`` (write + fsync) returned.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from enclave.audit.records import (
    CHECKPOINT_OPERATION,
    GENESIS_HASH,
    HEADER_TYPE,
    AuditRecord,
    ChainedRecord,
    Outcome,
    b64,
    chain,
    signature_message,
)
from enclave.audit.sink import AuditSink

log = logging.getLogger("enclave.audit")


class AuditUnavailable(Exception):
    """The audit log cannot be written: the operation is refused (fail closed)."""

    type = "audit-unavailable"


@dataclass(frozen=True)
class AuditConfig:
    checkpoint_every: int = 1000
    checkpoint_interval: float = 30.0
    max_queue: int = 50_000
    max_batch: int = 2048
    retry_interval: float = 0.5


@dataclass(slots=True)
class _Entry:
    principal: str
    operation: str
    outcome: Outcome
    key_id: str | None
    key_version: int | None
    request_digest: str | None
    status: int | None
    details: dict[str, Any]
    time: float  # the clock at submission; formatted by the writer thread (``_chain``)
    # Exactly one of the two: a thread-safe future (``submit``) or an asyncio future and
    # its loop (``record``), settled on that loop.
    future: Future[AuditRecord] | None = None
    waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[AuditRecord]] | None = None


@dataclass
class RequestScope:
    """Records submitted while one request was handled (see ``AuditLog.request_scope``)."""

    records: int = 0


class _ScopeContext:
    """``AuditLog.request_scope``'s context manager: a plain class, since it is entered once
    per request (a generator-based one costs a generator and its frames each time)."""

    __slots__ = ("_token", "_var", "scope")

    def __init__(self, var: contextvars.ContextVar[RequestScope | None]) -> None:
        self._var = var
        self.scope = RequestScope()

    def __enter__(self) -> RequestScope:
        self._token = self._var.set(self.scope)
        return self.scope

    def __exit__(self, *exc: object) -> None:
        self._var.reset(self._token)


@dataclass(frozen=True)
class AuditListener:
    """Callbacks for the log's events; each runs on the writer thread and must not block."""

    on_failure: Callable[[str], object] | None = None
    on_recovery: Callable[[], object] | None = None
    on_record: Callable[[AuditRecord], object] | None = None


@dataclass(frozen=True)
class AuditStats:
    queue_depth: int
    written: int
    last_seq: int
    healthy: bool
    batches: int


class AuditLog:
    def __init__(
        self,
        sink: AuditSink,
        *,
        sign: Callable[[bytes], bytes],
        public_key: bytes,
        hmac_key: bytes,
        kms_id: str,
        config: AuditConfig | None = None,
        clock: Callable[[], float] = time.time,
        on_failure: Callable[[str], None] | None = None,
        on_recovery: Callable[[], None] | None = None,
    ) -> None:
        self._sink = sink
        self._sign = sign
        self.public_key = public_key
        self._hmac_key = hmac_key
        self._hmac_base = hmac.new(hmac_key, digestmod=hashlib.sha256)
        self.kms_id = kms_id
        self._config = config or AuditConfig()
        self._clock = clock
        self._on_failure = on_failure
        self._on_recovery = on_recovery
        # A SimpleQueue (no Condition: a put from the event loop neither takes a Python
        # lock nor wakes the writer through one), bounded in ``_enqueue``.
        self._queue: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
        self._max_queue = self._config.max_queue
        # Chained records not yet durable, each with its line (written on every retry).
        self._pending: list[ChainedRecord] = []
        self._format_time = _UtcIsoTime()
        self._healthy = True
        self._written = 0
        self._batches = 0
        self._since_checkpoint = 0
        self._last_checkpoint_time = clock()
        self._next_seq, self._prev_hash = self._recover()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._listeners: tuple[AuditListener, ...] = ()
        self._scope: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
            f"audit-request-scope-{id(self):x}", default=None
        )

    # -- listeners ---------------------------------------------------------------------
    def add_listener(self, listener: AuditListener) -> Callable[[], None]:
        """Add ``listener``; returns a function that removes it again."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def remove() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return remove

    def _notify(self, event: str, *args: Any) -> None:
        for listener in self._listeners:
            callback = getattr(listener, event)
            if callback is None:
                continue
            try:
                callback(*args)
            except Exception:
                log.exception("audit %s listener failed", event)

    def request_scope(self) -> _ScopeContext:
        """``with audit.request_scope() as scope:`` every record submitted in this context
        (this task, and tasks it starts) while the block runs is counted in ``scope``."""
        return _ScopeContext(self._scope)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # still writing: the sink stays open under it
            self._thread = None
        self._sink.close()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def stats(self) -> AuditStats:
        return AuditStats(
            queue_depth=self._queue.qsize() + len(self._pending),
            written=self._written,
            last_seq=self._next_seq - 1,
            healthy=self._healthy,
            batches=self._batches,
        )

    # -- producers ---------------------------------------------------------------------
    def digest(self, data: bytes) -> str:
        """HMAC-SHA256 of a request or sensitive value: comparable, never reversible.

        A copy of a keyed HMAC made once: ``hmac.digest`` (one shot) releases the GIL on
        every call, and on the event loop thread each release can hand the GIL to the
        writer thread and wait for it (milliseconds on a busy machine); a copy + update of
        a small value does not release it."""
        mac = self._hmac_base.copy()
        mac.update(data)
        return mac.hexdigest()

    def submit(
        self,
        *,
        principal: str,
        operation: str,
        outcome: Outcome,
        key_id: str | None = None,
        key_version: int | None = None,
        request: bytes | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        sensitive: dict[str, bytes] | None = None,
    ) -> Future[AuditRecord]:
        future: Future[AuditRecord] = Future()
        self._enqueue(
            principal=principal, operation=operation, outcome=outcome, key_id=key_id,
            key_version=key_version, request=request, status=status, details=details,
            sensitive=sensitive, future=future,
        )  # fmt: skip
        return future

    def _enqueue(
        self,
        *,
        principal: str,
        operation: str,
        outcome: Outcome,
        key_id: str | None = None,
        key_version: int | None = None,
        request: bytes | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        sensitive: dict[str, bytes] | None = None,
        future: Future[AuditRecord] | None = None,
        waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[AuditRecord]] | None = None,
    ) -> None:
        merged = dict(details or {})
        for name, value in (sensitive or {}).items():
            merged[name] = "hmac:" + self.digest(value)
        entry = _Entry(
            principal=principal,
            operation=operation,
            outcome=outcome,
            key_id=key_id,
            key_version=key_version,
            request_digest=self.digest(request) if request is not None else None,
            status=status,
            details=merged,
            time=self._clock(),
            future=future,
            waiter=waiter,
        )
        scope = self._scope.get()
        if scope is not None:
            scope.records += 1
        if 0 < self._max_queue <= self._queue.qsize():
            _settle([entry], None, AuditUnavailable("audit buffer is full"))
            return
        self._queue.put_nowait(entry)

    async def record(
        self,
        *,
        principal: str,
        operation: str,
        outcome: Outcome,
        key_id: str | None = None,
        key_version: int | None = None,
        request: bytes | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        sensitive: dict[str, bytes] | None = None,
    ) -> AuditRecord:
        """Submit and wait until the record is durable; raise AuditUnavailable otherwise.
        (``submit``'s parameters, spelled out: every request passes here, and re-packing
        ``**kwargs`` twice cost it two dicts.)"""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[AuditRecord] = loop.create_future()
        self._enqueue(
            principal=principal, operation=operation, outcome=outcome, key_id=key_id,
            key_version=key_version, request=request, status=status, details=details,
            sensitive=sensitive, waiter=(loop, waiter),
        )  # fmt: skip
        return await waiter

    def record_sync(self, timeout: float = 30.0, **kwargs: Any) -> AuditRecord:
        return self.submit(**kwargs).result(timeout)

    # -- export ------------------------------------------------------------------------
    def read_lines(self) -> list[bytes]:
        """Every record line written so far (for reports and jobs; no header)."""
        return list(self._sink.read_lines())

    def checkpoint_now(self, timeout: float = 30.0) -> AuditRecord:
        return self.record_sync(
            timeout, principal="kms", operation=CHECKPOINT_OPERATION, outcome="event"
        )

    def export_lines(self) -> list[bytes]:
        """A self-contained export: header (with the audit public key) then every record,
        ending with a fresh signed checkpoint."""
        self.checkpoint_now()
        header = {
            "type": HEADER_TYPE,
            "kms_id": self.kms_id,
            "audit_public_key": b64(self.public_key),
            "exported_at": datetime.fromtimestamp(self._clock(), UTC).isoformat(),
        }
        lines = [json.dumps(header, sort_keys=True).encode() + b"\n"]
        lines.extend(self._sink.read_lines())
        return lines

    # -- writer thread -----------------------------------------------------------------
    def _recover(self) -> tuple[int, str]:
        self._sink.drop_torn_tail()
        last: AuditRecord | None = None
        for line in self._sink.read_lines():
            if line.strip():
                last = AuditRecord.from_json(json.loads(line))
        if last is None:
            return 0, GENESIS_HASH
        if last.computed_hash() != last.hash:
            raise AuditUnavailable("the audit log's last record does not match its hash")
        return last.seq + 1, last.hash

    def _run(self) -> None:
        stopping = False
        while not stopping or self._pending:
            batch: list[_Entry] = []
            timeout = self._config.retry_interval if self._pending else self._time_to_checkpoint()
            try:
                item = self._queue.get(timeout=max(timeout, 0.001))
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
            except queue.Empty:
                pass
            while len(batch) < self._config.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._write(batch)
            if stopping and self._pending and not self._healthy:
                break

    def _time_to_checkpoint(self) -> float:
        return self._last_checkpoint_time + self._config.checkpoint_interval - self._clock()

    def _write(self, batch: list[_Entry]) -> None:
        if not self._healthy and not self._try_flush():
            # Storage is still down: refuse the new entries at once (their operations are
            # refused), but chain and keep every record for the retry, so none is lost.
            checkpoints = [e for e in batch if e.operation == CHECKPOINT_OPERATION]
            records = [e for e in batch if e.operation != CHECKPOINT_OPERATION]
            kept, chained = self._chain_each(records)
            self._pending.extend(chained)
            _settle(checkpoints + kept, None, AuditUnavailable("audit storage is unavailable"))
            return
        batch, chained = self._chain_each(batch)
        self._pending.extend(chained)
        if self._checkpoint_due(len(chained)):
            self._pending.append(self._checkpoint())
        if self._try_flush():
            _settle(batch, [c.record for c in chained], None)
        else:
            _settle(batch, None, AuditUnavailable("audit storage is unavailable"))

    def _try_flush(self) -> bool:
        if not self._pending:
            return True
        try:
            self._sink.append([c.line for c in self._pending])
        except OSError as exc:
            if self._healthy:
                self._healthy = False
                reason = f"audit log write failed: {exc.strerror or exc}"
                if self._on_failure:
                    self._on_failure(reason)
                self._notify("on_failure", reason)
            return False
        written = self._pending
        self._written += len(written)
        self._batches += 1
        self._pending = []
        if not self._healthy:
            self._healthy = True
            if self._on_recovery:
                self._on_recovery()
            self._notify("on_recovery")
        if self._listeners:
            self._notify_records(written)
        return True

    def _notify_records(self, written: list[ChainedRecord]) -> None:
        """``on_record`` for each durable record but checkpoints (the callbacks are looked up
        once per batch, not per record)."""
        callbacks = [x.on_record for x in self._listeners if x.on_record is not None]
        for record, _ in written:
            if record.is_checkpoint:
                continue
            for callback in callbacks:
                try:
                    callback(record)
                except Exception:
                    log.exception("audit on_record listener failed")

    def _chain_each(self, batch: list[_Entry]) -> tuple[list[_Entry], list[ChainedRecord]]:
        """The entries of ``batch`` that chained, and their records. An entry that cannot
        be written (a value JSON or UTF-8 cannot encode) is refused on its own, before it
        changes the chain: the writer thread, and every other record, go on."""
        kept: list[_Entry] = []
        chained: list[ChainedRecord] = []
        for entry in batch:
            try:
                chained.append(self._chain(entry))
            except (TypeError, ValueError, RecursionError):
                log.error("audit record refused: %s has a value that cannot be encoded",
                          entry.operation)  # fmt: skip
                _settle([entry], None, AuditUnavailable("the audit record cannot be encoded"))
                continue
            kept.append(entry)
        return kept, chained

    def _chain(self, entry: _Entry) -> ChainedRecord:
        checkpoint = entry.operation == CHECKPOINT_OPERATION
        chained = chain(
            seq=self._next_seq,
            time=self._format_time(entry.time),
            principal=entry.principal,
            operation=entry.operation,
            outcome=entry.outcome,
            key_id=entry.key_id,
            key_version=entry.key_version,
            request_digest=entry.request_digest,
            status=entry.status,
            details=entry.details,
            prev_hash=self._prev_hash,
            sign=self._sign_checkpoint if checkpoint else None,
        )
        if checkpoint:
            self._since_checkpoint = 0
            self._last_checkpoint_time = self._clock()
        else:
            self._since_checkpoint += 1
        self._next_seq += 1
        self._prev_hash = chained.record.hash
        return chained

    def _sign_checkpoint(self, record_hash: str) -> str:
        return b64(self._sign(signature_message(record_hash)))

    def _checkpoint_due(self, added: int) -> bool:
        if self._since_checkpoint == 0:
            return False
        return (
            self._since_checkpoint >= self._config.checkpoint_every
            or self._time_to_checkpoint() <= 0
        )

    def _checkpoint(self) -> ChainedRecord:
        entry = _Entry(
            principal="kms",
            operation=CHECKPOINT_OPERATION,
            outcome="event",
            key_id=None,
            key_version=None,
            request_digest=None,
            status=None,
            details={"kms_id": self.kms_id},
            time=self._clock(),
        )
        return self._chain(entry)


def _settle(
    entries: list[_Entry], records: list[AuditRecord] | None, error: BaseException | None
) -> None:
    """Give each entry its record (``records[i]``) or ``error``: thread-safe futures at once,
    asyncio futures with one ``call_soon_threadsafe`` per loop for the whole batch."""
    by_loop: dict[
        asyncio.AbstractEventLoop,
        list[tuple[asyncio.Future[AuditRecord], AuditRecord | None]],
    ] = {}
    for index, entry in enumerate(entries):
        record = records[index] if records is not None else None
        if entry.future is not None:
            if record is not None:
                entry.future.set_result(record)
            else:
                entry.future.set_exception(error or AuditUnavailable("audit record not written"))
        if entry.waiter is not None:
            loop, waiter = entry.waiter
            by_loop.setdefault(loop, []).append((waiter, record))
    for loop, waiters in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, waiters, error)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            continue


def _resolve(
    waiters: list[tuple[asyncio.Future[AuditRecord], AuditRecord | None]],
    error: BaseException | None,
) -> None:
    for waiter, record in waiters:
        if waiter.done():  # the awaiting task was cancelled
            continue
        if record is not None:
            waiter.set_result(record)
        else:
            # a fresh instance per waiter: one exception object is never raised in two tasks
            waiter.set_exception(AuditUnavailable(str(error or "audit record not written")))


class _UtcIsoTime:
    """``datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")``, byte for byte,
    with the date and time of day formatted once per second rather than once per record
    (the writer formats every record's time, holding the GIL)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, t: float) -> str:
        if not 0.0 <= t < _FAST_TIME_LIMIT:
            return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")
        # datetime's own split: the fraction times 10**6, rounded half to even, may carry.
        fraction, whole = math.modf(t)
        second, micro = int(whole), round(fraction * 1e6)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._second:
            whole_second = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")
            self._prefix = whole_second.removesuffix("+00:00")
            self._second = second
        return f"{self._prefix}.{micro:06d}+00:00"


# Below this (the year 9999 is at 253402300800) a time has a four-digit year and no sign.
_FAST_TIME_LIMIT = 253_402_300_000.0
