"""Coordinator key ids: bit-reversed counters, and the OHTTP key id is their first byte."""

from __future__ import annotations

import pytest

from enclave.pakv.keyids import (
    KeyIdError,
    counter_for_key_id,
    key_id_for_counter,
    next_key_id,
    ohttp_key_id,
)


@pytest.mark.parametrize(
    ("counter", "key_id"),
    [
        (1, "8000000000000000"),
        (2, "4000000000000000"),
        (3, "C000000000000000"),
        (4, "2000000000000000"),
        (256, "0080000000000000"),
        ((1 << 64) - 1, "FFFFFFFFFFFFFFFF"),
    ],
)
def test_key_id_is_the_bit_reversed_counter(counter: int, key_id: str) -> None:
    assert key_id_for_counter(counter) == key_id
    assert counter_for_key_id(key_id) == counter


def test_ohttp_key_id_is_the_first_byte() -> None:
    assert ohttp_key_id("4000000000000000") == 64  # the K/V test key's id
    assert ohttp_key_id("8000000000000000") == 0x80


@pytest.mark.parametrize("bad", ["", "4000", "400000000000000g", "4000000000000000 ", "a" * 16])
def test_malformed_ids_are_refused(bad: str) -> None:
    with pytest.raises(KeyIdError):
        ohttp_key_id(bad)


def test_counter_zero_is_not_a_key() -> None:
    with pytest.raises(KeyIdError):
        key_id_for_counter(0)


def test_next_key_id_skips_taken_first_bytes() -> None:
    # counters 1, 2 -> 0x80, 0x40 are taken: the next free one is counter 3 (0xC0)
    allocated = next_key_id(0, {0x80, 0x40})
    assert (allocated.counter, allocated.key_id, allocated.ohttp_id) == (
        3,
        "C000000000000000",
        0xC0,
    )


def test_counter_257_collides_with_counter_1_and_is_skipped() -> None:
    assert ohttp_key_id(key_id_for_counter(257)) == ohttp_key_id(key_id_for_counter(1))
    assert next_key_id(256, {0x80}).counter == 258


def test_all_ids_held_is_an_error() -> None:
    with pytest.raises(KeyIdError):
        next_key_id(0, set(range(256)))
