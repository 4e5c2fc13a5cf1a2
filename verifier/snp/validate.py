"""SEV-SNP policy checks on verified claims: minimum TCB, HOST_DATA and VMPL.

What this module owns: comparing the SNP fields of ``Claims`` (as ``verifier.snp.verify``
wrote them) with the SNP fields of a ``Policy``. Unset policy fields are unchecked; every
mismatch is returned at once, naming the field, the value seen and the value expected
(go-sev-guest ``validate``). Generic checks (debug, measurement, report_data, simulated
roots) are ``Policy.mismatches``; this module never raises for genuine evidence that fails
policy, only for a policy that cannot be applied (an unknown TCB component).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from verifier.claims import Claims, JsonValue
from verifier.errors import InvalidPolicy, Mismatch
from verifier.policy import Policy

# AMD SEV-SNP ABI spec, table "TCB_VERSION Structure": the SPL components. fmc exists on
# Turin (family 1Ah) only.
TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")


def mismatches(claims: Claims, policy: Policy) -> list[Mismatch]:
    found: list[Mismatch] = []
    details = claims.details
    if policy.min_tcb:
        found.extend(_tcb_mismatches(details.get("reported_tcb"), policy.min_tcb))
    if policy.host_data is not None:
        seen = _hex_field(details, "host_data")
        # report table, row 0xC0 HOST_DATA: 32 bytes given by the host at launch.
        if seen is None or not hmac.compare_digest(seen, policy.host_data):
            found.append(
                Mismatch("host_data", seen.hex() if seen is not None else "absent",
                         policy.host_data.hex())
            )  # fmt: skip
    if policy.max_vmpl is not None:
        vmpl = details.get("vmpl")
        # report table, row 0x30 VMPL: the privilege level that requested the report.
        if not isinstance(vmpl, int) or isinstance(vmpl, bool) or vmpl > policy.max_vmpl:
            found.append(Mismatch("vmpl", str(vmpl), f"<= {policy.max_vmpl}"))
    return found


def _tcb_mismatches(reported: JsonValue | None, minimum: Mapping[str, int]) -> list[Mismatch]:
    unknown = sorted(set(minimum) - set(TCB_COMPONENTS))
    if unknown:
        raise InvalidPolicy(
            f"unknown SEV-SNP TCB component(s) {', '.join(unknown)}; "
            f"expected {', '.join(TCB_COMPONENTS)}"
        )
    found: list[Mismatch] = []
    components = reported if isinstance(reported, dict) else {}
    for name in TCB_COMPONENTS:
        if name not in minimum:
            continue
        seen = components.get(name)
        # VCEK spec: each component of REPORTED_TCB is the SPL the VCEK was issued for.
        if not isinstance(seen, int) or isinstance(seen, bool):
            found.append(Mismatch(f"reported_tcb.{name}", "absent", f">= {minimum[name]}"))
        elif seen < minimum[name]:
            found.append(Mismatch(f"reported_tcb.{name}", str(seen), f">= {minimum[name]}"))
    return found


def _hex_field(details: Mapping[str, JsonValue], name: str) -> bytes | None:
    value = details.get(name)
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None
