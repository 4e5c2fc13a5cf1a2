"""The attestation-result token: a short-lived JWT that says "this evidence was verified".

What this module owns: issuing the token a remote verifier hands back for accepted evidence
(``TokenIssuer``), publishing its public key as a JWKS with a ``kid``, and checking such a
token on the relying party's side (``verify_result_token``). Tokens are ES256 (P-256) by
default, or EdDSA (Ed25519) when the issuer's key is Ed25519.

What it must never do: read a clock (every function takes ``at``/``now``), accept an
algorithm other than the one the JWKS key dictates (no ``none``, no HMAC with a public key),
or put a private key in a ``repr``, a log line or an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from verifier.claims import Claims, JsonValue
from verifier.errors import VerificationError

TokenAlgorithm = Literal["ES256", "EdDSA"]
VERDICT_AFFIRMING = "affirming"
DEFAULT_ISSUER = "kms-verifier"
DEFAULT_TTL = timedelta(minutes=5)
MAX_TTL = timedelta(hours=1)
DEFAULT_LEEWAY = timedelta(seconds=30)
MAX_TOKEN_BYTES = 64 * 1024
MAX_KEY_FILE_BYTES = 64 * 1024
JWT_HEADER_TYPE = "JWT"
_ALGORITHMS: tuple[TokenAlgorithm, ...] = ("ES256", "EdDSA")
# Claims every result token carries; a relying party refuses a token that lacks one.
REQUIRED_CLAIMS = (
    "iss", "iat", "exp", "jti", "verdict", "platform", "measurement", "report_data", "debug",
)  # fmt: skip

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class InvalidResultToken(VerificationError):
    """The attestation-result token is forged, expired, for someone else, or malformed."""

    type = "invalid-token"
    title = "The attestation-result token is not valid"


class InvalidSigningKey(VerificationError):
    """The signing key given to the issuer cannot be used (wrong type, curve or format)."""

    type = "invalid-signing-key"
    title = "The token signing key is not usable"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the ``kid`` of a key."""
    if jwk.get("kty") == "EC":
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    elif jwk.get("kty") == "OKP":
        members = {k: jwk[k] for k in ("crv", "kty", "x")}
    else:
        raise InvalidSigningKey(f"unsupported key type {jwk.get('kty')!r}")
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return _b64url(hashlib.sha256(canonical).digest())


