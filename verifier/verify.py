"""The verifier facade: evidence bytes + certificates + collateral + roots + time -> claims.

``Verifier`` holds the trust roots and the verified-chain cache; ``verify`` is a pure
function of its arguments and of those roots (no clock, file or network). Policy is a
separate step (``appraise``), so a caller can see the claims of genuine evidence that
its policy rejects.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from verifier._internal.x509 import ChainVerifier
from verifier.claims import Claims, Platform
from verifier.encoding import decode_evidence
from verifier.errors import ReportDataMismatch, UsageError, VerificationError
from verifier.policy import Policy
from verifier.roots import TrustRoots


class Verifier:
    def __init__(self, roots: TrustRoots, *, chains: ChainVerifier | None = None) -> None:
        self.roots = roots
        self.chains = chains or ChainVerifier()

    def verify(
        self,
        platform: Platform,
        evidence: bytes,
        *,
        at: datetime,
        certs: Sequence[bytes] = (),
        collateral: Sequence[bytes] = (),
        expected_report_data: bytes | None = None,
    ) -> Claims:
        """Check that ``evidence`` is genuine at ``at``; return its claims.

        ``certs`` are certificate files (DER, PEM or PEM bundles) the platform needs beside
        the evidence (SNP: VCEK/VLEK, optionally ASK/ARK). ``collateral`` are endorsement
        documents (CRLs; TDX TCB Info and QE Identity). Raises a ``VerificationError``.
        """
        if at.tzinfo is None:
            raise UsageError("verification time must be timezone-aware")
        raw = decode_evidence(evidence)
        claims = self._dispatch(platform, raw, at=at, certs=certs, collateral=collateral)
        if expected_report_data is not None:
            # Nitro user_data may be shorter than 64 bytes: compare both zero-padded.
            expected = expected_report_data.ljust(64, b"\x00")
            if claims.report_data.ljust(64, b"\x00") != expected:
                raise ReportDataMismatch(
                    f"report_data is {claims.report_data.hex()}, expected {expected.hex()}"
                )
        return claims

    def appraise(self, claims: Claims, policy: Policy, at: datetime) -> None:
        policy.evaluate(claims, at)

    def verify_and_appraise(
        self,
        platform: Platform,
        evidence: bytes,
        *,
        policy: Policy,
        at: datetime,
        certs: Sequence[bytes] = (),
        collateral: Sequence[bytes] = (),
        expected_report_data: bytes | None = None,
    ) -> Claims:
        claims = self.verify(
            platform,
            evidence,
            at=at,
            certs=certs,
            collateral=collateral,
            expected_report_data=expected_report_data,
        )
        self.appraise(claims, policy, at)
        return claims

    def _dispatch(
        self,
        platform: Platform,
        raw: bytes,
        *,
        at: datetime,
        certs: Sequence[bytes],
        collateral: Sequence[bytes],
    ) -> Claims:
        roots = self.roots.for_platform(platform)
        simulated = self.roots.simulated
        if platform == "sev-snp":
            from verifier.snp import verify as snp

            return snp.verify(
                raw, roots=roots, simulated=simulated, certs=certs,
                collateral=collateral, at=at, chains=self.chains,
            )  # fmt: skip
        if platform == "tdx":
            from verifier.tdx import verify as tdx

            return tdx.verify(
                raw, roots=roots, simulated=simulated, certs=certs,
                collateral=collateral, at=at, chains=self.chains,
            )  # fmt: skip
        if platform == "nitro":
            from verifier.nitro import verify as nitro

            return nitro.verify(
                raw, roots=roots, simulated=simulated, certs=certs,
                collateral=collateral, at=at, chains=self.chains,
            )  # fmt: skip
        raise UsageError(f"unknown platform {platform!r}")


__all__ = ["Claims", "Policy", "TrustRoots", "VerificationError", "Verifier"]
