"""TDX policy checks: claims of genuine evidence against the relying party's reference values.

What this module owns: comparing the TDX fields of ``Claims.details`` with a ``Policy``.
A field the policy leaves unset is unchecked; every mismatch is reported at once, naming
the field, the value seen and the value expected (go-tdx-guest ``validate``). It never
verifies anything cryptographic: ``verify`` produced the claims.
"""

from __future__ import annotations

from verifier.claims import Claims
from verifier.errors import Mismatch
from verifier.policy import Policy

TEE_TCB_SVN_SIZE = 16
RTMR_COUNT = 4


def mismatches(claims: Claims, policy: Policy) -> list[Mismatch]:
    details = claims.details
    found: list[Mismatch] = []
    # TD report body (Quote Format A.3.2): MRCONFIGID and MROWNER are set by the host at
    # TD launch and attested unchanged; the policy pins them byte for byte.
    for name, expected in (("mr_config_id", policy.mr_config_id), ("mr_owner", policy.mr_owner)):
        if expected is None:
            continue
        seen = _hex_field(details.get(name))
        if seen != expected:
            found.append(Mismatch(name, _show(seen), expected.hex()))
    if policy.min_tee_tcb_svn is not None:
        found.extend(_tee_tcb_svn(details.get("tee_tcb_svn"), policy.min_tee_tcb_svn))
    if policy.tcb_status:
        allowed = " or ".join(policy.tcb_status)
        status = details.get("tcb_status")
        if not isinstance(status, str):
            # Without TCB Info collateral Intel's verdict on the platform is unknown, and a
            # policy that asks for one fails closed.
            found.append(Mismatch("tcb_status", "unknown (no TCB Info collateral)", allowed))
        elif status not in policy.tcb_status:
            found.append(Mismatch("tcb_status", status, allowed))
    for index, expected in sorted(policy.rtmrs.items()):
        name = f"rtmr{index}"
        if not 0 <= index < RTMR_COUNT:
            found.append(Mismatch(name, "absent (TDX has RTMR0..RTMR3)", expected.hex()))
            continue
        seen = _hex_field(details.get(name))
        if seen != expected:
            found.append(Mismatch(name, _show(seen), expected.hex()))
    return found


def _tee_tcb_svn(value: object, minimum: bytes) -> list[Mismatch]:
    """TEE_TCB_SVN is 16 independent SVN bytes: each must be at least the policy's."""
    seen = _hex_field(value)
    expected = f">= {minimum.hex()} (bytewise)"
    if len(minimum) > TEE_TCB_SVN_SIZE:
        return [Mismatch("min_tee_tcb_svn", _show(seen), f"at most {TEE_TCB_SVN_SIZE} bytes")]
    if seen is None or len(seen) != TEE_TCB_SVN_SIZE:
        return [Mismatch("tee_tcb_svn", _show(seen), expected)]
    if any(own < floor for own, floor in zip(seen, minimum, strict=False)):
        return [Mismatch("tee_tcb_svn", seen.hex(), expected)]
    return []


def _hex_field(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _show(value: bytes | None) -> str:
    return "absent" if value is None else value.hex()
