"""Shamir over GF(2^8), property-tested: any M shares rebuild, M-1 are consistent with anything."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.sealing.shamir import (
    Share,
    combine_shares,
    gf_inv,
    gf_mul,
    interpolate,
    split_secret,
)

FAST = settings(max_examples=60, deadline=None)


@st.composite
def split_cases(draw: st.DrawFn) -> tuple[bytes, int, int, list[int]]:
    secret = draw(st.binary(min_size=1, max_size=40))
    share_count = draw(st.integers(min_value=1, max_value=9))
    threshold = draw(st.integers(min_value=1, max_value=share_count))
    order = draw(st.permutations(list(range(share_count))))
    return secret, threshold, share_count, order


def test_field_known_answers() -> None:
    # FIPS 197 section 4.2: {57} * {83} = {c1}; {57} * {13} = {fe}
    assert gf_mul(0x57, 0x83) == 0xC1
    assert gf_mul(0x57, 0x13) == 0xFE
    for a in range(1, 256):
        assert gf_mul(a, gf_inv(a)) == 1
    with pytest.raises(ZeroDivisionError):
        gf_inv(0)


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
@FAST
def test_field_axioms(a: int, b: int, c: int) -> None:
    assert gf_mul(a, b) == gf_mul(b, a)
    assert gf_mul(a, gf_mul(b, c)) == gf_mul(gf_mul(a, b), c)
    assert gf_mul(a, b ^ c) == gf_mul(a, b) ^ gf_mul(a, c)


@given(split_cases())
@FAST
def test_any_threshold_shares_rebuild(case: tuple[bytes, int, int, list[int]]) -> None:
    secret, threshold, share_count, order = case
    shares = split_secret(secret, threshold, share_count)
    assert [s.index for s in shares] == list(range(1, share_count + 1))
    chosen = [shares[i] for i in order]
    assert combine_shares(chosen[:threshold]) == secret
    assert combine_shares(chosen) == secret  # more than needed also works


@given(split_cases(), st.data())
@FAST
def test_fewer_shares_are_consistent_with_every_secret(
    case: tuple[bytes, int, int, list[int]], data: st.DataObject
) -> None:
    """Perfect secrecy, checkably: for M-1 shares of S and any S', some full share set
    containing those M-1 shares rebuilds S'. So M-1 shares rule out no secret."""
    secret, threshold, share_count, order = case
    if threshold < 2:
        return
    shares = split_secret(secret, threshold, share_count)
    known = [shares[i] for i in order[: threshold - 1]]
    other = data.draw(st.binary(min_size=len(secret), max_size=len(secret)))
    # The unique degree-(M-1) polynomials through the known shares and (0, other):
    anchor = [*known, _share_at_zero(other)]
    missing = next(x for x in range(1, 256) if x not in {s.index for s in known})
    forged = Share(missing, interpolate(anchor, missing))
    assert combine_shares([*known, forged]) == other


def _share_at_zero(value: bytes) -> Share:
    # Share() refuses index 0 (it would be the secret itself); build the point directly.
    point = object.__new__(Share)
    object.__setattr__(point, "index", 0)
    object.__setattr__(point, "value", value)
    return point


def test_one_share_of_two_is_uniform_for_every_secret_byte() -> None:
    # For M = 2, share value = s + c*x with c uniform: every value equally likely, whatever s.
    for x in (1, 2, 3, 255):
        for s in (0, 1, 0x80, 0xFF):
            assert sorted(s ^ gf_mul(c, x) for c in range(256)) == list(range(256))


def test_fewer_than_threshold_gives_a_wrong_value() -> None:
    secret = bytes(range(32))
    shares = split_secret(secret, 3, 5)
    assert combine_shares(shares[:2]) != secret


@pytest.mark.parametrize(
    ("threshold", "count"), [(0, 3), (4, 3), (1, 256), (2, 0)], ids=["t0", "t>n", "n256", "n0"]
)
def test_split_rejects_bad_parameters(threshold: int, count: int) -> None:
    with pytest.raises(ValueError):
        split_secret(b"secret", threshold, count)


def test_combine_rejects_inconsistent_input() -> None:
    a, b, c = split_secret(b"secret", 2, 3)
    with pytest.raises(ValueError, match="same index"):
        combine_shares([a, a])
    with pytest.raises(ValueError, match="lengths"):
        combine_shares([a, Share(b.index, b.value + b"\x00")])
    with pytest.raises(ValueError):
        combine_shares([])
    with pytest.raises(ValueError):
        Share(0, b"x")
    assert "value" not in repr(c) or c.value.hex() not in repr(c)
