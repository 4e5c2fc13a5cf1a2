"""Dispatch of platform-specific policy checks to each platform's ``validate`` module."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from verifier.claims import Claims
    from verifier.errors import Mismatch
    from verifier.policy import Policy


def platform_mismatches(claims: Claims, policy: Policy) -> list[Mismatch]:
    if claims.platform == "sev-snp":
        from verifier.snp import validate as snp_validate

        return snp_validate.mismatches(claims, policy)
    if claims.platform == "tdx":
        from verifier.tdx import validate as tdx_validate

        return tdx_validate.mismatches(claims, policy)
    from verifier.nitro import validate as nitro_validate

    return nitro_validate.mismatches(claims, policy)
