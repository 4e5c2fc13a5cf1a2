"""Single-use challenges with a time to live (onboarding proofs, attested key release).

Challenges live in enclave memory only: they are worth nothing after their TTL, and a
restart simply invalidates the outstanding ones. The book is bounded; when it is full the
oldest outstanding challenge is dropped, so a flood of requests cannot grow memory.

Must never: accept a challenge twice, after its TTL, or one it did not issue.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta

CHALLENGE_BYTES = 32


class ChallengeBook:
    def __init__(
        self,
        clock: Callable[[], datetime],
        ttl: timedelta,
        *,
        max_outstanding: int = 10_000,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if ttl <= timedelta(0) or max_outstanding < 1:
            raise ValueError("a challenge book needs a positive TTL and capacity")
        self._clock = clock
        self._ttl = ttl
        self._max = max_outstanding
        self._random = random
        self._outstanding: OrderedDict[bytes, datetime] = OrderedDict()

    def issue(self) -> bytes:
        challenge = self._random(CHALLENGE_BYTES)
        self._outstanding[challenge] = self._clock() + self._ttl
        while len(self._outstanding) > self._max:
            self._outstanding.popitem(last=False)
        return challenge

    def consume(self, challenge: bytes) -> bool:
        """True once for a challenge issued here and still within its TTL."""
        if not isinstance(challenge, bytes) or len(challenge) != CHALLENGE_BYTES:
            return False
        # Challenges are public nonces: a dict look-up (not constant time) leaks nothing.
        expires = self._outstanding.pop(challenge, None)
        if expires is None:
            return False
        now = self._clock()
        self._purge(now)
        return now <= expires

    def peek(self, challenge: bytes) -> bool:
        """Whether ``challenge`` is outstanding and fresh (without using it)."""
        expires = self._outstanding.get(challenge)
        return expires is not None and self._clock() <= expires

    def _purge(self, now: datetime) -> None:
        for stale in [c for c, exp in self._outstanding.items() if exp < now]:
            del self._outstanding[stale]
