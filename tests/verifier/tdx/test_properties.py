"""Property tests: any change to the signed quote is refused; junk raises only typed errors."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.verifier.tdx.conftest import ALL_CHAINS_VALID, read
from verifier.errors import BadSignature, MalformedEvidence, VerificationError
from verifier.roots import TrustRoots
from verifier.verify import Verifier

V4 = read("dcapqvl_v4_quote.bin")
V5 = read("gotdx_v5_quote.bin")
V4_SIGNED = 48 + 584
V5_SIGNED = 48 + 6 + 648
VERIFIER = Verifier(TrustRoots.production())
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(("quote", "signed"), [(V4, V4_SIGNED), (V5, V5_SIGNED)], ids=["v4", "v5"])
def test_flipping_any_signed_byte_is_refused(quote: bytes, signed: int) -> None:
    @SETTINGS
    @given(st.integers(0, signed - 1), st.integers(1, 255))
    def check(index: int, mask: int) -> None:
        mutated = bytearray(quote)
        mutated[index] ^= mask
        with pytest.raises((BadSignature, MalformedEvidence)):
            VERIFIER.verify("tdx", bytes(mutated), at=ALL_CHAINS_VALID)

    check()


@SETTINGS
@given(st.integers(0, len(V4) - 1), st.integers(1, 255))
def test_flipping_any_byte_never_crashes(index: int, mask: int) -> None:
    mutated = bytearray(V4)
    mutated[index] ^= mask
    with contextlib.suppress(VerificationError):
        VERIFIER.verify("tdx", bytes(mutated), at=ALL_CHAINS_VALID)


@SETTINGS
@given(st.integers(0, len(V4) - 71))
def test_truncation_is_refused(length: int) -> None:
    with pytest.raises(VerificationError):
        VERIFIER.verify("tdx", V4[:length], at=ALL_CHAINS_VALID)


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_input_raises_only_verification_errors(data: bytes) -> None:
    with pytest.raises(VerificationError):
        VERIFIER.verify("tdx", data, at=ALL_CHAINS_VALID)


@SETTINGS
@given(st.binary(min_size=0, max_size=512), st.integers(0, 4000))
def test_random_tail_of_a_real_header_raises_only_verification_errors(
    tail: bytes, cut: int
) -> None:
    with pytest.raises(VerificationError):
        VERIFIER.verify("tdx", V4[: min(cut, len(V4) - 71)] + tail, at=ALL_CHAINS_VALID)


@SETTINGS
@given(st.binary(max_size=1024))
def test_random_collateral_raises_only_verification_errors(blob: bytes) -> None:
    with contextlib.suppress(VerificationError):
        VERIFIER.verify("tdx", V4, collateral=[blob], at=ALL_CHAINS_VALID)
