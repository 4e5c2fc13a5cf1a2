"""Attestation-result tokens: issuing, JWKS, and every way a relying party must refuse one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from verifier.claims import Claims
from verifier.token import (
    InvalidResultToken,
    InvalidSigningKey,
    TokenIssuer,
    jwk_thumbprint,
    policy_digest,
    verify_result_token,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CLAIMS = Claims(
    platform="sev-snp",
    measurement=bytes.fromhex("7a" * 48),
    report_data=bytes.fromhex("d4" * 32) + bytes(32),
    debug=False,
    details={
        "reported_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        "guest_svn": 4,
        "chip_id": "ab" * 64,
        "current_firmware": "1.52.4",
    },
)


@pytest.fixture(params=["ES256", "EdDSA"])
def issuer(request: pytest.FixtureRequest) -> TokenIssuer:
    return TokenIssuer.generate("https://verifier.test", algorithm=request.param)


def forge(issuer: TokenIssuer, payload: dict[str, Any], **headers: Any) -> str:
    """Sign an arbitrary payload with the issuer's own key (a bug or a confused deputy)."""
    return jwt.encode(
        payload,
        issuer.signing_key,
        algorithm=issuer.algorithm,
        headers={"kid": issuer.kid} | headers,
    )


def test_round_trip(issuer: TokenIssuer) -> None:
    token = issuer.issue(CLAIMS, at=NOW, nonce="abcd", policy_digest="sha256:00")
    result = verify_result_token(token, issuer.jwks(), now=NOW + timedelta(minutes=4))
    assert result.verdict == "affirming"
    assert result.issuer == "https://verifier.test"
    assert result.platform == "sev-snp"
    assert result.measurement == CLAIMS.measurement
    assert result.report_data == CLAIMS.report_data
    assert result.debug is False and result.simulated is False
    assert result.nonce == "abcd"
    assert result.policy_digest == "sha256:00"
    assert result.tcb == {
        "reported_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        "guest_svn": 4,
        "current_firmware": "1.52.4",
    }
    assert result.issued_at == NOW
    assert result.expires_at == NOW + timedelta(minutes=5)


def test_now_may_be_positional_or_a_timestamp() -> None:
    issuer = TokenIssuer.generate()
    token = issuer.issue(CLAIMS, at=NOW)
    assert verify_result_token(token, issuer.jwks(), NOW).issuer == "kms-verifier"
    assert verify_result_token(token, issuer.jwks(), NOW.timestamp() + 60).platform == "sev-snp"
    with pytest.raises(InvalidResultToken):
        verify_result_token(token, issuer.jwks(), NOW.timestamp() + 3600)


def test_header_and_jwks(issuer: TokenIssuer) -> None:
    token = issuer.issue(CLAIMS, at=NOW)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": issuer.algorithm, "kid": issuer.kid, "typ": "JWT"}
    [key] = issuer.jwks()["keys"]
    assert key["kid"] == issuer.kid and key["alg"] == issuer.algorithm and key["use"] == "sig"
    assert "d" not in key


def test_kid_is_rfc7638_thumbprint() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = TokenIssuer("iss", key)
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    canonical = f'{{"crv":"P-256","kty":"EC","x":"{b64(numbers.x)}","y":"{b64(numbers.y)}"}}'
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=")
    assert issuer.kid == expected.decode()
    assert jwk_thumbprint(issuer.public_jwk()) == issuer.kid


def test_jwks_as_json_text(issuer: TokenIssuer) -> None:
    token = issuer.issue(CLAIMS, at=NOW)
    assert verify_result_token(token, json.dumps(issuer.jwks()), now=NOW).platform == "sev-snp"
    assert verify_result_token(token.encode(), json.dumps(issuer.jwks()).encode(), now=NOW)


