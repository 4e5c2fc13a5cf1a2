"""The audit writer's one-pass encoding is the reference encoding, byte for byte.

``chain`` (what the writer uses) writes a record's canonical JSON once and splices the line
from it; ``AuditRecord.computed_hash`` and ``to_line`` (what the verifier and recovery use)
encode the fields through the generic encoder. Any input must give the same hash, the same
line and the same record from both. Likewise the writer's time formatting against
``datetime``.
"""

from __future__ import annotations

import enum
import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.audit.log import _UtcIsoTime
from enclave.audit.records import AuditRecord, chain, signature_message

PROPERTY_SETTINGS = settings(max_examples=400, deadline=None, database=None)

FIELD_NAMES = (
    "seq", "time", "principal", "operation", "outcome", "key_id", "key_version",
    "request_digest", "status", "details", "prev_hash",
)  # fmt: skip


class Level(enum.IntEnum):
    HIGH = 7


class Tag(str):
    pass


# Strings with what JSON escapes or may not: quotes, backslashes, control characters, the
# line separators, non-ASCII and astral characters.
texts = st.text(
    alphabet=st.one_of(
        st.sampled_from('"\\/\b\f\n\r\t\x00\x1f\x7f\u2028\u2029é€😀'),
        st.characters(blacklist_categories=("Cs",)),
    ),
    max_size=12,
)
ints = st.integers(min_value=-(2**70), max_value=2**70)
scalars = st.one_of(st.none(), st.booleans(), ints, texts)
json_values = st.recursive(
    st.one_of(scalars, st.floats(allow_nan=True, allow_infinity=True)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)
details = st.one_of(
    st.dictionaries(texts, scalars, max_size=5),  # flat: the writer's own path
    st.dictionaries(texts, json_values, max_size=4),  # nested: handed to the encoder
    st.dictionaries(st.integers(0, 9), scalars, min_size=1, max_size=3),  # non-str keys
)
fields = st.fixed_dictionaries(
    {
        "seq": ints,
        "time": texts,
        "principal": texts,
        "operation": texts,
        "outcome": st.sampled_from(["allowed", "denied", "invalid", "error", "event"]),
        "key_id": st.one_of(st.none(), texts),
        "key_version": st.one_of(st.none(), ints, st.booleans()),
        "request_digest": st.one_of(st.none(), texts),
        "status": st.one_of(st.none(), ints, st.booleans()),
        "details": details,
        "prev_hash": st.one_of(texts, st.text(alphabet="0123456789abcdef", min_size=64)),
    }
)


def reference(values: dict[str, Any], signature: str | None) -> AuditRecord:
    unsigned = AuditRecord(**values)
    return AuditRecord(**values, hash=unsigned.computed_hash(), signature=signature)


def sign_with_hash(record_hash: str) -> str:
    return "sig:" + signature_message(record_hash).hex()


def assert_same_as_reference(values: dict[str, Any], *, signed: bool) -> None:
    made = chain(**values, sign=sign_with_hash if signed else None)
    unsigned = AuditRecord(**values)
    expected = reference(values, sign_with_hash(unsigned.computed_hash()) if signed else None)
    assert made.record.hash == expected.hash
    assert vars(made.record) == vars(expected)
    assert made.record == expected
    assert made.line == expected.to_line()


@PROPERTY_SETTINGS
@given(values=fields, signed=st.booleans())
def test_chain_matches_the_reference_encoding(values: dict[str, Any], signed: bool) -> None:
    assert_same_as_reference(values, signed=signed)


@pytest.mark.parametrize(
    "odd",
    [
        {"key_version": Level.HIGH, "details": {"level": Level.HIGH}},
        {"principal": Tag("p\u2028"), "details": {Tag("k"): Tag('"v"')}},
        {"status": True, "details": {"flag": False, "none": None}},
        {"details": {}},
        {"details": {"float": 1.5, "nan": math.nan, "inf": -math.inf}},
        {"details": {"list": [1, "a", None], "nested": {"b": 1, "a": [{"z": 0}]}}},
        {"details": {3: "int key", 1: "sorted as ints"}},
    ],
)
def test_chain_matches_the_reference_for_unusual_values(odd: dict[str, Any]) -> None:
    values: dict[str, Any] = {
        "seq": 7, "time": "2026-11-29T23:42:20.774527+00:00", "principal": "prn_a",
        "operation": "keys.encrypt", "outcome": "allowed", "key_id": "key_1",
        "key_version": 1, "request_digest": None, "status": 200,
        "details": {"context": "hmac:00"}, "prev_hash": "0" * 64, **odd,
    }  # fmt: skip
    assert_same_as_reference(values, signed=False)
    assert_same_as_reference(values, signed=True)


def test_chain_line_has_every_field_in_sorted_order() -> None:
    values: dict[str, Any] = dict.fromkeys(FIELD_NAMES)
    values.update(seq=1, time="t", principal="p", operation="o", outcome="event",
                  details={"b": 2, "a": "1"}, prev_hash="0" * 64)  # fmt: skip
    line = chain(**values).line
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    decoded = json.loads(line)
    assert list(decoded) == sorted([*FIELD_NAMES, "hash", "signature"])
    assert decoded["details"] == {"a": "1", "b": 2}


def test_unencodable_values_fail_as_the_reference_does() -> None:
    values: dict[str, Any] = dict.fromkeys(FIELD_NAMES)
    values.update(seq=1, time="t", principal="p", operation="o", outcome="event",
                  prev_hash="0" * 64)  # fmt: skip
    for bad_details, error in (
        ({"set": {1}}, TypeError),  # not JSON
        ({"a": 1, 2: "b"}, TypeError),  # keys that do not sort together
        ({"lone": "\ud800"}, UnicodeEncodeError),  # not UTF-8
    ):
        values["details"] = bad_details
        with pytest.raises(error):
            AuditRecord(**values).computed_hash()
        with pytest.raises(error):
            chain(**values)


def reference_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")


@PROPERTY_SETTINGS
@given(st.lists(st.floats(min_value=0, max_value=2**35, allow_nan=False), max_size=20))
def test_time_formatting_matches_datetime(times: list[float]) -> None:
    formatter = _UtcIsoTime()  # one instance: its per-second cache must never leak
    for t in times:
        assert formatter(t) == reference_time(t)


def near_rounding_edges() -> list[float]:
    """Times whose microseconds round up into the next second, or sit just around a half
    microsecond (rounded half to even), and their floating-point neighbours."""
    found = []
    for second in (0, 1, 59, 86_399, 951_782_399, 1_764_460_940, 4_102_444_799):
        for fraction in (
            0.0,
            5e-7,
            1.5e-6,
            2.5e-6,
            0.4999995,
            0.5,
            0.9999994,
            0.9999995,
            0.99999995,
        ):
            t = second + fraction
            found.extend((math.nextafter(t, 0), t, math.nextafter(t, math.inf)))
    return found


def test_time_formatting_at_rounding_edges() -> None:
    formatter = _UtcIsoTime()
    for t in near_rounding_edges():
        assert formatter(t) == reference_time(t), t
    # also backwards in time and across the cache's second
    for t in reversed(near_rounding_edges()):
        assert formatter(t) == reference_time(t), t


@pytest.mark.parametrize("t", [-1.5, -0.0000001, 253_402_299_999.5, 253_402_300_799.0])
def test_time_formatting_outside_the_fast_range_is_datetimes(t: float) -> None:
    assert _UtcIsoTime()(t) == reference_time(t)


def test_time_formatting_refuses_what_datetime_refuses() -> None:
    for bad in (math.nan, math.inf, 1e20):
        with pytest.raises((ValueError, OverflowError, OSError)):
            reference_time(bad)
        with pytest.raises((ValueError, OverflowError, OSError)):
            _UtcIsoTime()(bad)
