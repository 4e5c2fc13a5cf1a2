"""The simulated AMD-SP: fake roots, real formats, the real verifier with swapped roots."""

from __future__ import annotations

import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from enclave.attestation.evidence import EvidenceProvider
from enclave.attestation.launch import LaunchIdentity
from enclave.attestation.simulated.snp import DEFAULT_TCB, SimulatedSnp
from verifier.errors import (
    BadCertificateChain,
    CertificateMismatch,
    Expired,
    MalformedCertificate,
    PolicyViolation,
    Revoked,
)
from verifier.policy import Policy
from verifier.roots import TrustRoots
from verifier.snp.abi import AttestationReport
from verifier.verify import Verifier

LAUNCH = LaunchIdentity(measurement=bytes(range(48)), config=b'{"quorum": 2}')
REPORT_DATA = bytes(range(64, 128))
NOW = datetime.now(UTC)


def test_simulated_evidence_is_accepted_with_simulated_roots(
    sim: SimulatedSnp, sim_verifier: Verifier
) -> None:
    provider: EvidenceProvider = sim.provider(LAUNCH)
    evidence = provider.evidence(REPORT_DATA)
    assert evidence.platform == "sev-snp" and provider.platform == "sev-snp"
    assert len(evidence.evidence) == 1184
    claims = sim_verifier.verify(
        "sev-snp", evidence.evidence, certs=evidence.certs, at=NOW, expected_report_data=REPORT_DATA
    )
    assert claims.simulated is True
    assert claims.measurement == LAUNCH.measurement
    assert claims.report_data == REPORT_DATA
    assert claims.debug is False
    assert claims.details["host_data"] == LAUNCH.snp_host_data.hex()
    assert claims.details["policy"] == f"{0x30000:016x}"
    assert claims.details["vmpl"] == 0
    assert claims.details["version"] == 3
    assert claims.details["product"] == "Milan"
    assert claims.details["chip_id"] == sim.chip_id.hex()


def test_simulated_evidence_is_rejected_with_production_roots(
    sim: SimulatedSnp, production: Verifier
) -> None:
    evidence = sim.provider(LAUNCH).evidence(REPORT_DATA)
    with pytest.raises(BadCertificateChain):
        production.verify("sev-snp", evidence.evidence, certs=evidence.certs, at=NOW)


def test_simulated_bundle_does_not_become_an_anchor(
    sim: SimulatedSnp, production: Verifier
) -> None:
    # A bundle's ASK/ARK only help when they chain to a pinned root.
    evidence = sim.provider(LAUNCH).evidence(REPORT_DATA)
    with pytest.raises(BadCertificateChain):
        production.verify(
            "sev-snp", evidence.evidence, certs=[*evidence.certs, sim.roots_pem()], at=NOW
        )


def test_simulated_claims_need_a_policy_that_names_them(
    sim: SimulatedSnp, sim_verifier: Verifier
) -> None:
    evidence = sim.provider(LAUNCH).evidence(REPORT_DATA)
    claims = sim_verifier.verify("sev-snp", evidence.evidence, certs=evidence.certs, at=NOW)
    with pytest.raises(PolicyViolation) as caught:
        Policy().evaluate(claims, NOW)
    assert [m.field for m in caught.value.mismatches] == ["roots"]
    Policy(allow_simulated=True, host_data=LAUNCH.snp_host_data, max_vmpl=0).evaluate(claims, NOW)


def test_debug_report_is_flagged(sim: SimulatedSnp, sim_verifier: Verifier) -> None:
    report = sim.report(report_data=REPORT_DATA, measurement=LAUNCH.measurement, debug=True)
    claims = sim_verifier.verify("sev-snp", report, certs=sim.certs(), at=NOW)
    assert claims.debug is True
    with pytest.raises(PolicyViolation) as caught:
        Policy(allow_simulated=True).evaluate(claims, NOW)
    assert [m.field for m in caught.value.mismatches] == ["debug"]


def test_report_for_another_tcb_does_not_match_the_vcek(
    sim: SimulatedSnp, sim_verifier: Verifier
) -> None:
    newer = dict(sim.tcb) | {"snp": sim.tcb["snp"] + 1}
    report = sim.report(report_data=REPORT_DATA, measurement=LAUNCH.measurement, reported_tcb=newer)
    with pytest.raises(CertificateMismatch, match="snp SPL"):
        sim_verifier.verify("sev-snp", report, certs=sim.certs(), at=NOW)


