"""Reviewed reference values in measurements/*.json: each parses as a verifier policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from verifier.policy import Policy

REPO = Path(__file__).resolve().parents[2]
REFERENCE_FILES = sorted((REPO / "measurements").glob("*.json"))
GCP_REPORT = REPO / "tests" / "vectors" / "sev-snp" / "teekit_gcp_milan_v5_report.bin"

# SEV-SNP ATTESTATION_REPORT offsets (AMD SEV-SNP ABI spec, Table 22).
SNP_MEASUREMENT = slice(0x90, 0xC0)
SNP_REPORTED_TCB = slice(0x180, 0x188)


def test_there_are_reference_files() -> None:
    assert any(p.name == "example-sev-snp-gcp.json" for p in REFERENCE_FILES)


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: p.name)
def test_every_reference_file_is_a_valid_policy(path: Path) -> None:
    policy = Policy.from_json(path.read_bytes())
    assert policy.platform is not None
    assert policy.measurements, "a reference file pins at least one measurement"
    assert not policy.allow_debug or "debug" in path.name
    assert all(len(m.value) == 48 for m in policy.measurements)


def test_gcp_example_matches_the_real_report() -> None:
    policy = Policy.from_json((REPO / "measurements" / "example-sev-snp-gcp.json").read_bytes())
    report = GCP_REPORT.read_bytes()
    assert len(report) == 1184
    assert policy.platform == "sev-snp"
    assert [m.value for m in policy.measurements] == [report[SNP_MEASUREMENT]]
    assert policy.measurements[0].value.hex() == (
        "b747d55452e0b9e9079770a49e397c5e6d9573581e246da7baac4f28b5cdc5b1"
        "b6d19251b8ee600fd16a3708f58406f3"
    )
    tcb = report[SNP_REPORTED_TCB]  # Milan layout: bootloader, tee, 4 reserved, snp, microcode
    assert dict(policy.min_tcb) == {
        "bootloader": tcb[0],
        "tee": tcb[1],
        "snp": tcb[6],
        "microcode": tcb[7],
    }
    assert policy.allow_debug is False
    assert policy.allow_simulated is False