@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        (timedelta(0), True),
        (timedelta(minutes=5, seconds=29), True),  # inside the 30 s leeway
        (timedelta(minutes=5, seconds=30), False),
        (timedelta(hours=2), False),
        (timedelta(seconds=-29), True),
        (timedelta(minutes=-2), False),  # issued in the future
    ],
    ids=["at-issue", "within-leeway", "expired", "long-expired", "skew", "not-yet-valid"],
)
def test_time_window(issuer: TokenIssuer, offset: timedelta, ok: bool) -> None:
    token = issuer.issue(CLAIMS, at=NOW)
    if ok:
        verify_result_token(token, issuer.jwks(), now=NOW + offset)
    else:
        with pytest.raises(InvalidResultToken):
            verify_result_token(token, issuer.jwks(), now=NOW + offset)


def test_other_verifiers_key_is_refused(issuer: TokenIssuer) -> None:
    token = issuer.issue(CLAIMS, at=NOW)
    other = TokenIssuer.generate("https://verifier.test", algorithm=issuer.algorithm)
    with pytest.raises(InvalidResultToken, match="key id"):
        verify_result_token(token, other.jwks(), now=NOW)
    # Same kid pointing at another key: the signature must fail.
    swapped = {"keys": [other.public_jwk() | {"kid": issuer.kid}]}
    with pytest.raises(InvalidResultToken, match="signature"):
        verify_result_token(token, swapped, now=NOW)


def test_tampered_payload_is_refused(issuer: TokenIssuer) -> None:
    header, payload, signature = issuer.issue(CLAIMS, at=NOW).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["debug"] = True
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidResultToken):
        verify_result_token(f"{header}.{forged}.{signature}", issuer.jwks(), now=NOW)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(payload: dict[str, Any], secret: bytes, *, kid: str) -> str:
    """An HS256 token by hand (PyJWT refuses to use a JWK as an HMAC secret)."""
    header = b64url(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(mac)}"


def test_alg_none_and_hmac_confusion_are_refused(issuer: TokenIssuer) -> None:
    payload = jwt.decode(issuer.issue(CLAIMS, at=NOW), options={"verify_signature": False})
    unsigned = jwt.encode(payload, None, algorithm="none", headers={"kid": issuer.kid})
    with pytest.raises(InvalidResultToken, match="algorithm"):
        verify_result_token(unsigned, issuer.jwks(), now=NOW)
    public_json = json.dumps(issuer.public_jwk()).encode()
    hmac_token = hs256(payload, public_json, kid=issuer.kid)
    with pytest.raises(InvalidResultToken, match="algorithm"):
        verify_result_token(hmac_token, issuer.jwks(), now=NOW)


def test_algorithm_must_match_the_key() -> None:
    es = TokenIssuer.generate("iss", algorithm="ES256")
    ed = TokenIssuer.generate("iss", algorithm="EdDSA")
    token = ed.issue(CLAIMS, at=NOW)
    mixed = {"keys": [es.public_jwk() | {"kid": ed.kid}]}
    with pytest.raises(InvalidResultToken, match="does not match"):
        verify_result_token(token, mixed, now=NOW)


def test_audience_issuer_and_nonce(issuer: TokenIssuer) -> None:
    jwks = issuer.jwks()
    plain = issuer.issue(CLAIMS, at=NOW, nonce="AbCd")
    scoped = issuer.issue(CLAIMS, at=NOW, audience="kms://prod")
    assert verify_result_token(scoped, jwks, now=NOW, audience="kms://prod")
    for token, kwargs in [
        (scoped, {}),  # a token for someone must not be taken by a party that did not ask
        (scoped, {"audience": "kms://staging"}),
        (plain, {"audience": "kms://prod"}),
        (plain, {"issuer": "https://evil.test"}),
        (plain, {"nonce": "abce"}),
        (scoped, {"audience": "kms://prod", "nonce": "abcd"}),
    ]:
        with pytest.raises(InvalidResultToken):
            verify_result_token(token, jwks, now=NOW, **kwargs)
    assert verify_result_token(plain, jwks, now=NOW, nonce="abcd").nonce == "AbCd"
    assert verify_result_token(plain, jwks, now=NOW, issuer="https://verifier.test")


