"""Real TDX quotes from tests/vectors/tdx (see PROVENANCE.md): accepted, rejected, TCB status."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.verifier.tdx.conftest import ALL_CHAINS_VALID, read, utc
from verifier.errors import (
    BadCertificateChain,
    BadSignature,
    CollateralError,
    CollateralExpired,
    Expired,
)
from verifier.roots import TrustRoots
from verifier.verify import Verifier

# file, version, body type, fmspc, MRTD prefix/suffix, REPORTDATA prefix/suffix (before the
# trailing zeros), debug: the values PROVENANCE.md records for each quote.
VALID = [
    ("dcapqvl_v4_quote.bin", 4, 2, "b0c06f000000", "91eb2b44", "18b7", "9a9d48e7", "3f20"),
    ("dcapqvl_v4_quote_0x.hex", 4, 2, "b0c06f000000", "7ba9e262", "bb29", "7148f47e", "cd8a"),
    ("dcapqvl_v5_quote_outdated.bin", 5, 3, "90c06f000000", "273828c4", "3dbd", "d2142b64", "7728"),
    ("gotdx_v4_quote_spr_e4.bin", 4, 2, "50806f000000", "6363b804", "5cbb", "6c62dec1", "1113"),
    ("gotdx_v5_quote.bin", 5, 3, "90c06f000000", "7348651a", "f876", "945eaacf", "5c3a"),
    ("gotdx_v4_quote_cos113_padded8000.bin", 4, 2, "00806f050000", "dae67181", "f94a", "", ""),
    ("trustee_v4_quote_nopad.bin", 4, 2, "50806f000000", "705ee938", "f031", "7c71fe2c", "1429"),
    ("trustee_v5_quote.bin", 5, 3, "90c06f000000", "dfba221b", "400a", "6d6ab13b", "049f"),
    ("trustee_v4_quote_6.bin", 4, 2, "00a06d080000", "21e8dead", "1e88", "26cae1c7", "2cfd"),
    ("trustee_azure_v4_td_quote.bin", 4, 2, "00806f050000", "024a32b0", "ab7b", "9734504f", "3839"),
    ("teekit_azure_v4_quote.b64", 4, 2, "00806f050000", "fe27b2aa", "0d0a", "675b293e", "5afe"),
    (
        "teekit_edgeless_v4_quote.bin",
        4,
        2,
        "00806f050000",
        "b65ea009",
        "f71b",
        b"Hello from Edgeless Systems!".hex()[:8],
        b"Hello from Edgeless Systems!".hex()[-4:],
    ),
]


@pytest.mark.parametrize(
    ("name", "version", "body_type", "fmspc", "mrtd_head", "mrtd_tail", "rd_head", "rd_tail"),
    VALID,
    ids=[v[0] for v in VALID],
)
def test_valid_quote_is_accepted_with_provenance_values(
    production: Verifier,
    name: str,
    version: int,
    body_type: int,
    fmspc: str,
    mrtd_head: str,
    mrtd_tail: str,
    rd_head: str,
    rd_tail: str,
) -> None:
    claims = production.verify("tdx", read(name), at=ALL_CHAINS_VALID)
    assert claims.platform == "tdx"
    assert not claims.simulated
    assert claims.details["version"] == version
    assert claims.details["body_type"] == body_type
    assert claims.details["fmspc"] == fmspc
    assert claims.details["mrtd"] == claims.measurement.hex()
    assert claims.measurement.hex().startswith(mrtd_head)
    assert claims.measurement.hex().endswith(mrtd_tail)
    assert len(claims.report_data) == 64
    assert claims.report_data.hex().startswith(rd_head)
    assert claims.report_data.rstrip(b"\x00").hex().endswith(rd_tail)
    assert "tcb_status" not in claims.details
    assert claims.details["revocation_checked"] is False
    if body_type == 3:
        assert len(str(claims.details["mr_servicetd"])) == 96
    assert len(claims.details["pck_sgx_tcb_components"]) == 16  # type: ignore[arg-type]


def test_full_mrtd_of_the_dcapqvl_sample(production: Verifier) -> None:
    claims = production.verify("tdx", read("dcapqvl_v4_quote.bin"), at=ALL_CHAINS_VALID)
    assert claims.measurement.hex() == (
        "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407"
        "de03ae6dc5f87f27428b2538873118b7"
    )
    assert claims.details["tee_tcb_svn"] == "06010300000000000000000000000000"


def test_debug_attribute_is_reported(production: Verifier) -> None:
    # trustee_v4_quote_nopad has TD_ATTRIBUTES.DEBUG set; the others do not.
    assert production.verify("tdx", read("trustee_v4_quote_nopad.bin"), at=ALL_CHAINS_VALID).debug
    assert not production.verify("tdx", read("dcapqvl_v4_quote.bin"), at=ALL_CHAINS_VALID).debug


def test_expected_report_data_is_enforced(production: Verifier) -> None:
    quote = read("teekit_edgeless_v4_quote.bin")
    production.verify(
        "tdx", quote, at=ALL_CHAINS_VALID, expected_report_data=b"Hello from Edgeless Systems!"
    )


QVL_WINDOW_2025 = "2025-10-28T12:00:00Z"
STATUS_CASES = [
    ("dcapqvl_v4_quote.bin", ["dcapqvl_v4_collateral.json"], "2025-06-20T00:00:00Z", "UpToDate"),
    (
        "dcapqvl_v5_quote_outdated.bin",
        ["dcapqvl_v5_outdated_collateral.json"],
        "2026-03-01T00:00:00Z",
        "TCB_NOT_SUPPORTED",
    ),
    (
        "gotdx_v4_quote_spr_e4.bin",
        [
            "gotdx_tcbinfo_50806f000000.json",
            "gotdx_qe_identity_2023.json",
            "gotdx_pck_platform_crl.der",
            "gotdx_root_ca_crl.der",
        ],
        "2023-06-20T00:00:00Z",
        "TCB_NOT_SUPPORTED",
    ),
    (
        "gotdx_v4_quote_cos113_padded8000.bin",
        ["teekit_tcbinfo_00806f050000.json", "trustee_qe_identity_2025.json"],
        QVL_WINDOW_2025,
        "UpToDate",
    ),
    (
        "trustee_v4_quote_nopad.bin",
        ["teekit_tcbinfo_50806f000000.json", "trustee_qe_identity_2025.json"],
        QVL_WINDOW_2025,
        "OutOfDate",
    ),
    (
        "trustee_v5_quote.bin",
        ["teekit_tcbinfo_90c06f000000.json", "trustee_qe_identity_2025.json"],
        QVL_WINDOW_2025,
        "TCB_NOT_SUPPORTED",
    ),
    (
        "trustee_azure_v4_td_quote.bin",
        ["teekit_tcbinfo_00806f050000.json", "trustee_qe_identity_2025.json"],
        QVL_WINDOW_2025,
        "OutOfDate",
    ),
    (
        "teekit_azure_v4_quote.b64",
        ["teekit_tcbinfo_00806f050000.json", "trustee_qe_identity_2025.json"],
        QVL_WINDOW_2025,
        "UpToDate",
    ),
    (
        "teekit_edgeless_v4_quote.bin",
        ["teekit_tcbinfo_00806f050000.json", "trustee_qe_identity_2025.json"],
        QVL_WINDOW_2025,
        "OutOfDate",
    ),
    (
        "dcapqvl_v4_quote_0x.hex",
        ["teekit_tcbinfo_b0c06f000000.json", "trustee_qe_identity_2025.json"],
        QVL_WINDOW_2025,
        "TCB_NOT_SUPPORTED",
    ),
    (
        "trustee_v4_quote_6.bin",
        ["trustee_tcbinfo_00a06d080000.json", "trustee_qe_identity_2025.json"],
        "2025-11-01T00:00:00Z",
        "OutOfDate",
    ),
    # No in-date TD_QE identity exists for this pairing: TCB Info alone.
    (
        "gotdx_v5_quote.bin",
        ["gotdx_tcbinfo_90c06f000000_2026.json"],
        "2026-02-15T00:00:00Z",
        "UpToDate",
    ),
]


@pytest.mark.parametrize(
    ("quote", "collateral", "at", "status"),
    STATUS_CASES,
    ids=[f"{c[0]}-{c[3]}" for c in STATUS_CASES],
)
def test_tcb_status_as_provenance_records(
    production: Verifier, quote: str, collateral: list[str], at: str, status: str
) -> None:
    claims = production.verify(
        "tdx", read(quote), collateral=[read(c) for c in collateral], at=utc(at)
    )
    assert claims.details["tcb_status"] == status
    advisories = claims.details["advisory_ids"]
    assert isinstance(advisories, list)
    if status == "TCB_NOT_SUPPORTED":
        assert advisories == []


def test_advisories_and_module_status_are_reported(production: Verifier) -> None:
    claims = production.verify(
        "tdx",
        read("trustee_azure_v4_td_quote.bin"),
        collateral=[
            read("teekit_tcbinfo_00806f050000.json"),
            read("trustee_qe_identity_2025.json"),
        ],
        at=utc(QVL_WINDOW_2025),
    )
    # PROVENANCE: TDX module TDX_01 isvsvn 2 is OutOfDate.
    assert claims.details["tdx_module_tcb_status"] == "OutOfDate"
    assert claims.details["qe_tcb_status"] == "UpToDate"
    assert "INTEL-SA-00960" in claims.details["advisory_ids"]  # type: ignore[operator]


def test_crls_are_checked_and_reported(production: Verifier) -> None:
    claims = production.verify(
        "tdx",
        read("gotdx_v4_quote_spr_e4.bin"),
        collateral=[read("gotdx_pck_platform_crl.der"), read("gotdx_root_ca_crl.der")],
        at=utc("2023-06-20T00:00:00Z"),
    )
    assert claims.details["revocation_checked"] is True
    assert "tcb_status" not in claims.details


@pytest.mark.parametrize(
    ("quote", "collateral", "at"),
    [
        # after the PCK CRL / TCB Info nextUpdate (2025-07-19)
        ("dcapqvl_v4_quote.bin", ["dcapqvl_v4_collateral.json"], "2025-08-01T00:00:00Z"),
        # before the TCB Info issueDate (PCK chain already valid)
        ("dcapqvl_v4_quote.bin", ["dcapqvl_v4_collateral.json"], "2025-06-19T00:00:00Z"),
        (
            "gotdx_v5_quote.bin",
            ["gotdx_tcbinfo_90c06f000000_2026.json", "gotdx_qe_identity_2023.json"],
            "2026-02-15T00:00:00Z",
        ),
        (
            "trustee_v4_quote_6.bin",
            ["trustee_tcbinfo_00a06d080000.json", "trustee_qe_identity_2025.json"],
            "2025-12-01T00:00:00Z",
        ),
        ("gotdx_v4_quote_spr_e4.bin", ["gotdx_pck_platform_crl.der"], "2023-07-09T00:00:00Z"),
    ],
    ids=["after-next-update", "before-issue", "stale-qe-identity", "stale-tcb-info", "stale-crl"],
)
def test_collateral_out_of_window_is_collateral_expired(
    production: Verifier, quote: str, collateral: list[str], at: str
) -> None:
    with pytest.raises(CollateralExpired):
        production.verify("tdx", read(quote), collateral=[read(c) for c in collateral], at=utc(at))


def test_tcb_info_for_another_fmspc_is_refused(production: Verifier) -> None:
    with pytest.raises(CollateralError, match="FMSPC"):
        production.verify(
            "tdx",
            read("dcapqvl_v4_quote_0x.hex"),
            collateral=[read("teekit_tcbinfo_00806f050000.json")],
            at=utc(QVL_WINDOW_2025),
        )


def test_two_tcb_infos_are_refused(production: Verifier) -> None:
    with pytest.raises(CollateralError, match="more than one"):
        production.verify(
            "tdx",
            read("gotdx_v4_quote_cos113_padded8000.bin"),
            collateral=[
                read("teekit_tcbinfo_00806f050000.json"),
                read("teekit_tcbinfo_50806f000000.json"),
            ],
            at=utc(QVL_WINDOW_2025),
        )


def test_tampered_tcb_info_fails_its_signature(production: Verifier) -> None:
    body = read("teekit_tcbinfo_00806f050000.json").replace(b'"OutOfDate"', b'"UpToDate"', 1)
    with pytest.raises(CollateralError, match="signature"):
        production.verify(
            "tdx",
            read("trustee_azure_v4_td_quote.bin"),
            collateral=[body],
            at=utc(QVL_WINDOW_2025),
        )


def test_whitespace_outside_the_signed_value_is_tolerated(production: Verifier) -> None:
    document = read("teekit_tcbinfo_00806f050000.json")
    spaced = document.replace(b'{"tcbInfo":', b'{ \n "tcbInfo" :  ', 1).replace(
        b',"signature":', b' ,\n"signature" : ', 1
    )
    assert spaced != document
    claims = production.verify(
        "tdx",
        read("teekit_azure_v4_quote.b64"),
        collateral=[spaced],
        at=utc(QVL_WINDOW_2025),
    )
    assert claims.details["tcb_status"] == "UpToDate"


def test_tampered_report_data_is_bad_signature(production: Verifier) -> None:
    with pytest.raises(BadSignature):
        production.verify(
            "tdx", read("negative/dcapqvl_v4_quote_tampered_reportdata.bin"), at=ALL_CHAINS_VALID
        )


def test_intel_synthetic_sample_is_refused_under_the_real_root(production: Verifier) -> None:
    with pytest.raises(BadCertificateChain):
        production.verify(
            "tdx", read("negative/intel_sample_synthetic_quote.bin"), at=ALL_CHAINS_VALID
        )


def test_intel_synthetic_sample_only_fails_on_its_root() -> None:
    # Under its own (fake) root the sample verifies: the refusal above is the root pin.
    fake = TrustRoots.from_pem(
        {"tdx": read("negative/intel_sample_fake_root.pem")}, simulated=True, label="fake"
    )
    claims = Verifier(fake).verify(
        "tdx", read("negative/intel_sample_synthetic_quote.bin"), at=ALL_CHAINS_VALID
    )
    assert claims.measurement == bytes(48)


@pytest.mark.parametrize(
    ("name", "at"),
    [
        ("dcapqvl_v4_quote.bin", "2025-02-01T00:00:00Z"),  # PCK from 2025-02-06
        ("dcapqvl_v4_quote.bin", "2032-02-07T00:00:00Z"),  # PCK until 2032-02-06
        ("gotdx_v5_quote.bin", "2026-01-01T00:00:00Z"),  # PCK from 2026-01-27
    ],
)
def test_outside_the_pck_window_is_expired(production: Verifier, name: str, at: str) -> None:
    with pytest.raises(Expired):
        production.verify("tdx", read(name), at=utc(at))


def test_window_edges_are_inclusive(production: Verifier) -> None:
    start = utc("2025-02-06T23:25:51Z")
    production.verify("tdx", read("dcapqvl_v4_quote.bin"), at=start)
    with pytest.raises(Expired):
        production.verify("tdx", read("dcapqvl_v4_quote.bin"), at=start - timedelta(seconds=1))