def test_current_tcb_may_differ_from_reported(sim: SimulatedSnp, sim_verifier: Verifier) -> None:
    newer = dict(sim.tcb) | {"microcode": sim.tcb["microcode"] + 5}
    report = sim.report(report_data=REPORT_DATA, measurement=LAUNCH.measurement, current_tcb=newer)
    claims = sim_verifier.verify("sev-snp", report, certs=sim.certs(), at=NOW)
    current = claims.details["current_tcb"]
    assert isinstance(current, dict) and current["microcode"] == newer["microcode"]


def test_report_from_another_chip_does_not_match_the_vcek(
    sim: SimulatedSnp, sim_verifier: Verifier
) -> None:
    report = sim.report(
        report_data=REPORT_DATA, measurement=LAUNCH.measurement, chip_id=b"\x5a" * 64
    )
    with pytest.raises(CertificateMismatch, match="chip"):
        sim_verifier.verify("sev-snp", report, certs=sim.certs(), at=NOW)


def test_vmpl_and_host_data_reach_policy(sim: SimulatedSnp, sim_verifier: Verifier) -> None:
    report = sim.report(
        report_data=REPORT_DATA, measurement=LAUNCH.measurement, vmpl=2, host_data=b"\x01" * 32
    )
    claims = sim_verifier.verify("sev-snp", report, certs=sim.certs(), at=NOW)
    policy = Policy(allow_simulated=True, host_data=LAUNCH.snp_host_data, max_vmpl=0)
    with pytest.raises(PolicyViolation) as caught:
        policy.evaluate(claims, NOW)
    assert {m.field for m in caught.value.mismatches} == {"host_data", "vmpl"}


def test_report_layout_is_v3_milan(sim: SimulatedSnp) -> None:
    report = AttestationReport.from_bytes(sim.provider(LAUNCH).evidence(REPORT_DATA).evidence)
    assert report.version == 3 and report.cpuid is not None and report.cpuid.product == "Milan"
    assert report.signer.signing_key_name == "vcek"
    assert report.host_data == LAUNCH.snp_host_data


def test_machine_persists_with_private_keys_0600(sim: SimulatedSnp, sim_dir: Path) -> None:
    again = SimulatedSnp.load_or_create(sim_dir)
    assert again.chip_id == sim.chip_id and again.roots_pem() == sim.roots_pem()
    keys = sorted(sim_dir.glob("*key*.pem"))
    assert len(keys) == 3
    for path in keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_roots_look_like_amds(sim: SimulatedSnp) -> None:
    ask, ark = x509.load_pem_x509_certificates(sim.roots_pem())
    for cert, name in ((ask, "SIM-SEV-Milan"), (ark, "SIM-ARK-Milan")):
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert cn == name
        public = cert.public_key()
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 4096
        assert isinstance(cert.signature_algorithm_parameters, padding.PSS)
        assert cert.serial_number > 0


def test_evidence_after_vcek_expiry_is_rejected(sim: SimulatedSnp, sim_verifier: Verifier) -> None:
    evidence = sim.provider(LAUNCH).evidence(REPORT_DATA)
    with pytest.raises(Expired):
        sim_verifier.verify(
            "sev-snp", evidence.evidence, certs=evidence.certs, at=NOW + timedelta(days=365 * 8)
        )


def _crl(
    sim_dir: Path, issuer: x509.Certificate, key_file: str, revoked: list[int], *, days: int = 30
) -> bytes:
    key = serialization.load_pem_private_key((sim_dir / key_file).read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(NOW - timedelta(days=1))
        .next_update(NOW + timedelta(days=days))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - timedelta(hours=1))
            .build()
        )
    crl = builder.sign(
        key,
        hashes.SHA384(),
        rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
    )
    return crl.public_bytes(serialization.Encoding.DER)


def test_crl_revoking_the_ask_rejects(
    sim: SimulatedSnp, sim_dir: Path, sim_verifier: Verifier
) -> None:
    evidence = sim.provider(LAUNCH).evidence(REPORT_DATA)
    crl = _crl(sim_dir, sim.ark, "sim-ark-key.pem", [sim.ask.serial_number])
    with pytest.raises(Revoked):
        sim_verifier.verify(
            "sev-snp", evidence.evidence, certs=evidence.certs, collateral=[crl], at=NOW
        )


