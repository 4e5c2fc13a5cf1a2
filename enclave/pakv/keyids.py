"""Key ids as the coordinators make them, and the 1-byte OHTTP key id derived from them.

A coordinator key id is 16 uppercase hex characters: a 64-bit counter with its bits
reversed (counter 1 -> ``8000000000000000``, 2 -> ``4000000000000000``, 3 ->
``C000000000000000``). The K/V servers turn it into the OHTTP key id (RFC 9458 section 3,
a single byte) by taking its first two hex characters, so the first byte must be unique
among all keys any server may still hold; ``next_key_id`` skips counters whose first byte
is taken.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

KEY_ID_CHARS = 16
COUNTER_BITS = 64
MAX_COUNTER = (1 << COUNTER_BITS) - 1
OHTTP_KEY_ID_VALUES = 256
KEY_ID_RE = re.compile(r"[0-9A-F]{16}")


class KeyIdError(ValueError):
    """A key id or counter is malformed, or no free OHTTP key id is left."""


def bit_reverse64(value: int) -> int:
    if not 0 <= value <= MAX_COUNTER:
        raise KeyIdError("a counter is an unsigned 64-bit integer")
    return int(f"{value:064b}"[::-1], 2)


def key_id_for_counter(counter: int) -> str:
    """The coordinators' key id for ``counter``: 16 uppercase hex of the bit-reversed value."""
    if counter < 1:
        raise KeyIdError("key counters start at 1")
    return f"{bit_reverse64(counter):016X}"


def counter_for_key_id(key_id: str) -> int:
    return bit_reverse64(int(check_key_id(key_id), 16))


def check_key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        raise KeyIdError("a key id is 16 uppercase hexadecimal characters")
    return key_id


def ohttp_key_id(key_id: str) -> int:
    """The 1-byte OHTTP key id of a coordinator key id: its first byte (first two hex chars)."""
    return int(check_key_id(key_id)[:2], 16)


@dataclass(frozen=True)
class AllocatedKeyId:
    counter: int
    key_id: str

    @property
    def ohttp_id(self) -> int:
        return ohttp_key_id(self.key_id)


def next_key_id(after_counter: int, taken_ohttp_ids: Collection[int]) -> AllocatedKeyId:
    """The first counter above ``after_counter`` whose OHTTP key id is not taken."""
    if len(set(taken_ohttp_ids)) >= OHTTP_KEY_ID_VALUES:
        raise KeyIdError("all 256 OHTTP key ids are held: shorten retention or the key count")
    counter = after_counter + 1
    # The first byte is the bit reversal of the counter's low byte: 256 steps see them all.
    for _ in range(OHTTP_KEY_ID_VALUES):
        key_id = key_id_for_counter(counter)
        if ohttp_key_id(key_id) not in taken_ohttp_ids:
            return AllocatedKeyId(counter, key_id)
        counter += 1
    raise KeyIdError("no free OHTTP key id")  # pragma: no cover - excluded by the check above
