"""A small bounded, thread-safe memo for pure functions of bytes.

Why this exists: a verifier sees the same PCK chain, QE report and collateral over and over
(one platform, many quotes), and parsing certificates or checking an ECDSA signature over
the same bytes always gives the same answer. Memoising those pure results, keyed by a
SHA-256 digest of every input byte that decides them, changes the cost of a verdict and
never the verdict: times, anchors, CRLs and validity windows are still checked on every
call. Only successes are memoised; failures are recomputed (and raised) every time.

Where memos live: never in a module global. A verifier module keeps its memo tables in one
object attached to the caller's ``ChainVerifier`` (``ChainVerifier.attachment``), so they
share the lifetime and trust configuration of its verified-link cache, and two verifiers
share nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from threading import Lock
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """Least-recently-used map of at most ``capacity`` successful results."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a memo needs a positive capacity")
        self._capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = Lock()

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()  # may raise; nothing is stored then
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return value

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def add(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
