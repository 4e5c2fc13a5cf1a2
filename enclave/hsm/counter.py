"""The storage layer's monotonic counter, kept as token objects in the HSM.

Implements ``enclave.storage.counter.MonotonicCounter``. SoftHSM2 makes CKA_VALUE of a
CKO_DATA object read-only after creation (CKR_ATTRIBUTE_READ_ONLY, measured on 2.6.1), so a
counter value is not modified in place: each value is its own private, non-modifiable token
CKO_DATA object (label ``COUNTER_LABEL``, application ``enclave-kms``, value 8 bytes
big-endian). ``advance`` first creates the object for ``expected + 1`` and then destroys the
older ones; the counter's value is the largest value present. A crash between the two steps
leaves the new value in force and a stale object that the next ``advance`` removes, so the
value never goes back and is never skipped. Compare-and-advance is atomic because every
PKCS#11 call of the process runs on the backend's single worker thread.

Must never: decrease, or advance without the caller's expected value matching.
"""

from __future__ import annotations

from typing import Any

from pkcs11 import Attribute, ObjectClass

from enclave.hsm.backend import HsmBackend, TokenSession
from enclave.hsm.config import APPLICATION
from enclave.hsm.errors import HsmPolicyError
from enclave.storage.counter import CounterConflict

COUNTER_VALUE_BYTES = 8
COUNTER_MAX = (1 << (8 * COUNTER_VALUE_BYTES)) - 1


class HsmMonotonicCounter:
    """``MonotonicCounter`` on the token behind ``backend``.

    ``read``/``advance`` block the calling thread until the worker answers (the protocol is
    synchronous, for the storage layer's commit path); from the event loop use
    ``read_async``/``advance_async``.
    """

    def __init__(self, backend: HsmBackend, label: str | None = None) -> None:
        self._backend = backend
        self._label = label or backend.config.counter_label
        if len(self._label.encode()) > 128:
            raise ValueError("counter label must be at most 128 bytes")

    def __repr__(self) -> str:
        return f"HsmMonotonicCounter(label={self._label!r})"

    def read(self) -> int:
        return self._backend.run_on_token_blocking("counter.read", self._read)

    def advance(self, expected: int) -> int:
        return self._backend.run_on_token_blocking(
            "counter.advance", lambda st: self._advance(st, expected)
        )

    async def read_async(self) -> int:
        return await self._backend.run_on_token("counter.read", self._read)

    async def advance_async(self, expected: int) -> int:
        return await self._backend.run_on_token(
            "counter.advance", lambda st: self._advance(st, expected)
        )

    # -- on the worker thread ---------------------------------------------------------------

    def _objects(self, st: TokenSession) -> list[tuple[int, Any]]:
        found = st.session.get_objects(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.LABEL: self._label,
                Attribute.APPLICATION: APPLICATION,
            }
        )
        values = []
        for obj in found:
            raw = bytes(obj[Attribute.VALUE])
            if len(raw) != COUNTER_VALUE_BYTES:
                raise HsmPolicyError("a counter object on the token is malformed")
            values.append((int.from_bytes(raw, "big"), obj))
        return values

    def _read(self, st: TokenSession) -> int:
        return max((value for value, _ in self._objects(st)), default=0)

    def _advance(self, st: TokenSession, expected: int) -> int:
        if isinstance(expected, bool) or not isinstance(expected, int):
            raise TypeError("expected must be an int")
        present = self._objects(st)
        current = max((value for value, _ in present), default=0)
        if current != expected:
            raise CounterConflict(f"counter is at {current}, not at {expected}")
        if current >= COUNTER_MAX:
            raise HsmPolicyError("counter exhausted")
        new = current + 1
        st.session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.MODIFIABLE: False,
                Attribute.LABEL: self._label,
                Attribute.APPLICATION: APPLICATION,
                Attribute.VALUE: new.to_bytes(COUNTER_VALUE_BYTES, "big"),
            }
        )
        for _, obj in present:
            obj.destroy()
        return new
