"""SEV-SNP policy checks: min_tcb, host_data and max_vmpl, every mismatch named at once."""

from __future__ import annotations

import pytest

from tests.verifier.snp.conftest import VCEK_TIME, vector
from verifier.claims import Claims
from verifier.errors import InvalidPolicy, Mismatch, PolicyViolation
from verifier.policy import Policy
from verifier.snp.validate import mismatches
from verifier.verify import Verifier


@pytest.fixture(scope="module")
def teekit_vmpl1(production: Verifier) -> Claims:
    # Milan, reported_tcb bl4/tee0/snp27/ucode222, VMPL 1, HOST_DATA zero.
    return production.verify(
        "sev-snp",
        vector("teekit_gcp_milan_v5_reportdata_report.bin"),
        certs=[vector("teekit_gcp_milan_v5_vcek.pem")],
        at=VCEK_TIME,
    )


def policy(**fields: object) -> Policy:
    return Policy.from_mapping({"platform": "sev-snp", **fields})


CASES = {
    "empty-policy-checks-nothing": ({}, []),
    "min-tcb-met-exactly": (
        {"min_tcb": {"bootloader": 4, "tee": 0, "snp": 27, "microcode": 222}},
        [],
    ),
    "min-tcb-two-components-below": (
        {"min_tcb": {"snp": 28, "microcode": 230, "bootloader": 1}},
        [
            Mismatch("reported_tcb.snp", "27", ">= 28"),
            Mismatch("reported_tcb.microcode", "222", ">= 230"),
        ],
    ),
    "min-tcb-fmc-absent-on-milan": (
        {"min_tcb": {"fmc": 1}},
        [Mismatch("reported_tcb.fmc", "absent", ">= 1")],
    ),
    "host-data-matches": ({"host_data": "00" * 32}, []),
    "host-data-differs": (
        {"host_data": "ab" * 32},
        [Mismatch("host_data", "00" * 32, "ab" * 32)],
    ),
    "vmpl-allowed": ({"max_vmpl": 1}, []),
    "vmpl-too-high": ({"max_vmpl": 0}, [Mismatch("vmpl", "1", "<= 0")]),
    "all-at-once": (
        {"min_tcb": {"tee": 1}, "host_data": "01" * 32, "max_vmpl": 0},
        [
            Mismatch("reported_tcb.tee", "0", ">= 1"),
            Mismatch("host_data", "00" * 32, "01" * 32),
            Mismatch("vmpl", "1", "<= 0"),
        ],
    ),
}


@pytest.mark.parametrize(("fields", "expected"), CASES.values(), ids=CASES.keys())
def test_mismatches(
    teekit_vmpl1: Claims, fields: dict[str, object], expected: list[Mismatch]
) -> None:
    assert mismatches(teekit_vmpl1, policy(**fields)) == expected


def test_unknown_tcb_component_is_an_invalid_policy(teekit_vmpl1: Claims) -> None:
    with pytest.raises(InvalidPolicy, match="ucode"):
        mismatches(teekit_vmpl1, policy(min_tcb={"ucode": 1}))


def test_policy_evaluate_reports_snp_and_generic_mismatches(teekit_vmpl1: Claims) -> None:
    strict = policy(
        min_tcb={"snp": 30},
        max_vmpl=0,
        measurements=[{"name": "other", "value": "00" * 48}],
    )
    with pytest.raises(PolicyViolation) as caught:
        strict.evaluate(teekit_vmpl1, VCEK_TIME)
    fields = [m.field for m in caught.value.mismatches]
    assert fields == ["measurement", "reported_tcb.snp", "vmpl"]
    assert "reported_tcb.snp: saw 27, expected >= 30" in str(caught.value)


def test_verify_and_appraise_accepts_a_matching_policy(production: Verifier) -> None:
    good = policy(
        measurements=[
            {
                "name": "gcp-image",
                "value": "b747d55452e0b9e9079770a49e397c5e6d9573581e246da7baac4f28b5cdc5b1"
                "b6d19251b8ee600fd16a3708f58406f3",
            }
        ],
        min_tcb={"bootloader": 4, "snp": 27, "microcode": 222},
        max_vmpl=0,
    )
    claims = production.verify_and_appraise(
        "sev-snp",
        vector("teekit_gcp_milan_v5_report.bin"),
        certs=[vector("teekit_gcp_milan_v5_vcek.pem")],
        policy=good,
        at=VCEK_TIME,
    )
    assert claims.details["vmpl"] == 0


def test_debug_is_forbidden_by_default(production: Verifier) -> None:
    with pytest.raises(PolicyViolation) as caught:
        production.verify_and_appraise(
            "sev-snp",
            vector("gosevguest_milan_v2_report.bin"),
            certs=[vector("gosevguest_milan_v2_vcek.der")],
            policy=policy(),
            at=VCEK_TIME,
        )
    assert caught.value.mismatches == (Mismatch("debug", "true", "false"),)
