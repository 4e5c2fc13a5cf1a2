"""Real SEV-SNP evidence from tests/vectors/sev-snp (see tests/vectors/PROVENANCE.md).

Every valid vector is accepted at a time inside its window with the measurement and
report_data PROVENANCE.md gives; every negative is rejected with the error it deserves.
report_data values PROVENANCE.md abbreviates ("d447b55d...ebfd") are matched as patterns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase

import pytest

from tests.verifier.snp.conftest import VCEK_TIME, VLEK_TIME, vector
from verifier.errors import (
    BadCertificateChain,
    BadSignature,
    CertificateMismatch,
    Expired,
    MalformedCertificate,
    MissingCertificate,
    PolicyViolation,
    VerificationError,
)
from verifier.policy import Policy
from verifier.roots import TrustRoots
from verifier.verify import Verifier

ZEROS_32 = "00" * 32


def _x25519_report_data() -> str:
    fields = dict(
        line.split("=", 1)
        for line in vector("teekit_gcp_milan_v5_x25519_binding.txt").decode().split()
    )
    return hashlib.sha512(
        bytes.fromhex(fields["NONCE"]) + bytes.fromhex(fields["X25519_KEY"])
    ).hexdigest()


@dataclass(frozen=True)
class Valid:
    report: str
    certs: tuple[str, ...]
    measurement: str
    report_data: str  # hex, or an fnmatch pattern over the hex
    product: str
    signing_key: str = "vcek"
    debug: bool = False
    at: datetime = VCEK_TIME
    vmpl: int = 0
    reported_tcb: tuple[int, int, int, int] | None = None  # bootloader, tee, snp, microcode


VALID = {
    "virtee-milan-v2-hex": Valid(
        "virtee_milan_v2_report.hex", ("virtee_milan_v2_vcek.der",),
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
        "d447b55d*ebfd", "Milan", reported_tcb=(3, 0, 8, 115),
    ),
    "virtee-milan-v2-with-ask-ark-bundle": Valid(
        "virtee_milan_v2_report.hex", ("virtee_milan_v2_vcek.der", "virtee_milan_ask_ark.pem"),
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
        "d447b55d*ebfd", "Milan",
    ),
    "gosevguest-milan-v2-debug": Valid(
        "gosevguest_milan_v2_report.bin", ("gosevguest_milan_v2_vcek.der",),
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
        "0102030405" + "00" * 59, "Milan", debug=True, reported_tcb=(2, 0, 5, 68),
    ),
    "trustee-milan-v2-reported-not-current-tcb": Valid(
        "trustee_milan_v2_report.bin", ("trustee_milan_v2_vcek.der",),
        "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c",
        "ec6c52d7*d7e2" + ZEROS_32, "Milan", reported_tcb=(3, 0, 8, 115),
    ),
    "trustee-milan-v3-vlek": Valid(
        "trustee_milan_v3_vlek_report.bin", ("trustee_milan_vlek.der",),
        "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0",
        "*", "Milan", signing_key="vlek", at=VLEK_TIME, vmpl=1, reported_tcb=(4, 0, 24, 217),
    ),
    "teekit-gcp-milan-v5": Valid(
        "teekit_gcp_milan_v5_report.bin", ("teekit_gcp_milan_v5_vcek.pem",),
        "b747d55452e0b9e9079770a49e397c5e6d9573581e246da7baac4f28b5cdc5b1b6d19251b8ee600fd16a3708f58406f3",
        "00" * 64, "Milan", reported_tcb=(4, 0, 27, 222),
    ),
    "teekit-gcp-milan-v5-wrapped-hex": Valid(
        "teekit_gcp_milan_v5_report.hex", ("teekit_gcp_milan_v5_vcek.pem",),
        "b747d55452e0b9e9079770a49e397c5e6d9573581e246da7baac4f28b5cdc5b1b6d19251b8ee600fd16a3708f58406f3",
        "00" * 64, "Milan",
    ),
    "teekit-gcp-milan-v5-vmpl1-reportdata": Valid(
        "teekit_gcp_milan_v5_reportdata_report.bin", ("teekit_gcp_milan_v5_vcek.pem",),
        "b747d55452e0b9e9079770a49e397c5e6d9573581e246da7baac4f28b5cdc5b1b6d19251b8ee600fd16a3708f58406f3",
        "32fc4f6c1971cbf91566231f8d6153eeb9d093aa94306cb48d39bcc4861a3d39"
        "5f149876a37bc91332fe493f46294fd135d5b95d363ae96352b8c45f906079f5",
        "Milan", vmpl=1,
    ),
    "teekit-gcp-milan-v5-x25519-binding": Valid(
        "teekit_gcp_milan_v5_x25519_report.bin", ("teekit_gcp_milan_v5_x25519_vcek.pem",),
        "b747d55452e0b9e9079770a49e397c5e6d9573581e246da7baac4f28b5cdc5b1b6d19251b8ee600fd16a3708f58406f3",
        _x25519_report_data(), "Milan", vmpl=1,
    ),
    "azure-milan-v2-vcek-ask-ark-bundle": Valid(
        "azure_milan_v2_report.bin", ("azure_milan_v2_vcek_ask_ark.pem",),
        "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308b459d5ef1a12e0c22944eb386d17c315",
        "b3fbad65*afac" + ZEROS_32, "Milan", reported_tcb=(3, 0, 8, 115),
    ),
    "azure-genoa-v3": Valid(
        "azure_genoa_v3_report.bin", ("azure_genoa_v3_vcek.pem",),
        "f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3706faf814c9e61065768a6ff917c89ae",
        "b581f12e*bf5f*" + ZEROS_32, "Genoa", reported_tcb=(10, 0, 23, 84),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", VALID.values(), ids=VALID.keys())
def test_valid_vector_is_accepted(production: Verifier, case: Valid) -> None:
    claims = production.verify(
        "sev-snp", vector(case.report), certs=[vector(c) for c in case.certs], at=case.at
    )
    assert claims.platform == "sev-snp"
    assert claims.measurement.hex() == case.measurement
    assert fnmatchcase(claims.report_data.hex(), case.report_data), claims.report_data.hex()
    assert claims.debug is case.debug
    assert claims.simulated is False
    details = claims.to_json()
    assert details["product"] == case.product
    assert details["signing_key"] == case.signing_key
    assert details["vmpl"] == case.vmpl
    if case.reported_tcb is not None:
        tcb = details["reported_tcb"]
        assert isinstance(tcb, dict)
        assert (tcb["bootloader"], tcb["tee"], tcb["snp"], tcb["microcode"]) == case.reported_tcb


def test_claims_are_json_ready(production: Verifier) -> None:
    import json

    claims = production.verify(
        "sev-snp", vector("teekit_gcp_milan_v5_report.bin"),
        certs=[vector("teekit_gcp_milan_v5_vcek.pem")], at=VCEK_TIME,
    )  # fmt: skip
    document = json.loads(json.dumps(claims.to_json()))
    assert document["version"] == 5
    assert document["policy"] == "0000000000030000"
    assert document["policy_flags"]["debug"] is False
    assert document["cpuid"] == {"family": "0x19", "model": "0x01", "stepping": "0x1"}
    assert document["current_firmware"] == "1.55.35"
    assert "launch_mitigation_vector" in document and "current_mitigation_vector" in document
    assert document["chip_id"].startswith("980cf7b6")
    for name in ("current_tcb", "committed_tcb", "launch_tcb"):
        assert set(document[name]) >= {"bootloader", "tee", "snp", "microcode", "raw"}


def test_trustee_current_tcb_differs_from_reported(production: Verifier) -> None:
    claims = production.verify(
        "sev-snp", vector("trustee_milan_v2_report.bin"),
        certs=[vector("trustee_milan_v2_vcek.der")], at=VCEK_TIME,
    )  # fmt: skip
    current, reported = claims.details["current_tcb"], claims.details["reported_tcb"]
    assert isinstance(current, dict) and isinstance(reported, dict)
    assert current["microcode"] == 0xCE and reported["microcode"] == 115


def test_debug_report_is_refused_by_default_policy(production: Verifier) -> None:
    claims = production.verify(
        "sev-snp", vector("gosevguest_milan_v2_report.bin"),
        certs=[vector("gosevguest_milan_v2_vcek.der")], at=VCEK_TIME,
    )  # fmt: skip
    assert claims.debug is True
    with pytest.raises(PolicyViolation) as caught:
        Policy().evaluate(claims, VCEK_TIME)
    assert [m.field for m in caught.value.mismatches] == ["debug"]
    Policy(allow_debug=True).evaluate(claims, VCEK_TIME)


@dataclass(frozen=True)
class Invalid:
    report: str
    certs: tuple[str, ...]
    errors: tuple[type[VerificationError], ...]
    at: datetime = VCEK_TIME


INVALID = {
    "virtee-tampered-family-id": Invalid(
        "negative/virtee_milan_v2_report_tampered.bin", ("virtee_milan_v2_vcek.der",),
        (BadSignature,),
    ),
    "trustee-synthetic-vcek-legacy-hwid": Invalid(
        "trustee_milan_v2_report.bin", ("negative/trustee_vcek_invalid_legacy.der",),
        (BadCertificateChain,),
    ),
    "trustee-synthetic-vcek-new-hwid": Invalid(
        "trustee_milan_v2_report.bin", ("negative/trustee_vcek_invalid_new.der",),
        (BadCertificateChain,),
    ),
    "cross-pair-virtee-report-trustee-vcek": Invalid(
        "virtee_milan_v2_report.hex", ("trustee_milan_v2_vcek.der",),
        (CertificateMismatch, BadSignature),
    ),
    "cross-pair-teekit-report-gosevguest-vcek": Invalid(
        "teekit_gcp_milan_v5_report.bin", ("gosevguest_milan_v2_vcek.der",),
        (CertificateMismatch, BadSignature),
    ),
    "cross-pair-genoa-report-milan-vcek": Invalid(
        "azure_genoa_v3_report.bin", ("virtee_milan_v2_vcek.der",),
        (CertificateMismatch, BadSignature),
    ),
    "vlek-report-with-a-vcek": Invalid(
        "trustee_milan_v3_vlek_report.bin", ("trustee_milan_v2_vcek.der",),
        (CertificateMismatch, BadSignature), at=VLEK_TIME,
    ),
    "vlek-report-after-vlek-expired": Invalid(
        "trustee_milan_v3_vlek_report.bin", ("trustee_milan_vlek.der",), (Expired,)
    ),
    "virtee-after-vcek-window": Invalid(
        "virtee_milan_v2_report.hex", ("virtee_milan_v2_vcek.der",), (Expired,),
        at=datetime(2030, 4, 4, tzinfo=UTC),
    ),
    "teekit-before-vcek-window": Invalid(
        "teekit_gcp_milan_v5_report.bin", ("teekit_gcp_milan_v5_vcek.pem",), (Expired,),
        at=datetime(2025, 12, 1, tzinfo=UTC),
    ),
    "no-vcek-given": Invalid("virtee_milan_v2_report.hex", (), (MissingCertificate,)),
    "only-ask-ark-given": Invalid(
        "virtee_milan_v2_report.hex", ("virtee_milan_ask_ark.pem",), (MissingCertificate,)
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
def test_invalid_vector_is_rejected(production: Verifier, case: Invalid) -> None:
    with pytest.raises(case.errors):
        production.verify(
            "sev-snp", vector(case.report), certs=[vector(c) for c in case.certs], at=case.at
        )


def test_garbage_certificate_is_malformed(production: Verifier) -> None:
    with pytest.raises(MalformedCertificate):
        production.verify(
            "sev-snp", vector("virtee_milan_v2_report.hex"), certs=[b"\x30\x03\x02\x01"],
            at=VCEK_TIME,
        )  # fmt: skip


def test_pem_garbage_certificate_is_malformed(production: Verifier) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(MalformedCertificate):
        production.verify(
            "sev-snp", vector("virtee_milan_v2_report.hex"), certs=[pem], at=VCEK_TIME
        )


def test_roots_without_snp_anchor_reject(production: Verifier) -> None:
    nitro_root = vector("../nitro/roots/aws_nitro_root_g1.pem")
    nitro_only = Verifier(
        TrustRoots.from_pem({"nitro": nitro_root}, simulated=False, label="nitro")
    )
    with pytest.raises(BadCertificateChain):
        nitro_only.verify(
            "sev-snp", vector("virtee_milan_v2_report.hex"),
            certs=[vector("virtee_milan_v2_vcek.der")], at=VCEK_TIME,
        )  # fmt: skip


def test_genoa_vcek_does_not_chain_to_milan_roots_only() -> None:
    milan_only = Verifier(
        TrustRoots.from_pem(
            {"sev-snp": vector("roots/amd_milan_ask_ark.pem")}, simulated=False, label="milan"
        )
    )
    with pytest.raises(BadCertificateChain):
        milan_only.verify(
            "sev-snp", vector("azure_genoa_v3_report.bin"),
            certs=[vector("azure_genoa_v3_vcek.pem")], at=VCEK_TIME,
        )  # fmt: skip


def test_same_verifier_repeats_verdicts(production: Verifier) -> None:
    # The caches must never turn a rejection into an acceptance or the reverse.
    report, vcek = vector("virtee_milan_v2_report.hex"), vector("virtee_milan_v2_vcek.der")
    tampered = vector("negative/virtee_milan_v2_report_tampered.bin")
    for _ in range(3):
        production.verify("sev-snp", report, certs=[vcek], at=VCEK_TIME)
        with pytest.raises(BadSignature):
            production.verify("sev-snp", tampered, certs=[vcek], at=VCEK_TIME)
        with pytest.raises(Expired):
            production.verify("sev-snp", report, certs=[vcek], at=datetime(2031, 1, 1, tzinfo=UTC))


def test_oversized_certificate_file_is_malformed(production: Verifier) -> None:
    with pytest.raises(MalformedCertificate, match="larger"):
        production.verify(
            "sev-snp", vector("virtee_milan_v2_report.hex"), certs=[b"\x00" * (300 * 1024)],
            at=VCEK_TIME,
        )  # fmt: skip


def test_too_many_certificate_files_is_malformed(production: Verifier) -> None:
    vcek = vector("virtee_milan_v2_vcek.der")
    with pytest.raises(MalformedCertificate, match="more than"):
        production.verify(
            "sev-snp", vector("virtee_milan_v2_report.hex"), certs=[vcek] * 17, at=VCEK_TIME
        )


def test_duplicate_vcek_is_tolerated(production: Verifier) -> None:
    vcek = vector("virtee_milan_v2_vcek.der")
    production.verify(
        "sev-snp", vector("virtee_milan_v2_report.hex"), certs=[vcek, vcek], at=VCEK_TIME
    )


def test_vcek_and_vlek_together_pick_by_signing_key(production: Verifier) -> None:
    certs = [vector("trustee_milan_v2_vcek.der"), vector("trustee_milan_vlek.der")]
    vlek_claims = production.verify(
        "sev-snp", vector("trustee_milan_v3_vlek_report.bin"), certs=certs, at=VLEK_TIME
    )
    assert vlek_claims.details["signing_key"] == "vlek"
    vcek_claims = production.verify(
        "sev-snp", vector("trustee_milan_v2_report.bin"), certs=certs, at=VLEK_TIME
    )
    assert vcek_claims.details["signing_key"] == "vcek"
