"""The simulated NSM is fake hardware: the real verifier accepts its documents only under
the simulated roots, and a policy only when it allows simulated roots."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from enclave.attestation.evidence import attested_tls_report_data
from enclave.attestation.launch import NITRO_CONFIG_PCR, LaunchIdentity
from enclave.attestation.simulated.nitro import HW_FILE, SimulatedNitro
from verifier.errors import (
    BadCertificateChain,
    BadSignature,
    CertificateMismatch,
    Expired,
    PolicyViolation,
    ReportDataMismatch,
)
from verifier.nitro.abi import NitroDocument
from verifier.policy import Policy
from verifier.roots import TrustRoots
from verifier.verify import Verifier

NOW = datetime(2026, 11, 29, 12, 0, 0, 123000, tzinfo=UTC)
LAUNCH = LaunchIdentity(measurement=bytes(range(48)), config=b'{"quorum": 2}')
REPORT_DATA = attested_tls_report_data(b"spki", b"n" * 32)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulatedNitro:
    return SimulatedNitro.load_or_create(tmp_path_factory.mktemp("hw"))


@pytest.fixture(scope="module")
def sim_verifier(sim: SimulatedNitro) -> Verifier:
    return Verifier(TrustRoots.from_pem({"nitro": sim.roots_pem()}, simulated=True, label="sim"))


def _clock() -> datetime:
    return NOW


def test_simulated_document_is_accepted_under_simulated_roots(
    sim: SimulatedNitro, sim_verifier: Verifier
) -> None:
    provider = sim.provider(LAUNCH, clock=_clock)
    evidence = provider.evidence(REPORT_DATA)
    assert evidence.platform == provider.platform == "nitro"
    assert evidence.certs == evidence.collateral == ()

    claims = sim_verifier.verify(
        "nitro", evidence.evidence, at=NOW, expected_report_data=REPORT_DATA
    )
    assert claims.simulated
    assert claims.measurement == LAUNCH.measurement
    assert claims.report_data == REPORT_DATA
    assert not claims.debug
    pcrs = claims.details["pcrs"]
    assert isinstance(pcrs, dict)
    assert pcrs[str(NITRO_CONFIG_PCR)] == LAUNCH.nitro_config_pcr.hex()
    assert pcrs["1"] != pcrs["2"]
    assert claims.details["timestamp"] == int(NOW.timestamp() * 1000)
    module_id = claims.details["module_id"]
    assert isinstance(module_id, str)
    assert module_id.startswith("i-sim")
    assert "-enc" in module_id
    assert module_id == provider.module_id
    assert claims.details["nonce"] is None
    assert claims.details["public_key"] is None


def test_document_has_the_real_nsm_shape(sim: SimulatedNitro) -> None:
    raw = sim.provider(LAUNCH, clock=_clock).evidence(REPORT_DATA).evidence
    outer = cbor2.loads(raw)
    assert isinstance(outer, list)  # untagged, as the NSM sends it
    document = NitroDocument.from_bytes(raw)
    assert document.cose.payload[0] == 0xBF  # indefinite-length map like current NSMs
    assert len(document.cabundle) == 2
    assert document.cabundle[0] == sim.root.public_bytes(Encoding.DER)
    assert len(document.signature) == 96


def test_nonce_and_public_key_are_attested(sim: SimulatedNitro, sim_verifier: Verifier) -> None:
    provider = sim.provider(LAUNCH, clock=_clock)
    evidence = provider.evidence_with(REPORT_DATA, nonce=b"\x01" * 32, public_key=b"key")
    claims = sim_verifier.verify("nitro", evidence.evidence, at=NOW)
    assert claims.details["nonce"] == ("01" * 32)
    assert claims.details["public_key"] == b"key".hex()


def test_text_fields_are_accepted_and_recorded(sim: SimulatedNitro, sim_verifier: Verifier) -> None:
    provider = sim.provider(LAUNCH)
    raw = sim.attestation_document(
        module_id=provider.module_id,
        pcrs=provider.pcrs,
        now=NOW,
        user_data="hello, world!",
        nonce="1234",
        public_key=None,
    )
    claims = sim_verifier.verify("nitro", raw, at=NOW)
    assert claims.report_data == b"hello, world!"
    assert claims.details["user_data_text"] == "hello, world!"
    assert claims.details["nonce"] == b"1234".hex()
    assert claims.details["nonce_text"] == "1234"
    assert "public_key_text" not in claims.details


def test_simulated_document_is_rejected_under_production_roots(sim: SimulatedNitro) -> None:
    raw = sim.provider(LAUNCH, clock=_clock).evidence(REPORT_DATA).evidence
    with pytest.raises(BadCertificateChain):
        Verifier(TrustRoots.production()).verify("nitro", raw, at=NOW)


def test_document_from_another_simulated_machine_is_rejected(sim_verifier: Verifier) -> None:
    other = SimulatedNitro.generate()
    raw = other.provider(LAUNCH, clock=_clock).evidence(REPORT_DATA).evidence
    with pytest.raises(BadCertificateChain):
        sim_verifier.verify("nitro", raw, at=NOW)


def test_leaf_is_short_lived(sim: SimulatedNitro, sim_verifier: Verifier) -> None:
    raw = sim.provider(LAUNCH, clock=_clock).evidence(REPORT_DATA).evidence
    sim_verifier.verify("nitro", raw, at=NOW + timedelta(hours=2, minutes=59))
    with pytest.raises(Expired):
        sim_verifier.verify("nitro", raw, at=NOW + timedelta(hours=3, seconds=1))
    with pytest.raises(Expired):
        sim_verifier.verify("nitro", raw, at=NOW - timedelta(seconds=5))


def test_each_document_has_a_fresh_leaf(sim: SimulatedNitro) -> None:
    provider = sim.provider(LAUNCH, clock=_clock)
    first = NitroDocument.from_bytes(provider.evidence(REPORT_DATA).evidence)
    second = NitroDocument.from_bytes(provider.evidence(REPORT_DATA).evidence)
    assert first.certificate != second.certificate
    assert first.cabundle == second.cabundle


def test_wrong_report_data_is_caught(sim: SimulatedNitro, sim_verifier: Verifier) -> None:
    raw = sim.provider(LAUNCH, clock=_clock).evidence(REPORT_DATA).evidence
    with pytest.raises(ReportDataMismatch):
        sim_verifier.verify("nitro", raw, at=NOW, expected_report_data=bytes(64))


def test_tampered_pcr_fails_the_signature(sim: SimulatedNitro, sim_verifier: Verifier) -> None:
    raw = sim.provider(LAUNCH, clock=_clock).evidence(REPORT_DATA).evidence
    index = raw.index(LAUNCH.measurement)
    tampered = raw[:index] + bytes([raw[index] ^ 1]) + raw[index + 1 :]
    with pytest.raises(BadSignature):
        sim_verifier.verify("nitro", tampered, at=NOW)


def test_policy_accepts_simulated_only_when_allowed(
    sim: SimulatedNitro, sim_verifier: Verifier
) -> None:
    raw = sim.provider(LAUNCH, clock=_clock).evidence(REPORT_DATA).evidence
    claims = sim_verifier.verify("nitro", raw, at=NOW)
    expected = {0: LAUNCH.measurement, NITRO_CONFIG_PCR: LAUNCH.nitro_config_pcr}
    Policy(platform="nitro", allow_simulated=True, pcrs=expected).evaluate(claims, NOW)
    with pytest.raises(PolicyViolation) as refused:
        Policy(platform="nitro", pcrs=expected).evaluate(claims, NOW)
    assert [m.field for m in refused.value.mismatches] == ["roots"]
    other_config = LaunchIdentity(LAUNCH.measurement, b"{}").nitro_config_pcr
    with pytest.raises(PolicyViolation) as wrong:
        Policy(allow_simulated=True, pcrs={NITRO_CONFIG_PCR: other_config}).evaluate(claims, NOW)
    assert [m.field for m in wrong.value.mismatches] == [f"pcrs.{NITRO_CONFIG_PCR}"]


def test_pki_is_made_once_and_kept_private(tmp_path: Path) -> None:
    hw_dir = tmp_path / "hw"
    first = SimulatedNitro.load_or_create(hw_dir)
    again = SimulatedNitro.load_or_create(hw_dir)
    assert first.roots_pem() == again.roots_pem()
    assert first.intermediate == again.intermediate
    assert stat.S_IMODE((hw_dir / HW_FILE).stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in first.roots_pem()
    assert list(hw_dir.iterdir()) == [hw_dir / HW_FILE]  # no temporary file left behind


def test_roots_file_round_trips_through_trust_roots(sim: SimulatedNitro, tmp_path: Path) -> None:
    (tmp_path / "nitro-roots.pem").write_bytes(sim.roots_pem())
    roots = TrustRoots.simulated_from_directory(tmp_path)
    assert roots.simulated
    raw = sim.provider(LAUNCH, clock=_clock).evidence(REPORT_DATA).evidence
    assert Verifier(roots).verify("nitro", raw, at=NOW).simulated


def test_report_data_must_be_64_bytes(sim: SimulatedNitro) -> None:
    provider = sim.provider(LAUNCH, clock=_clock)
    with pytest.raises(ValueError):
        provider.evidence(b"short")
    with pytest.raises(ValueError):
        provider.evidence_with(REPORT_DATA, nonce=bytes(513))


def test_corrupt_pki_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / HW_FILE).write_bytes(b"not pem")
    with pytest.raises(ValueError):
        SimulatedNitro.load_or_create(tmp_path)


def _signed_document(
    sim: SimulatedNitro,
    *,
    leaf_time: datetime,
    timestamp: datetime,
    cabundle: list[bytes] | None = None,
    leaf_key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """A document signed like the NSM's but with chosen inconsistencies (a faulty NSM)."""
    key = leaf_key or ec.generate_private_key(ec.SECP384R1())
    leaf = sim._leaf_certificate("i-simfaulty-enc0", key, leaf_time)
    payload = cbor2.dumps(
        {
            "module_id": "i-simfaulty-enc0",
            "digest": "SHA384",
            "timestamp": int(timestamp.timestamp() * 1000),
            "pcrs": {0: LAUNCH.measurement},
            "certificate": leaf.public_bytes(Encoding.DER),
            "cabundle": cabundle
            or [sim.root.public_bytes(Encoding.DER), sim.intermediate.public_bytes(Encoding.DER)],
            "public_key": None,
            "user_data": REPORT_DATA,
            "nonce": None,
        }
    )
    protected = cbor2.dumps({1: -35})
    r, s = decode_dss_signature(
        key.sign(cbor2.dumps(["Signature1", protected, b"", payload]), ec.ECDSA(hashes.SHA384()))
    )
    return cbor2.dumps([protected, {}, payload, r.to_bytes(48, "big") + s.to_bytes(48, "big")])


