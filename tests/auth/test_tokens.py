"""Request tokens: every refusal the issue lists, and the verification cache."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.auth.principals import Level, Principal
from enclave.auth.tokens import AuthenticationError, TokenAuthenticator, issue_token

NOW = 1_800_000_000
SPKI = b"attested-tls-spki"
OTHER_SPKI = b"host-substituted-spki"
AUDIENCE = "kms:test"


class Directory:
    def __init__(self) -> None:
        self.principals: dict[str, Principal] = {}
        self.lookups = 0

    def get(self, principal_id: str) -> Principal | None:
        self.lookups += 1
        return self.principals.get(principal_id)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture
def world() -> tuple[Directory, Ed25519PrivateKey, TokenAuthenticator]:
    directory = Directory()
    key = Ed25519PrivateKey.generate()
    directory.principals["prn_svc"] = Principal(
        id="prn_svc",
        name="svc",
        kind="service",
        public_key=_raw(key),
        system_level=Level.USE_KEY,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    auth = TokenAuthenticator(
        audience=AUDIENCE, tls_spki_der=SPKI, principals=directory, clock=lambda: NOW
    )
    return directory, key, auth


def token(key: Ed25519PrivateKey, **overrides: object) -> str:
    args: dict[str, object] = {
        "principal_id": "prn_svc",
        "audience": AUDIENCE,
        "tls_spki_der": SPKI,
        "lifetime": 120,
        "now": NOW,
    }
    args.update(overrides)
    return issue_token(key, **args)  # type: ignore[arg-type]


def test_valid_token_authenticates_and_is_cached(world) -> None:  # type: ignore[no-untyped-def]
    _directory, key, auth = world
    good = token(key)
    assert auth.authenticate(good).principal.id == "prn_svc"
    assert auth.authenticate(good).principal.id == "prn_svc"


@pytest.mark.parametrize(
    ("overrides", "error_type"),
    [
        ({"audience": "kms:another"}, "wrong-audience"),
        ({"tls_spki_der": OTHER_SPKI}, "wrong-tls-key"),
        ({"lifetime": 301}, "token-lifetime-too-long"),
        ({"now": NOW - 1000}, "expired-token"),
        ({"now": NOW + 3600}, "invalid-token"),
        ({"principal_id": "prn_unknown"}, "unknown-principal"),
    ],
    ids=["other-audience", "other-tls-key", "too-long", "expired", "future", "unknown"],
)
def test_bad_tokens_are_refused(world, overrides, error_type) -> None:  # type: ignore[no-untyped-def]
    _, key, auth = world
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(token(key, **overrides))
    assert info.value.type == error_type


def test_token_signed_by_another_key_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    _, _, auth = world
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(token(Ed25519PrivateKey.generate()))
    assert info.value.type == "invalid-token"


def test_hs256_and_none_algorithms_are_refused(world) -> None:  # type: ignore[no-untyped-def]
    _, _, auth = world
    claims = {"iss": "prn_svc", "aud": AUDIENCE, "iat": NOW, "exp": NOW + 60}
    forged = jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": "prn_svc"})
    for bad in (forged, forged.rsplit(".", 1)[0] + ".", "not-a-jwt"):
        with pytest.raises(AuthenticationError):
            auth.authenticate(bad)


def test_cached_token_still_expires_and_follows_principal_state(world) -> None:  # type: ignore[no-untyped-def]
    directory, key, _ = world
    clock = [NOW]
    auth = TokenAuthenticator(
        audience=AUDIENCE, tls_spki_der=SPKI, principals=directory, clock=lambda: clock[0]
    )
    good = token(key, lifetime=60)
    auth.authenticate(good)
    directory.principals["prn_svc"] = directory.principals["prn_svc"].with_changes(isolated=True)
    with pytest.raises(AuthenticationError):
        auth.authenticate(good)
    directory.principals["prn_svc"] = directory.principals["prn_svc"].with_changes(isolated=False)
    clock[0] = NOW + 60 + 31
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(good)
    assert info.value.type == "expired-token"


def test_tampered_claims_are_refused(world) -> None:  # type: ignore[no-untyped-def]
    _, key, auth = world
    header, payload, signature = token(key).split(".")
    _other_header, other_payload, _ = token(key, lifetime=200).split(".")
    with pytest.raises(AuthenticationError):
        auth.authenticate(f"{header}.{other_payload}.{signature}")
    assert (
        hashlib.sha256(payload.encode()).digest() != hashlib.sha256(other_payload.encode()).digest()
    )
