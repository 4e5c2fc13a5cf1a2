"""The one thread that talks PKCS#11.

python-pkcs11 initialises the library with C_Initialize(NULL): no locking callbacks and no
CKF_OS_LOCKING_OK, so SoftHSM2 runs without internal locks and crashes (segfault, malloc
abort) when two threads call into it. Every PKCS#11 call therefore runs on the single
thread of a ``ThreadPoolExecutor(max_workers=1)`` owned by one ``Pkcs11Worker``; the asyncio
side awaits futures. The worker records the id of every thread that ran a task, so tests can
prove the discipline under load.

Must never: run PKCS#11 code on any other thread, or block the worker on itself
(``run_blocking`` called on the worker thread runs inline instead of waiting on itself).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from enclave.hsm.errors import HsmClosed, HsmConfigError

T = TypeVar("T")


class Pkcs11Worker:
    """A single dedicated thread with an async and a blocking way to run calls on it."""

    def __init__(self, name: str = "pkcs11") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._closed = False
        self._thread_ids: set[int] = set()
        self._tasks = 0
        # Start the thread now and learn its id; ThreadPoolExecutor never replaces its only
        # thread while it is open, so this id is the one every task runs on.
        self._thread_id = self._executor.submit(threading.get_ident).result()

    @property
    def thread_id(self) -> int:
        return self._thread_id

    def on_worker(self) -> bool:
        return threading.get_ident() == self._thread_id

    def assert_on_worker(self) -> None:
        if not self.on_worker():
            raise HsmConfigError("PKCS#11 call attempted off the worker thread")

    def thread_ids_seen(self) -> frozenset[int]:
        """Ids of every thread that has run a task (exactly one if the discipline holds)."""
        with self._lock:
            return frozenset(self._thread_ids)

    @property
    def tasks_run(self) -> int:
        with self._lock:
            return self._tasks

    def _wrapped(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            self._thread_ids.add(threading.get_ident())
            self._tasks += 1
        return fn(*args)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        with self._lock:
            if self._closed:
                raise HsmClosed("the PKCS#11 worker is shut down")
            return self._executor.submit(self._wrapped, fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the worker thread and await its result from the event loop."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def run_blocking(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run ``fn`` on the worker thread and wait (for synchronous callers)."""
        if self.on_worker():
            return self._wrapped(fn, *args)  # already on the worker: never wait on itself
        return self.submit(fn, *args).result(timeout=timeout)

    def shutdown(self, final: Callable[[], None] | None = None) -> None:
        """Run ``final`` (teardown) on the worker after queued tasks, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            future = self._executor.submit(self._wrapped, final) if final else None
            self._closed = True
        try:
            if future is not None:
                future.result()
        finally:
            self._executor.shutdown(wait=True)