def test_non_affirming_or_incomplete_tokens_are_refused(issuer: TokenIssuer) -> None:
    base = jwt.decode(issuer.issue(CLAIMS, at=NOW), options={"verify_signature": False})
    variants = [
        base | {"verdict": "contraindicated"},
        {k: v for k, v in base.items() if k != "measurement"},
        {k: v for k, v in base.items() if k != "exp"},
        base | {"exp": "tomorrow"},
        base | {"iat": True},
        base | {"measurement": "not hex"},
    ]
    for payload in variants:
        with pytest.raises(InvalidResultToken):
            verify_result_token(forge(issuer, payload), issuer.jwks(), now=NOW)


@pytest.mark.parametrize(
    "jwks",
    [
        "not json",
        b"\xff",
        {"keys": "nope"},
        [],
        {"keys": [{"kid": "x", "kty": "RSA"}]},
        '{"keys": [' + '{"a":' * 5000 + "1" + "}" * 5000 + "]}",  # once RecursionError
    ],
    ids=["text", "bytes", "keys-not-list", "list", "foreign-key", "nested-too-deep"],
)
def test_malformed_jwks(issuer: TokenIssuer, jwks: Any) -> None:
    with pytest.raises(InvalidResultToken):
        verify_result_token(issuer.issue(CLAIMS, at=NOW), jwks, now=NOW)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c", "x" * 70_000, "ey.ey.ey"])
def test_garbage_tokens(issuer: TokenIssuer, token: str) -> None:
    with pytest.raises(InvalidResultToken):
        verify_result_token(token, issuer.jwks(), now=NOW)


def test_naive_times_are_refused(issuer: TokenIssuer) -> None:
    with pytest.raises(InvalidResultToken):
        issuer.issue(CLAIMS, at=datetime(2026, 1, 1))
    with pytest.raises(InvalidResultToken):
        verify_result_token(issuer.issue(CLAIMS, at=NOW), issuer.jwks(), now=datetime(2026, 1, 1))


def pem(key: Any, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def test_from_pem_accepts_p256_and_ed25519() -> None:
    es = TokenIssuer.from_pem(pem(ec.generate_private_key(ec.SECP256R1())), "iss")
    ed = TokenIssuer.from_pem(pem(ed25519.Ed25519PrivateKey.generate()), "iss")
    assert (es.algorithm, ed.algorithm) == ("ES256", "EdDSA")
    der = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert TokenIssuer.from_pem(der, "iss").algorithm == "ES256"


@pytest.mark.parametrize(
    "make",
    [
        lambda: pem(ec.generate_private_key(ec.SECP384R1())),
        lambda: pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        lambda: pem(ec.generate_private_key(ec.SECP256R1()), password=b"pw"),
        lambda: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        lambda: b"garbage",
        lambda: b"",
    ],
    ids=["p384", "rsa", "encrypted", "bad-pem", "garbage", "empty"],
)
def test_from_pem_refuses_other_keys(make: Any) -> None:
    with pytest.raises(InvalidSigningKey):
        TokenIssuer.from_pem(make(), "iss")


def test_issuer_limits_and_repr() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidSigningKey):
        TokenIssuer("", key)
    with pytest.raises(InvalidSigningKey):
        TokenIssuer("iss", key, ttl=timedelta(days=1))
    with pytest.raises(InvalidSigningKey):
        TokenIssuer("iss", key, ttl=timedelta(0))
    secret = key.private_numbers().private_value
    text = repr(TokenIssuer("iss", key))
    assert "signing_key" not in text and str(secret) not in text


def test_policy_digest_is_canonical() -> None:
    a = policy_digest({"platform": "sev-snp", "allow_debug": False})
    b = policy_digest({"allow_debug": False, "platform": "sev-snp"})
    assert a == b and a.startswith("sha256:") and len(a) == 7 + 64
    assert a != policy_digest({"platform": "sev-snp", "allow_debug": True})
