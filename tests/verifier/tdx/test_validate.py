"""TDX policy checks: unset is unchecked, every mismatch reported at once."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.verifier.tdx.conftest import ALL_CHAINS_VALID, read, utc
from verifier.claims import Claims
from verifier.errors import PolicyViolation
from verifier.policy import Policy
from verifier.tdx.validate import mismatches
from verifier.verify import Verifier

AT_2025 = utc("2025-10-28T12:00:00Z")


@pytest.fixture(scope="module")
def plain(production: Verifier) -> Claims:
    # dcapqvl_v4 sample: tee_tcb_svn 0601030..., no collateral.
    return production.verify("tdx", read("dcapqvl_v4_quote.bin"), at=ALL_CHAINS_VALID)


@pytest.fixture(scope="module")
def with_status(production: Verifier) -> Claims:
    return production.verify(
        "tdx",
        read("trustee_azure_v4_td_quote.bin"),
        collateral=[
            read("teekit_tcbinfo_00806f050000.json"),
            read("trustee_qe_identity_2025.json"),
        ],
        at=AT_2025,
    )


def _hex(claims: Claims, name: str) -> bytes:
    value = claims.details[name]
    assert isinstance(value, str)
    return bytes.fromhex(value)


def test_empty_policy_checks_nothing(plain: Claims) -> None:
    assert mismatches(plain, Policy()) == []


def test_matching_values_pass(plain: Claims) -> None:
    policy = Policy(
        mr_config_id=_hex(plain, "mr_config_id"),
        mr_owner=_hex(plain, "mr_owner"),
        min_tee_tcb_svn=_hex(plain, "tee_tcb_svn"),
        rtmrs={i: _hex(plain, f"rtmr{i}") for i in range(4)},
    )
    assert mismatches(plain, policy) == []


def test_every_mismatch_is_reported_at_once(plain: Claims) -> None:
    policy = Policy(
        mr_config_id=b"\x01" * 48,
        mr_owner=b"\x02" * 48,
        min_tee_tcb_svn=bytes((7,)) + bytes(15),
        tcb_status=("UpToDate",),
        rtmrs={0: b"\x03" * 48, 5: b"\x04" * 48},
    )
    found = {m.field: m for m in mismatches(plain, policy)}
    assert set(found) == {"mr_config_id", "mr_owner", "tee_tcb_svn", "tcb_status", "rtmr0", "rtmr5"}
    assert found["mr_config_id"].expected == "01" * 48
    assert found["tee_tcb_svn"].seen == "06010300000000000000000000000000"
    assert found["tcb_status"].seen.startswith("unknown")


def test_min_tee_tcb_svn_is_bytewise(plain: Claims) -> None:
    # 06 01 03: a minimum of 05 02 00 is higher in byte 1 even though lower in byte 0.
    assert [m.field for m in mismatches(plain, Policy(min_tee_tcb_svn=bytes((5, 2))))] == [
        "tee_tcb_svn"
    ]
    assert mismatches(plain, Policy(min_tee_tcb_svn=bytes((6, 1, 3)))) == []
    assert mismatches(plain, Policy(min_tee_tcb_svn=bytes(16))) == []


def test_tcb_status_allowed_set(with_status: Claims) -> None:
    assert with_status.details["tcb_status"] == "OutOfDate"
    assert mismatches(with_status, Policy(tcb_status=("UpToDate", "OutOfDate"))) == []
    (only,) = mismatches(with_status, Policy(tcb_status=("UpToDate", "SWHardeningNeeded")))
    assert (only.field, only.seen) == ("tcb_status", "OutOfDate")


def test_policy_evaluate_through_the_facade(production: Verifier, with_status: Claims) -> None:
    policy = Policy.from_json(
        b'{"platform": "tdx", "tcb_status": ["UpToDate"], "min_tee_tcb_svn": "02"}'
    )
    with pytest.raises(PolicyViolation) as info:
        production.appraise(with_status, policy, AT_2025)
    assert [m.field for m in info.value.mismatches] == ["tcb_status"]


def test_measurement_policy_uses_mrtd(production: Verifier, plain: Claims) -> None:
    at: datetime = ALL_CHAINS_VALID
    good = Policy.from_mapping({"measurements": [{"name": "td", "value": plain.measurement.hex()}]})
    production.appraise(plain, good, at)