def test_consistent_handmade_document_is_accepted(
    sim: SimulatedNitro, sim_verifier: Verifier
) -> None:
    raw = _signed_document(sim, leaf_time=NOW, timestamp=NOW)
    assert sim_verifier.verify("nitro", raw, at=NOW).report_data == REPORT_DATA


def test_timestamp_outside_the_leaf_window_is_a_mismatch(
    sim: SimulatedNitro, sim_verifier: Verifier
) -> None:
    raw = _signed_document(sim, leaf_time=NOW, timestamp=NOW + timedelta(hours=4))
    with pytest.raises(CertificateMismatch, match="timestamp"):
        sim_verifier.verify("nitro", raw, at=NOW)


def test_cabundle_out_of_order_is_refused(sim: SimulatedNitro, sim_verifier: Verifier) -> None:
    reversed_bundle = [
        sim.intermediate.public_bytes(Encoding.DER),
        sim.root.public_bytes(Encoding.DER),
    ]
    raw = _signed_document(sim, leaf_time=NOW, timestamp=NOW, cabundle=reversed_bundle)
    with pytest.raises(BadCertificateChain, match="order"):
        sim_verifier.verify("nitro", raw, at=NOW)


def test_cabundle_without_the_root_still_chains_to_the_pinned_root(
    sim: SimulatedNitro, sim_verifier: Verifier
) -> None:
    raw = _signed_document(
        sim, leaf_time=NOW, timestamp=NOW, cabundle=[sim.intermediate.public_bytes(Encoding.DER)]
    )
    assert sim_verifier.verify("nitro", raw, at=NOW).simulated


def test_leaf_key_must_be_p384(sim: SimulatedNitro, sim_verifier: Verifier) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    raw = _signed_document(sim, leaf_time=NOW, timestamp=NOW, leaf_key=p256)
    with pytest.raises(BadSignature, match="P-384"):
        sim_verifier.verify("nitro", raw, at=NOW)
