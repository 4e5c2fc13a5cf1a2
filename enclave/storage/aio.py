"""The store from the event loop: every call runs on one dedicated thread.

SQLite and the counter (an HSM call) block; ``AsyncStore`` moves them off the event loop to
a single worker thread, which also makes that thread the store's only writer. Calls are
short (a transaction's writes are buffered in memory and applied in one commit), so the
queue behind the thread stays short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from enclave.storage.counter import MonotonicCounter
from enclave.storage.records import Record, RecordRef, StorageKey
from enclave.storage.sqlite import SqliteStore, SqliteStoreConfig, SqliteTransaction

T = TypeVar("T")


class AsyncStore:
    """An ``SqliteStore`` driven from asyncio through one worker thread."""

    def __init__(self, store: SqliteStore, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor

    @classmethod
    async def open(
        cls,
        path: Path | str,
        storage_key: StorageKey | bytes,
        counter: MonotonicCounter,
        *,
        create: bool = False,
        config: SqliteStoreConfig | None = None,
    ) -> AsyncStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kms-store")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(
                executor,
                lambda: SqliteStore.open(path, storage_key, counter, create=create, config=config),
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor)

    def __repr__(self) -> str:
        return f"AsyncStore({self._store!r})"

    @property
    def store(self) -> SqliteStore:
        return self._store

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def get(self, kind: str, record_id: str) -> Record | None:
        return await self._run(lambda: self._store.get(kind, record_id))

    async def list(self, kind: str) -> list[RecordRef]:
        return await self._run(lambda: self._store.list(kind))

    async def put(
        self, kind: str, record_id: str, value: bytes, *, expected_version: int | None = None
    ) -> int:
        return await self._run(
            lambda: self._store.put(kind, record_id, value, expected_version=expected_version)
        )

    async def delete(
        self, kind: str, record_id: str, *, expected_version: int | None = None
    ) -> bool:
        return await self._run(
            lambda: self._store.delete(kind, record_id, expected_version=expected_version)
        )

    async def transact(self, body: Callable[[SqliteTransaction], T]) -> T:
        """Run ``body(tx)`` in one transaction on the store's thread (keep it short and
        free of awaits: it holds the store's lock)."""

        def run() -> T:
            with self._store.transaction() as tx:
                return body(tx)

        return await self._run(run)

    async def close(self) -> None:
        await self._run(self._store.close)
        self._executor.shutdown(wait=True)
