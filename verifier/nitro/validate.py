"""Nitro-specific policy checks: PCR values against the policy's reference values.

What this module owns: comparing the ``pcrs`` claim of authenticated Nitro evidence with
``Policy.pcrs``. An index the policy does not list is unchecked; every mismatch is reported
at once (go-sev-guest ``validate`` style). AWS "Where to get an enclave's measurements":
PCR0 image, PCR1 kernel and bootstrap, PCR2 application, PCR3 IAM role, PCR4 instance ID,
PCR8 signing certificate; PCR16 and up are extended by the enclave itself (our PCR16 holds
the launch configuration).
"""

from __future__ import annotations

from verifier.claims import Claims
from verifier.errors import Mismatch
from verifier.policy import Policy


def mismatches(claims: Claims, policy: Policy) -> list[Mismatch]:
    if not policy.pcrs:
        return []
    seen_pcrs = claims.details.get("pcrs")
    reported = seen_pcrs if isinstance(seen_pcrs, dict) else {}
    found: list[Mismatch] = []
    for index in sorted(policy.pcrs):
        expected = policy.pcrs[index].hex()
        seen = reported.get(str(index))
        if not isinstance(seen, str):
            found.append(Mismatch(f"pcrs.{index}", "absent", expected))
        elif seen != expected:
            found.append(Mismatch(f"pcrs.{index}", seen, expected))
    return found