def test_crl_revoking_the_vcek_rejects_pem_too(
    sim: SimulatedSnp, sim_dir: Path, sim_verifier: Verifier
) -> None:
    evidence = sim.provider(LAUNCH).evidence(REPORT_DATA)
    crl_der = _crl(sim_dir, sim.ask, "sim-ask-key.pem", [sim.vcek.serial_number])
    crl_pem = x509.load_der_x509_crl(crl_der).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(Revoked):
        sim_verifier.verify(
            "sev-snp", evidence.evidence, certs=evidence.certs, collateral=[crl_pem], at=NOW
        )


def test_crl_without_our_serials_accepts(
    sim: SimulatedSnp, sim_dir: Path, sim_verifier: Verifier
) -> None:
    evidence = sim.provider(LAUNCH).evidence(REPORT_DATA)
    crl = _crl(sim_dir, sim.ark, "sim-ark-key.pem", [12345])
    sim_verifier.verify(
        "sev-snp", evidence.evidence, certs=evidence.certs, collateral=[crl], at=NOW
    )


def test_stale_crl_is_expired(sim: SimulatedSnp, sim_dir: Path, sim_verifier: Verifier) -> None:
    evidence = sim.provider(LAUNCH).evidence(REPORT_DATA)
    crl = _crl(sim_dir, sim.ark, "sim-ark-key.pem", [], days=1)
    with pytest.raises(Expired):
        sim_verifier.verify(
            "sev-snp", evidence.evidence, certs=evidence.certs, collateral=[crl],
            at=NOW + timedelta(days=3),
        )  # fmt: skip


def test_garbage_crl_is_malformed(sim: SimulatedSnp, sim_verifier: Verifier) -> None:
    evidence = sim.provider(LAUNCH).evidence(REPORT_DATA)
    with pytest.raises(MalformedCertificate):
        sim_verifier.verify(
            "sev-snp", evidence.evidence, certs=evidence.certs, collateral=[b"\x30\x00"], at=NOW
        )


@pytest.fixture(scope="module")
def turin() -> SimulatedSnp:
    tcb = {"bootloader": 1, "tee": 1, "snp": 4, "microcode": 82, "fmc": 2}
    machine, _, _ = SimulatedSnp.create(product="Turin", tcb=tcb)
    return machine


@pytest.fixture(scope="module")
def turin_verifier(turin: SimulatedSnp) -> Verifier:
    return Verifier(TrustRoots.from_pem({"sev-snp": turin.roots_pem()}, simulated=True, label="t"))


def test_turin_report_decodes_fmc_and_short_hwid(
    turin: SimulatedSnp, turin_verifier: Verifier
) -> None:
    claims = turin_verifier.verify(
        "sev-snp", turin.report(report_data=REPORT_DATA, measurement=LAUNCH.measurement),
        certs=turin.certs(), at=NOW,
    )  # fmt: skip
    assert claims.details["product"] == "Turin"
    tcb = claims.details["reported_tcb"]
    assert isinstance(tcb, dict)
    assert {k: tcb[k] for k in ("fmc", "bootloader", "tee", "snp", "microcode")} == {
        "fmc": 2, "bootloader": 1, "tee": 1, "snp": 4, "microcode": 82,
    }  # fmt: skip
    Policy(allow_simulated=True, min_tcb={"fmc": 2, "microcode": 82}).evaluate(claims, NOW)
    with pytest.raises(PolicyViolation, match=r"reported_tcb\.fmc: saw 2, expected >= 3"):
        Policy(allow_simulated=True, min_tcb={"fmc": 3}).evaluate(claims, NOW)


def test_turin_report_for_another_fmc_does_not_match(
    turin: SimulatedSnp, turin_verifier: Verifier
) -> None:
    other = dict(turin.tcb) | {"fmc": 3}
    report = turin.report(
        report_data=REPORT_DATA, measurement=LAUNCH.measurement, reported_tcb=other
    )
    with pytest.raises(CertificateMismatch, match="fmc SPL"):
        turin_verifier.verify("sev-snp", report, certs=turin.certs(), at=NOW)


def test_cpuid_and_chain_must_name_the_same_product(
    turin: SimulatedSnp, turin_verifier: Verifier
) -> None:
    # Signed by the Turin VCEK, but the report's CPUID says Milan.
    milan_claiming = replace(turin, product="Milan", tcb=DEFAULT_TCB)
    report = milan_claiming.report(report_data=REPORT_DATA, measurement=LAUNCH.measurement)
    with pytest.raises(CertificateMismatch, match="CPUID says Milan"):
        turin_verifier.verify("sev-snp", report, certs=turin.certs(), at=NOW)
