"""Checking one endpoint's attestation: evidence, freshness, binding to the TLS key, policy.

ARCHITECTURE.md "Attested TLS" step 3. Given the answer to ``GET /v1/attestation?nonce=N``
and the certificate the TLS peer presented on *the same connection*, the endpoint is
accepted only when all of these hold (each failure is an ``AttestationRefused`` naming it):

1. the answer is well formed and echoes our nonce (else ``stale-evidence``);
2. it is evidence of the profile's platform (``platform-mismatch``);
3. the evidence is genuine under the profile's trust roots (the verifier's own types:
   ``bad-chain``, ``bad-signature``, ...), checked by the local verifier library or by the
   profile's remote verifier, whose signed result token is then checked against its pinned
   JWKS, our nonce and the digest of our policy (``invalid-token``);
4. its report_data is ``attested_tls_report_data(SPKI of the TLS peer, N)``
   (``binding-mismatch``; boot evidence replayed in place of fresh evidence is
   ``stale-evidence``);
5. the claims meet the profile's policy (``policy-violation``, listing every mismatch).

This module does no I/O of its own except the remote verifier call it is handed a
session for; the caller owns connections and decides what to send afterwards.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from enclave.attestation.evidence import attested_tls_report_data
from enclave.tls import spki_der_of_certificate
from kms.errors import (
    BINDING_MISMATCH,
    INVALID_TOKEN,
    MALFORMED_ANSWER,
    PLATFORM_MISMATCH,
    POLICY_VIOLATION,
    STALE_EVIDENCE,
    AttestationRefused,
)
from kms.profile import Profile
from verifier.claims import Claims, JsonValue, parse_platform
from verifier.errors import PolicyViolation, VerificationError
from verifier.verify import Verifier

NONCE_BYTES = 32
MAX_ENCODED_EVIDENCE = 2 * 1024 * 1024
MAX_CERTS = 16


@dataclass(frozen=True)
class AttestationAnswer:
    """A parsed ``/v1/attestation`` answer (not yet trusted)."""

    platform: str
    evidence: bytes
    certs: tuple[bytes, ...]
    collateral: tuple[bytes, ...]
    nonce: bytes

    @classmethod
    def from_json(cls, document: object) -> AttestationAnswer:
        if not isinstance(document, Mapping):
            raise AttestationRefused(MALFORMED_ANSWER, "the attestation answer is not an object")
        try:
            platform = document["platform"]
            if not isinstance(platform, str):
                raise TypeError("platform")
            return cls(
                platform=platform,
                evidence=_b64(document["evidence"]),
                certs=tuple(_b64(c) for c in _list(document.get("certs", []))),
                collateral=tuple(_b64(c) for c in _list(document.get("collateral", []))),
                nonce=bytes.fromhex(_str(document["nonce"])),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise AttestationRefused(
                MALFORMED_ANSWER, f"the attestation answer is malformed ({exc})"
            ) from None


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _list(value: object) -> list[Any]:
    if not isinstance(value, list) or len(value) > MAX_CERTS:
        raise TypeError("expected a short list")
    return value


def _b64(value: object) -> bytes:
    text = _str(value)
    if len(text) > MAX_ENCODED_EVIDENCE:
        raise ValueError("too large")
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True)
class AttestationResult:
    """An endpoint that passed attestation: what it proved and which certificate to pin."""

    endpoint: str
    claims: Mapping[str, JsonValue]
    certificate_der: bytes = field(repr=False)
    nonce: bytes
    verified_at: datetime
    verifier: str
    token: str | None = field(default=None, repr=False)

    @property
    def certificate_sha256(self) -> bytes:
        return hashlib.sha256(self.certificate_der).digest()

    @property
    def measurement(self) -> str:
        return str(self.claims["measurement"])

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = dict(self.claims)
        out.update(
            {
                "endpoint": self.endpoint,
                "nonce": self.nonce.hex(),
                "tls_certificate_sha256": self.certificate_sha256.hex(),
                "verified_at": self.verified_at.isoformat(),
                "verifier": self.verifier,
            }
        )
        if self.token is not None:
            out["token"] = self.token
        return out


class Attestor:
    """Applies one profile's checks. Holds the local verifier (and its chain cache)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._verifier: Verifier | None = None

    @property
    def local_verifier(self) -> Verifier:
        if self._verifier is None:
            self._verifier = Verifier(self.profile.trust.roots(self.profile.platform))
        return self._verifier

    def precheck(
        self, answer: AttestationAnswer, certificate_der: bytes, nonce: bytes, endpoint: str
    ) -> bytes:
        """Steps 1-2; returns the report_data the evidence must carry (step 4)."""
        if len(nonce) != NONCE_BYTES:
            raise ValueError("the client nonce must be 32 bytes")
        if not hmac.compare_digest(answer.nonce, nonce):
            raise AttestationRefused(
                STALE_EVIDENCE,
                "the answer is for another nonce (a replayed attestation)",
                endpoint=endpoint,
            )
        if answer.platform != self.profile.platform:
            raise AttestationRefused(
                PLATFORM_MISMATCH,
                f"the endpoint sent {answer.platform} evidence; the profile expects "
                f"{self.profile.platform}",
                endpoint=endpoint,
            )
        try:
            spki = spki_der_of_certificate(certificate_der)
        except ValueError as exc:
            raise AttestationRefused(
                BINDING_MISMATCH, f"the TLS peer certificate is unusable: {exc}", endpoint=endpoint
            ) from None
        return attested_tls_report_data(spki, nonce)

    def check_binding(
        self, report_data: bytes, expected: bytes, certificate_der: bytes, endpoint: str
    ) -> None:
        if hmac.compare_digest(report_data, expected):
            return
        spki = spki_der_of_certificate(certificate_der)
        if hmac.compare_digest(report_data, attested_tls_report_data(spki, b"")):
            raise AttestationRefused(
                STALE_EVIDENCE,
                "the evidence is the boot evidence, not fresh evidence for our nonce",
                endpoint=endpoint,
            )
        raise AttestationRefused(
            BINDING_MISMATCH,
            "the evidence is not bound to the TLS key of this connection "
            "(a host or proxy terminated TLS in place of the enclave)",
            endpoint=endpoint,
        )

    def check_policy(self, claims: Claims, at: datetime, endpoint: str) -> None:
        try:
            self.profile.policy.evaluate(claims, at)
        except PolicyViolation as exc:
            raise AttestationRefused(
                POLICY_VIOLATION,
                exc.detail,
                endpoint=endpoint,
                mismatches=[m.as_dict() for m in exc.mismatches],
            ) from None

    def check_local(
        self,
        answer: AttestationAnswer,
        certificate_der: bytes,
        nonce: bytes,
        endpoint: str,
        at: datetime | None = None,
    ) -> AttestationResult:
        """All five checks with the local verifier library (CPU only; no I/O)."""
        at = at or datetime.now(UTC)
        expected = self.precheck(answer, certificate_der, nonce, endpoint)
        try:
            claims = self.local_verifier.verify(
                parse_platform(answer.platform),
                answer.evidence,
                at=at,
                certs=answer.certs,
                collateral=answer.collateral,
            )
        except VerificationError as exc:
            raise AttestationRefused(exc.type, exc.detail, endpoint=endpoint) from None
        self.check_binding(claims.report_data, expected, certificate_der, endpoint)
        self.check_policy(claims, at, endpoint)
        return AttestationResult(
            endpoint=endpoint,
            claims=claims.to_json(),
            certificate_der=certificate_der,
            nonce=nonce,
            verified_at=at,
            verifier="local",
        )

    def check_remote_result(
        self,
        answer: AttestationAnswer,
        certificate_der: bytes,
        nonce: bytes,
        endpoint: str,
        *,
        result: Mapping[str, Any],
        jwks: Mapping[str, Any],
        at: datetime | None = None,
    ) -> AttestationResult:
        """Checks 4-5 on a remote verifier's accepted result (its token is what counts)."""
        from verifier.token import InvalidResultToken, policy_digest, verify_result_token

        assert self.profile.verifier is not None
        at = at or datetime.now(UTC)
        expected = self.precheck(answer, certificate_der, nonce, endpoint)
        token = result.get("token")
        if not isinstance(token, str):
            raise AttestationRefused(
                INVALID_TOKEN, "the verifier returned no token", endpoint=endpoint
            )
        try:
            verified = verify_result_token(
                token, jwks, now=at, nonce=nonce.hex(), issuer=self.profile.verifier.issuer
            )
        except InvalidResultToken as exc:
            raise AttestationRefused(INVALID_TOKEN, exc.detail, endpoint=endpoint) from None
        if verified.policy_digest != policy_digest(self.profile.policy_for_verifier):
            raise AttestationRefused(
                INVALID_TOKEN, "the verifier's token is not for our policy", endpoint=endpoint
            )
        if verified.platform != self.profile.platform:
            raise AttestationRefused(
                PLATFORM_MISMATCH, f"the verifier attests {verified.platform}", endpoint=endpoint
            )
        self.check_binding(verified.report_data, expected, certificate_der, endpoint)
        claims_json = result.get("claims")
        details: dict[str, JsonValue] = (
            dict(claims_json) if isinstance(claims_json, Mapping) else {}
        )
        claims = Claims(
            platform=parse_platform(verified.platform),
            measurement=verified.measurement,
            report_data=verified.report_data,
            debug=verified.debug,
            simulated=verified.simulated,
            details={k: v for k, v in details.items() if k not in _SIGNED_FIELDS},
        )
        # The verifier applied our policy (its digest is signed); re-check what the token
        # itself signs, so a verifier bug cannot admit a measurement the profile refuses.
        _check_signed_fields(self.profile, claims, at, endpoint)
        return AttestationResult(
            endpoint=endpoint,
            claims=claims.to_json(),
            certificate_der=certificate_der,
            nonce=nonce,
            verified_at=at,
            verifier=self.profile.verifier.url,
            token=token,
        )


_SIGNED_FIELDS = ("platform", "measurement", "report_data", "debug", "simulated")


def _check_signed_fields(profile: Profile, claims: Claims, at: datetime, endpoint: str) -> None:
    from verifier.policy import Policy

    document = profile.policy.to_json()
    core = {k: document[k] for k in ("platform", "measurements", "allow_debug", "allow_simulated")
            if k in document}  # fmt: skip
    try:
        Policy.from_mapping(core).evaluate(claims, at)
    except PolicyViolation as exc:
        raise AttestationRefused(
            POLICY_VIOLATION, exc.detail, endpoint=endpoint,
            mismatches=[m.as_dict() for m in exc.mismatches],
        ) from None  # fmt: skip


def new_nonce() -> bytes:
    import secrets

    return secrets.token_bytes(NONCE_BYTES)