def policy_digest(policy_document: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` over the canonical JSON (sorted keys, no spaces) of a policy object."""
    canonical = json.dumps(
        policy_document, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def tcb_fields(claims: Claims) -> dict[str, JsonValue]:
    """The platform's TCB fields among the claims' details (SNP TCB versions, TDX SVNs...)."""
    return {
        key: value
        for key, value in claims.details.items()
        if any(part in key.lower() for part in ("tcb", "svn", "firmware"))
    }


@dataclass(frozen=True)
class TokenIssuer:
    """Signs attestation-result tokens with one key and publishes that key as a JWKS.

    Build with ``generate`` (a fresh P-256 key, e.g. at server start) or ``from_pem``.
    """

    issuer: str
    signing_key: SigningKey = field(repr=False, compare=False)
    ttl: timedelta = DEFAULT_TTL
    algorithm: TokenAlgorithm = field(default="ES256", init=False)
    kid: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if not self.issuer:
            raise InvalidSigningKey("the token issuer needs a name")
        if not timedelta(0) < self.ttl <= MAX_TTL:
            raise InvalidSigningKey(f"token lifetime must be in (0, {MAX_TTL}]")
        if isinstance(self.signing_key, ed25519.Ed25519PrivateKey):
            algorithm: TokenAlgorithm = "EdDSA"
        elif isinstance(self.signing_key, ec.EllipticCurvePrivateKey) and isinstance(
            self.signing_key.curve, ec.SECP256R1
        ):
            algorithm = "ES256"
        else:
            raise InvalidSigningKey("the signing key must be EC P-256 (ES256) or Ed25519")
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "kid", jwk_thumbprint(self.public_jwk(with_kid=False)))

    @classmethod
    def generate(
        cls,
        issuer: str = DEFAULT_ISSUER,
        *,
        algorithm: TokenAlgorithm = "ES256",
        ttl: timedelta = DEFAULT_TTL,
    ) -> TokenIssuer:
        key: SigningKey
        if algorithm == "EdDSA":
            key = ed25519.Ed25519PrivateKey.generate()
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        return cls(issuer=issuer, ttl=ttl, signing_key=key)

    @classmethod
    def from_pem(cls, pem: bytes, issuer: str, *, ttl: timedelta = DEFAULT_TTL) -> TokenIssuer:
        """Load an unencrypted PKCS#8 / SEC1 PEM (or DER) private key: P-256 or Ed25519."""
        if len(pem) > MAX_KEY_FILE_BYTES:
            raise InvalidSigningKey("signing key file is too large")
        try:
            if b"-----BEGIN" in pem:
                key = serialization.load_pem_private_key(pem, password=None)
            else:
                key = serialization.load_der_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise InvalidSigningKey(
                "signing key is not an unencrypted PEM/DER private key"
            ) from None
        except Exception:  # cryptography raises UnsupportedAlgorithm for odd key types
            raise InvalidSigningKey("signing key type is not supported") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise InvalidSigningKey("the signing key must be EC P-256 (ES256) or Ed25519")
        return cls(issuer=issuer, ttl=ttl, signing_key=key)

    def public_jwk(self, *, with_kid: bool = True) -> dict[str, str]:
        public = self.signing_key.public_key()
        jwk: dict[str, str]
        if isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
        else:
            numbers = public.public_numbers()
            jwk = {
                "kty": "EC",
                "crv": "P-256",
                "x": _b64url(numbers.x.to_bytes(32, "big")),
                "y": _b64url(numbers.y.to_bytes(32, "big")),
            }
        if with_kid:
            jwk |= {"kid": self.kid, "alg": self.algorithm, "use": "sig"}
        return jwk

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [self.public_jwk()]}

    def issue(
        self,
        claims: Claims,
        *,
        at: datetime,
        verified_at: datetime | None = None,
        nonce: str | None = None,
        policy_digest: str | None = None,
        audience: str | None = None,
    ) -> str:
        """Sign a result token for ``claims``, issued at ``at`` and valid for ``ttl``.

        ``verified_at`` is the time the evidence was judged at (defaults to ``at``).
        """
        if at.tzinfo is None:
            raise InvalidResultToken("token issue time must be timezone-aware")
        iat = int(at.timestamp())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "iat": iat,
            "nbf": iat,
            "exp": int((at + self.ttl).timestamp()),
            "jti": secrets.token_hex(16),
            "verdict": VERDICT_AFFIRMING,
            "verified_at": int((verified_at or at).timestamp()),
            "platform": claims.platform,
            "measurement": claims.measurement.hex(),
            "report_data": claims.report_data.hex(),
            "debug": claims.debug,
            "simulated": claims.simulated,
            "tcb": tcb_fields(claims),
        }
        if nonce is not None:
            payload["nonce"] = nonce
        if policy_digest is not None:
            payload["policy_digest"] = policy_digest
        if audience is not None:
            payload["aud"] = audience
        return jwt.encode(
            payload,
            self.signing_key,
            algorithm=self.algorithm,
            headers={"kid": self.kid, "typ": JWT_HEADER_TYPE},
        )


@dataclass(frozen=True)
class ResultToken:
    """The verified contents of an attestation-result token."""

    issuer: str
    issued_at: datetime
    expires_at: datetime
    verdict: str
    platform: str
    measurement: bytes
    report_data: bytes
    debug: bool
    simulated: bool
    nonce: str | None
    policy_digest: str | None
    tcb: Mapping[str, Any]
    raw: Mapping[str, Any]


def _jwks_keys(jwks: Mapping[str, Any] | str | bytes) -> list[Mapping[str, Any]]:
    if isinstance(jwks, str | bytes):
        try:
            jwks = json.loads(jwks)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidResultToken("JWKS is not valid JSON") from None
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise InvalidResultToken("JWKS must be an object with a 'keys' list")
    return [k for k in jwks["keys"] if isinstance(k, Mapping)]


def verify_result_token(
    token: str | bytes,
    jwks: Mapping[str, Any] | str | bytes,
    now: datetime | float,
    *,
    audience: str | None = None,
    nonce: str | None = None,
    issuer: str | None = None,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> ResultToken:
    """Check a result token against the verifier's JWKS at ``now``; return its contents.

    ``now`` is a timezone-aware datetime or a POSIX timestamp. Checks: the header's ``kid``
    names a key in ``jwks``; the algorithm is the one that key dictates (ES256 for P-256,
    EdDSA for Ed25519); the signature; ``iat``/``nbf``/``exp`` against ``now`` with
    ``leeway``; the verdict is "affirming"; and, when given, the issuer, the audience and
    the nonce. Raises ``InvalidResultToken``.
    """
    if not isinstance(now, datetime):
        now = datetime.fromtimestamp(now, UTC)
    if now.tzinfo is None:
        raise InvalidResultToken("verification time must be timezone-aware")
    if isinstance(token, bytes):
        token = token.decode("ascii", errors="replace")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidResultToken("token is too large")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidResultToken("token is not a JWT") from None
    kid, alg = header.get("kid"), header.get("alg")
    if alg not in _ALGORITHMS:
        raise InvalidResultToken(f"token algorithm {alg!r} is not accepted")
    candidates = [k for k in _jwks_keys(jwks) if k.get("kid") == kid and kid is not None]
    if not candidates:
        raise InvalidResultToken("token key id is not in the JWKS")
    try:
        key = jwt.PyJWK(dict(candidates[0]))
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise InvalidResultToken("the JWKS key is not usable") from None
    if key.algorithm_name != alg:
        raise InvalidResultToken(f"token algorithm {alg!r} does not match its key")
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.PyJWTError:
        raise InvalidResultToken("token signature does not verify") from None

    missing = [name for name in REQUIRED_CLAIMS if name not in payload]
    if missing:
        raise InvalidResultToken(f"token lacks claim(s): {', '.join(missing)}")
    stamps: dict[str, int] = {}
    for name in ("iat", "exp", "nbf"):
        value = payload.get(name, payload["iat"] if name == "nbf" else None)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidResultToken(f"token claim {name} is not a NumericDate")
        stamps[name] = value
    moment, slack = now.timestamp(), leeway.total_seconds()
    if moment >= stamps["exp"] + slack:
        raise InvalidResultToken("token has expired")
    if moment + slack < stamps["nbf"] or moment + slack < stamps["iat"]:
        raise InvalidResultToken("token is not yet valid")
    if payload["verdict"] != VERDICT_AFFIRMING:
        raise InvalidResultToken(f"token verdict is {payload['verdict']!r}")
    if issuer is not None and payload["iss"] != issuer:
        raise InvalidResultToken("token was issued by someone else")
    token_audience = payload.get("aud")
    if token_audience is not None or audience is not None:
        audiences = token_audience if isinstance(token_audience, list) else [token_audience]
        if audience is None or audience not in audiences:
            raise InvalidResultToken("token is for another audience")
    if nonce is not None and not _same_nonce(payload.get("nonce"), nonce):
        raise InvalidResultToken("token nonce does not match")
    try:
        measurement = bytes.fromhex(str(payload["measurement"]))
        report_data = bytes.fromhex(str(payload["report_data"]))
    except ValueError:
        raise InvalidResultToken("token measurement or report_data is not hex") from None
    tcb = payload.get("tcb", {})
    return ResultToken(
        issuer=str(payload["iss"]),
        issued_at=datetime.fromtimestamp(stamps["iat"], UTC),
        expires_at=datetime.fromtimestamp(stamps["exp"], UTC),
        verdict=str(payload["verdict"]),
        platform=str(payload["platform"]),
        measurement=measurement,
        report_data=report_data,
        debug=payload["debug"] is True,
        simulated=payload.get("simulated") is True,
        nonce=payload.get("nonce") if isinstance(payload.get("nonce"), str) else None,
        policy_digest=(
            payload["policy_digest"] if isinstance(payload.get("policy_digest"), str) else None
        ),
        tcb=tcb if isinstance(tcb, Mapping) else {},
        raw=payload,
    )


def _same_nonce(seen: object, expected: str) -> bool:
    if not isinstance(seen, str):
        return False
    return secrets.compare_digest(seen.lower().encode(), expected.lower().encode())


__all__ = [
    "InvalidResultToken",
    "InvalidSigningKey",
    "ResultToken",
    "TokenIssuer",
    "jwk_thumbprint",
    "policy_digest",
    "verify_result_token",
]
