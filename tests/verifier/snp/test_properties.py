"""Properties: any change to a signed byte is caught; no input escapes as a non-verifier error."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.verifier.snp.conftest import VCEK_TIME, vector
from verifier.errors import BadSignature, MalformedEvidence, VerificationError
from verifier.snp.abi import REPORT_SIZE, SIGNED_SIZE
from verifier.verify import Verifier

REPORT = vector("teekit_gcp_milan_v5_report.bin")
VCEK = vector("teekit_gcp_milan_v5_vcek.pem")
V2_REPORT = vector("trustee_milan_v2_report.bin")
V2_VCEK = vector("trustee_milan_v2_vcek.der")
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def flipped(report: bytes, offset: int, mask: int) -> bytes:
    data = bytearray(report)
    data[offset] ^= mask
    return bytes(data)


@pytest.mark.parametrize(
    ("report", "vcek"), [(REPORT, VCEK), (V2_REPORT, V2_VCEK)], ids=["v5", "v2"]
)
def test_every_signed_byte_is_covered(production: Verifier, report: bytes, vcek: bytes) -> None:
    # Exhaustive over the signed region 0x000..0x29F, one bit per byte.
    for offset in range(SIGNED_SIZE):
        with pytest.raises((BadSignature, MalformedEvidence)):
            production.verify("sev-snp", flipped(report, offset, 0x01), certs=[vcek], at=VCEK_TIME)


@PROPERTY_SETTINGS
@given(offset=st.integers(0, SIGNED_SIZE - 1), mask=st.integers(1, 255))
def test_any_change_in_signed_region_is_rejected(
    production: Verifier, offset: int, mask: int
) -> None:
    with pytest.raises((BadSignature, MalformedEvidence)):
        production.verify("sev-snp", flipped(REPORT, offset, mask), certs=[VCEK], at=VCEK_TIME)


@PROPERTY_SETTINGS
@given(offset=st.integers(SIGNED_SIZE, REPORT_SIZE - 1), mask=st.integers(1, 255))
def test_any_change_in_signature_is_rejected(production: Verifier, offset: int, mask: int) -> None:
    with pytest.raises((BadSignature, MalformedEvidence)):
        production.verify("sev-snp", flipped(REPORT, offset, mask), certs=[VCEK], at=VCEK_TIME)


@PROPERTY_SETTINGS
@given(
    data=st.one_of(
        st.binary(max_size=2 * REPORT_SIZE), st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE)
    )
)
def test_random_evidence_only_raises_verification_errors(production: Verifier, data: bytes) -> None:
    with contextlib.suppress(VerificationError):
        production.verify("sev-snp", data, certs=[VCEK], at=VCEK_TIME)


@PROPERTY_SETTINGS
@given(
    prefix=st.binary(min_size=0, max_size=0x2A0),
)
def test_structurally_plausible_reports_only_raise_verification_errors(
    production: Verifier, prefix: bytes
) -> None:
    # Keep a valid header so parsing goes deeper before the random bytes take over.
    data = REPORT[:0x50] + prefix + REPORT[0x50 + len(prefix) :]
    with contextlib.suppress(VerificationError):
        production.verify("sev-snp", data, certs=[VCEK], at=VCEK_TIME)


@PROPERTY_SETTINGS
@given(
    cert=st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=600).map(
            lambda b: (
                b"-----BEGIN CERTIFICATE-----\n"
                + b.hex().encode()
                + b"\n-----END CERTIFICATE-----\n"
            )
        ),
        st.integers(0, 1359).map(lambda n: vector("virtee_milan_v2_vcek.der")[:n]),
    )
)
def test_random_certificates_only_raise_verification_errors(
    production: Verifier, cert: bytes
) -> None:
    with pytest.raises(VerificationError):
        production.verify("sev-snp", REPORT, certs=[cert], at=VCEK_TIME)


@PROPERTY_SETTINGS
@given(crl=st.binary(max_size=1024))
def test_random_collateral_only_raises_verification_errors(
    production: Verifier, crl: bytes
) -> None:
    with contextlib.suppress(VerificationError):
        production.verify("sev-snp", REPORT, certs=[VCEK], collateral=[crl], at=VCEK_TIME)
