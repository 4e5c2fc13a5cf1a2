"""Simulated TDX hardware: real-format quotes under SIM Intel roots, checked by the real
verifier."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave.attestation.launch import LaunchIdentity
from enclave.attestation.simulated.tdx import SimulatedTdx
from verifier.errors import (
    BadCertificateChain,
    BadSignature,
    CertificateMismatch,
    CollateralError,
    PolicyViolation,
    Revoked,
)
from verifier.policy import Policy
from verifier.roots import TrustRoots
from verifier.verify import Verifier

NOW = datetime.now(UTC).replace(microsecond=0)
LAUNCH = LaunchIdentity(measurement=bytes(range(48)), config=b'{"admins":["a"],"quorum":1}')
REPORT_DATA = bytes(range(64, 128))


def test_keys_persist_with_private_files_0600(sim: SimulatedTdx, sim_dir: Path) -> None:
    again = SimulatedTdx.load_or_create(sim_dir)
    assert again.root.fingerprint(hashes.SHA256()) == sim.root.fingerprint(hashes.SHA256())
    assert again.pck.public_bytes(serialization.Encoding.DER) == sim.pck.public_bytes(
        serialization.Encoding.DER
    )
    keys = sorted(sim_dir.glob("sim-tdx-*key.pem"))
    assert len(keys) == 5
    for path in keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_provider_quote_is_accepted_under_simulated_roots(
    sim: SimulatedTdx, sim_verifier: Verifier
) -> None:
    evidence = sim.provider(LAUNCH).evidence(REPORT_DATA)
    assert evidence.platform == "tdx"
    claims = sim_verifier.verify("tdx", evidence.evidence, at=NOW, expected_report_data=REPORT_DATA)
    assert claims.simulated
    assert claims.measurement == LAUNCH.measurement
    assert claims.details["mr_config_id"] == LAUNCH.tdx_mr_config_id.hex()
    assert claims.report_data == REPORT_DATA
    assert not claims.debug
    assert claims.details["version"] == 4
    assert claims.details["fmspc"] == sim.fmspc.hex()


def test_simulated_quote_is_refused_under_production_roots(
    sim: SimulatedTdx, production: Verifier
) -> None:
    evidence = sim.provider(LAUNCH).evidence(REPORT_DATA)
    with pytest.raises(BadCertificateChain):
        production.verify("tdx", evidence.evidence, at=NOW)


def test_simulated_quote_is_refused_by_a_policy_without_allow_simulated(
    sim: SimulatedTdx, sim_verifier: Verifier
) -> None:
    claims = sim_verifier.verify("tdx", sim.provider(LAUNCH).evidence(REPORT_DATA).evidence, at=NOW)
    with pytest.raises(PolicyViolation, match="roots"):
        sim_verifier.appraise(claims, Policy(), NOW)
    sim_verifier.appraise(claims, Policy(platform="tdx", allow_simulated=True), NOW)


def test_another_machine_roots_refuse_the_quote(sim: SimulatedTdx, tmp_path: Path) -> None:
    other = SimulatedTdx.load_or_create(tmp_path)
    verifier = Verifier(TrustRoots.from_pem({"tdx": other.roots_pem()}, simulated=True, label="o"))
    with pytest.raises(BadCertificateChain):
        verifier.verify("tdx", sim.provider(LAUNCH).evidence(REPORT_DATA).evidence, at=NOW)


def test_v5_quote_with_tdx15_body(sim: SimulatedTdx, sim_verifier: Verifier) -> None:
    quote = sim.quote(report_data=REPORT_DATA, mrtd=LAUNCH.measurement, version=5)
    claims = sim_verifier.verify("tdx", quote, at=NOW)
    assert claims.details["version"] == 5
    assert claims.details["body_type"] == 3
    assert claims.details["mr_servicetd"] == "00" * 48


def test_debug_quote_is_flagged_and_refused_by_default_policy(
    sim: SimulatedTdx, sim_verifier: Verifier
) -> None:
    quote = sim.quote(report_data=REPORT_DATA, mrtd=LAUNCH.measurement, debug=True)
    claims = sim_verifier.verify("tdx", quote, at=NOW)
    assert claims.debug
    with pytest.raises(PolicyViolation, match="debug"):
        sim_verifier.appraise(claims, Policy(allow_simulated=True), NOW)


def test_tampered_simulated_quote_is_bad_signature(
    sim: SimulatedTdx, sim_verifier: Verifier
) -> None:
    quote = bytearray(sim.quote(report_data=REPORT_DATA, mrtd=LAUNCH.measurement))
    quote[48 + 136] ^= 0xFF  # first byte of MRTD
    with pytest.raises(BadSignature):
        sim_verifier.verify("tdx", bytes(quote), at=NOW)


@pytest.mark.parametrize(
    ("tcb_status", "qe_status", "expected"),
    [
        ("UpToDate", "UpToDate", "UpToDate"),
        ("SWHardeningNeeded", "UpToDate", "SWHardeningNeeded"),
        ("ConfigurationNeeded", "UpToDate", "ConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "UpToDate", "ConfigurationAndSWHardeningNeeded"),
        ("OutOfDate", "UpToDate", "OutOfDate"),
        ("OutOfDateConfigurationNeeded", "UpToDate", "OutOfDateConfigurationNeeded"),
        ("Revoked", "UpToDate", "Revoked"),
        # QVL convergeTcbStatusWithQeTcbStatus
        ("UpToDate", "OutOfDate", "OutOfDate"),
        ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
        ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("UpToDate", "Revoked", "Revoked"),
    ],
)
def test_tcb_status_convergence(
    sim: SimulatedTdx, sim_verifier: Verifier, tcb_status: str, qe_status: str, expected: str
) -> None:
    collateral = sim.collateral(
        NOW - timedelta(hours=1),
        tcb_status=tcb_status,
        qe_status=qe_status,
        advisory_ids=("INTEL-SA-99999",),
    )
    quote = sim.quote(report_data=REPORT_DATA, mrtd=LAUNCH.measurement)
    claims = sim_verifier.verify("tdx", quote, collateral=list(collateral), at=NOW)
    assert claims.details["tcb_status"] == expected
    assert claims.details["advisory_ids"] == ["INTEL-SA-99999"]


def test_lower_tee_tcb_svn_falls_to_a_lower_level(
    sim: SimulatedTdx, sim_verifier: Verifier
) -> None:
    collateral = sim.collateral(NOW - timedelta(hours=1))
    svn = bytes((5, 1, 2)) + bytes(13)  # late microcode 2 < 3: the own level no longer fits
    quote = sim.quote(report_data=REPORT_DATA, mrtd=LAUNCH.measurement, tee_tcb_svn=svn)
    claims = sim_verifier.verify("tdx", quote, collateral=list(collateral), at=NOW)
    assert claims.details["tcb_status"] == "OutOfDate"
    assert claims.details["advisory_ids"] == ["INTEL-SA-00000"]


def test_module_version_without_identity_is_collateral_error(
    sim: SimulatedTdx, sim_verifier: Verifier
) -> None:
    collateral = sim.collateral(NOW - timedelta(hours=1))
    svn = bytes((5, 3, 3)) + bytes(13)  # module TDX_03: not in the TCB Info
    quote = sim.quote(report_data=REPORT_DATA, mrtd=LAUNCH.measurement, tee_tcb_svn=svn)
    with pytest.raises(CollateralError, match="TDX_03"):
        sim_verifier.verify("tdx", quote, collateral=list(collateral), at=NOW)


def test_qe_identity_of_another_signer_is_a_mismatch(
    sim: SimulatedTdx, sim_verifier: Verifier
) -> None:
    tcb_info, identity = sim.collateral(NOW - timedelta(hours=1))
    document = json.loads(identity)
    document["enclaveIdentity"]["mrsigner"] = "ab" * 32
    forged = sim._signed_document("enclaveIdentity", document["enclaveIdentity"])
    quote = sim.quote(report_data=REPORT_DATA, mrtd=LAUNCH.measurement)
    with pytest.raises(CertificateMismatch, match="MRSIGNER"):
        sim_verifier.verify("tdx", quote, collateral=[tcb_info, forged], at=NOW)


def test_collateral_signed_by_an_untrusted_key_is_refused(
    sim: SimulatedTdx, sim_verifier: Verifier, tmp_path: Path
) -> None:
    other = SimulatedTdx.load_or_create(tmp_path)
    tcb_info, _ = other.collateral(NOW - timedelta(hours=1))
    quote = sim.quote(report_data=REPORT_DATA, mrtd=LAUNCH.measurement)
    # Even with the other machine's TCB Signing certificate supplied as an issuer chain.
    signing = other.tcb_signing.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CollateralError, match=r"signing certificate|signature"):
        sim_verifier.verify("tdx", quote, collateral=[tcb_info, signing], at=NOW)
    with pytest.raises(CollateralError, match="signature"):
        sim_verifier.verify("tdx", quote, collateral=[tcb_info], at=NOW)


def test_dcap_qvl_collateral_form(sim: SimulatedTdx, sim_verifier: Verifier) -> None:
    tcb_info, identity = sim.collateral(NOW - timedelta(hours=1), tcb_status="SWHardeningNeeded")

    def split(document: bytes, key: str) -> tuple[str, str]:
        start = document.index(b":") + 1
        end = document.rindex(b',"signature"')
        return document[start:end].decode(), json.loads(document)["signature"]

    tcb_body, tcb_sig = split(tcb_info, "tcbInfo")
    qe_body, qe_sig = split(identity, "enclaveIdentity")
    bundle = json.dumps(
        {
            "tcb_info_issuer_chain": sim.roots_pem().decode(),
            "tcb_info": tcb_body,
            "tcb_info_signature": tcb_sig,
            "qe_identity_issuer_chain": sim.roots_pem().decode(),
            "qe_identity": qe_body,
            "qe_identity_signature": qe_sig,
        }
    ).encode()
    quote = sim.quote(report_data=REPORT_DATA, mrtd=LAUNCH.measurement)
    claims = sim_verifier.verify("tdx", quote, collateral=[bundle], at=NOW)
    assert claims.details["tcb_status"] == "SWHardeningNeeded"


def _crl(sim_dir: Path, sim: SimulatedTdx, revoked: list[int]) -> bytes:
    key = serialization.load_pem_private_key(
        (sim_dir / "sim-tdx-pck-ca-key.pem").read_bytes(), None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(sim.pck_ca.subject)
        .last_update(NOW - timedelta(days=1))
        .next_update(NOW + timedelta(days=30))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - timedelta(days=1))
            .build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_pck_revoked_by_the_platform_ca_crl(
    sim: SimulatedTdx, sim_verifier: Verifier, sim_dir: Path
) -> None:
    quote = sim.quote(report_data=REPORT_DATA, mrtd=LAUNCH.measurement)
    clean = sim_verifier.verify("tdx", quote, collateral=[_crl(sim_dir, sim, [12345])], at=NOW)
    assert clean.details["revocation_checked"] is True
    with pytest.raises(Revoked):
        sim_verifier.verify(
            "tdx", quote, collateral=[_crl(sim_dir, sim, [sim.pck.serial_number])], at=NOW
        )
