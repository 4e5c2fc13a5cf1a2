"""Request tokens: short-lived JWTs signed by the principal, bound to this KMS's TLS key.

Format (EdDSA, RFC 8037): header ``{"alg": "EdDSA", "typ": "JWT", "kid": <principal id>}``,
claims ``iss`` = ``sub`` = principal id, ``aud`` = this KMS's audience string, ``iat``,
``exp`` (at most ``MAX_TOKEN_LIFETIME`` after ``iat``), and ``cnf`` = ``{"spki#S256":
base64url(SHA-256(the enclave's attested TLS SubjectPublicKeyInfo DER))}``. The ``cnf``
binding makes a token useless against any other KMS, and through a host that substituted
its own certificate, since the client only signs for the key it attested.

Verified tokens are cached by their SHA-256 until they expire, so a token reused within
its lifetime costs one hash and a dictionary look-up, not a signature verification.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from threading import Lock
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave.auth.principals import Principal, PrincipalDirectory

MAX_TOKEN_LIFETIME = 300
CLOCK_LEEWAY = 30
MAX_TOKEN_BYTES = 4096
CNF_KEY = "spki#S256"


class AuthenticationError(Exception):
    """The request's credentials are not acceptable. ``type`` is stable; never secret."""

    type = "unauthenticated"

    def __init__(self, detail: str, type_: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if type_:
            self.type = type_


def spki_thumbprint(spki_der: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(spki_der).digest()).rstrip(b"=").decode()


def issue_token(
    private_key: Ed25519PrivateKey,
    *,
    principal_id: str,
    audience: str,
    tls_spki_der: bytes,
    lifetime: int = 120,
    now: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Sign a request token (the client side)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": principal_id,
        "sub": principal_id,
        "aud": audience,
        "iat": issued,
        "exp": issued + lifetime,
        "cnf": {CNF_KEY: spki_thumbprint(tls_spki_der)},
    }
    if extra:
        claims.update(extra)
    return jwt.encode(claims, private_key, algorithm="EdDSA", headers={"kid": principal_id})


@dataclass(frozen=True)
class AuthenticatedCaller:
    principal: Principal
    token_digest: str
    expires_at: int


class TokenAuthenticator:
    """Checks request tokens for one KMS (audience) and one attested TLS key."""

    def __init__(
        self,
        *,
        audience: str,
        tls_spki_der: bytes,
        principals: PrincipalDirectory,
        clock: Callable[[], float] = time.time,
        max_cached: int = 10_000,
    ) -> None:
        self._audience = audience
        self._thumbprint = spki_thumbprint(tls_spki_der)
        self._principals = principals
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[str, int]] = OrderedDict()
        self._max_cached = max_cached
        self._lock = Lock()

    def forget_principal(self, principal_id: str) -> None:
        """Drop cached tokens of a principal (after it is disabled, isolated or rekeyed)."""
        with self._lock:
            for digest in [d for d, (p, _) in self._cache.items() if p == principal_id]:
                del self._cache[digest]

    def authenticate(self, token: str) -> AuthenticatedCaller:
        principal, digest, expires_at = self._check(token)
        return AuthenticatedCaller(principal, digest.hex(), expires_at)

    def principal(self, token: str) -> Principal:
        """``authenticate(token).principal``, the same checks, without building the caller
        record (the HTTP API calls this on every request and needs the principal only)."""
        return self._check(token)[0]

    def _check(self, token: str) -> tuple[Principal, bytes, int]:
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationError("token is too large", "invalid-token")
        now = int(self._clock())
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None:
                self._cache.move_to_end(digest)
        if cached is not None:
            principal_id, expires_at = cached
            if now > expires_at + CLOCK_LEEWAY:
                raise AuthenticationError("token has expired", "expired-token")
            principal = self._principals.get(principal_id)
            if principal is None or not principal.active:
                raise AuthenticationError("principal is disabled or unknown", "unknown-principal")
            return principal, digest, expires_at
        principal, expires_at = self._verify(token, now)
        with self._lock:
            self._cache[digest] = (principal.id, expires_at)
            while len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)
        return principal, digest, expires_at

    def _verify(self, token: str, now: int) -> tuple[Principal, int]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthenticationError("token is not a JWT", "invalid-token") from None
        if header.get("alg") != "EdDSA":
            raise AuthenticationError("token must be signed with EdDSA", "invalid-token")
        kid = header.get("kid")
        principal = self._principals.get(kid) if isinstance(kid, str) else None
        if principal is None or principal.public_key is None:
            raise AuthenticationError("token names no registered principal", "unknown-principal")
        if not principal.active:
            raise AuthenticationError("principal is disabled or isolated", "unknown-principal")
        key = Ed25519PublicKey.from_public_bytes(principal.public_key)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                audience=self._audience,
                # strict_aud: ``aud`` is this KMS's string, as the format says; not a list
                # that merely contains it (a token meant for several services).
                options={"require": ["exp", "iat", "aud", "iss"], "verify_exp": False,
                         "verify_iat": False, "strict_aud": True},
            )  # fmt: skip
        except jwt.InvalidAudienceError:
            raise AuthenticationError("token is for another KMS", "wrong-audience") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("token signature does not verify", "invalid-token") from None
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(f"token is invalid: {exc}", "invalid-token") from None
        if claims.get("iss") != principal.id or claims.get("sub", principal.id) != principal.id:
            raise AuthenticationError("token issuer is not its signer", "invalid-token")
        issued, expires = claims["iat"], claims["exp"]
        if not isinstance(issued, int) or not isinstance(expires, int):
            raise AuthenticationError("iat and exp must be integers", "invalid-token")
        if expires - issued > MAX_TOKEN_LIFETIME:
            raise AuthenticationError(
                f"token lifetime exceeds {MAX_TOKEN_LIFETIME} s", "token-lifetime-too-long"
            )
        if issued > now + CLOCK_LEEWAY:
            raise AuthenticationError("token is issued in the future", "invalid-token")
        if expires > now + MAX_TOKEN_LIFETIME + CLOCK_LEEWAY:
            raise AuthenticationError("token expires too far ahead", "token-lifetime-too-long")
        if now > expires + CLOCK_LEEWAY:
            raise AuthenticationError("token has expired", "expired-token")
        cnf = claims.get("cnf")
        if not isinstance(cnf, dict) or cnf.get(CNF_KEY) != self._thumbprint:
            raise AuthenticationError(
                "token is bound to another TLS key (not this attested enclave)", "wrong-tls-key"
            )
        return principal, expires
