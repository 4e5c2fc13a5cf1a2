"""The one K/V key service object behind both HTTP front ends (aiohttp and HTTP/2).

Endpoints (paths in ``formats``):

- ``GET /.well-known/protected-auction/v1/public-keys`` (alias ``GET /v1alpha/publicKeys``):
  the active keys, latest expiry first, with ``Date`` and
  ``Cache-Control: max-age=min(seconds to the latest expiry, 604800)``.
- ``GET /.well-known/protected-auction/v1/public-keys.signed``: the same body bytes, the key
  set and a timestamp, signed (Ed25519) by the KMS identity key.
- Attestation hand-off for K/V servers (ours; the coordinators use cloud IAM instead):
  1. ``POST /v1alpha/attestation:challenge`` -> ``{"challenge": b64(32 bytes), "expiresAt"}``
     (single use, short-lived);
  2. the server makes evidence whose report_data is
     ``release_report_data(its ephemeral X25519 public key, challenge)``
     (``enclave.kms.release``: SHA-512 over "kms-key-release/v1" || 0x00 ||
     SHA-256(public key) || challenge) and posts
     ``{"platform", "evidence", "certs", "collateral", "publicKey", "challenge"}`` (bytes as
     base64) to ``POST /v1alpha/attestation:session``;
  3. evidence that does not verify, or a stale/unknown challenge: 401; genuine evidence that
     does not match the key set's release policy: 403; otherwise
     ``{"sessionToken", "tokenType": "Bearer", "expiresAt"}``, a random token bound to the
     attested public key and the claims, valid ``session_ttl`` (5 minutes).
- ``GET /v1alpha/encryptionKeys:recent?maxAgeSeconds=N`` and
  ``GET /v1alpha/encryptionKeys/{id}`` with ``Authorization: Bearer <token>``: the
  coordinators' EncryptionKey JSON, private key (or this KMS's XOR share) HPKE-wrapped to
  the session's attested public key. Missing/bad ``maxAgeSeconds`` or a malformed id: 400;
  no or expired session: 401; claims no longer matching the release policy (it is
  re-evaluated on every fetch): 403; unknown id: 404.

Every request is audited before it is answered (fail closed: no durable record, no
answer). Errors are problem+json (RFC 9457). The service never logs or returns key material
except wrapped to an attested key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from enclave.audit.records import Outcome
from enclave.kms.release import release_report_data, wrap_for_client
from enclave.pakv.formats import (
    CHALLENGE_PATH,
    KEY_BY_ID_PREFIX,
    MAX_CACHE_SECONDS,
    MAX_PUBLIC_KEYS_BODY,
    MULTI_PARTY,
    PUBLIC_KEYS_ALIAS_PATH,
    PUBLIC_KEYS_PATH,
    RECENT_KEYS_PATH,
    SESSION_PATH,
    SIGNED_PUBLIC_KEYS_PATH,
    X25519_KEY_BYTES,
    EncryptionKey,
    KeyData,
    PublicKeyEntry,
    PublicKeySet,
    SignedPublicKeys,
    b64,
    canonical_json,
    encryption_keys_body,
    kek_uri,
    public_key_signature_message,
    signed_document_message,
    thumbprint,
    tink_public_keyset,
)
from enclave.pakv.keyids import KEY_ID_RE
from enclave.pakv.keyset import Clock, KeySource, active_keys, recent_keys, to_ms, utc_now
from enclave.pakv.store import KeyRecord
from enclave.pakv.unsafe_test_keys import (
    UNSAFE_TEST_KEYS_HEADER,
    UNSAFE_TEST_KEYS_MARK,
    UnsafeTestKeySource,
)
from enclave.problems import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    NotFound,
    NotReady,
    PayloadTooLarge,
    ProblemError,
    TooManyRequests,
    problem_type,
)
from verifier.claims import Claims, parse_platform
from verifier.errors import PolicyViolation, VerificationError
from verifier.policy import Policy
from verifier.verify import Verifier

log = logging.getLogger("enclave.pakv.service")

AuditFn = Callable[..., Awaitable[object]]
Signer = Callable[[bytes], bytes]
JSON_CONTENT_TYPE = "application/json"
WRAP_VERSION = 1  # the ``version`` in the HPKE info of enclave.kms.release
MAX_MAX_AGE_SECONDS = 400 * 86_400


# -- problems this service adds ---------------------------------------------------------
class Unauthenticated(ProblemError):
    status = 401
    slug = "unauthenticated"
    title = "An attested session is required"


class InvalidChallenge(Unauthenticated):
    slug = "invalid-challenge"
    title = "The challenge is unknown, used or expired"


class AttestationFailed(Unauthenticated):
    slug = "attestation-failed"
    title = "The evidence does not verify"


class ReleaseDenied(ProblemError):
    status = 403
    slug = "release-policy-denied"
    title = "The attested server does not match the key release policy"


class MethodNotAllowed(ProblemError):
    status = 405
    slug = "method-not-allowed"
    title = "Method Not Allowed"


class AuditFailed(ProblemError):
    status = 503
    slug = "audit-unavailable"
    title = "The audit log cannot record this request; refused"


# -- requests and answers (transport-neutral) -------------------------------------------
@dataclass(frozen=True)
class PakvRequest:
    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    transport: str = "http/1.1"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()

    def all_headers(self) -> list[tuple[str, str]]:
        return [("Content-Type", self.content_type), *self.headers]


def problem_answer(exc: ProblemError, instance: str, date: str | None = None) -> Answer:
    body: dict[str, Any] = {
        "type": problem_type(exc.slug),
        "title": exc.title,
        "status": exc.status,
    }
    if exc.detail:
        body["detail"] = exc.detail
    body["instance"] = instance
    for key, value in exc.extensions.items():
        body.setdefault(key, value)
    headers = list(exc.headers.items())
    if date is not None:
        headers.append(("Date", date))
    return Answer(exc.status, json.dumps(body).encode(), PROBLEM_CONTENT_TYPE, tuple(headers))


# -- configuration and state ----------------------------------------------------------------
@dataclass(frozen=True)
class PakvServiceConfig:
    session_ttl: timedelta = timedelta(minutes=5)
    challenge_ttl: timedelta = timedelta(minutes=2)
    max_sessions: int = 4096
    max_challenges: int = 4096
    max_request_bytes: int = 512 * 1024
    body_read_seconds: float = 30.0  # HTTP/1.1: a body still arriving after this is a 408
    max_recent_keys: int = 256


@dataclass(frozen=True)
class KmsIdentity:
    """The KMS identity key that signs public keys: a signing callable, never the key."""

    sign: Signer = field(repr=False)
    public_key: bytes  # raw Ed25519
    certificate_pem: str | None = None


@dataclass(frozen=True)
class Session:
    token: str = field(repr=False)
    public_key: bytes
    claims: Claims = field(repr=False)
    expires_ms: int

    @property
    def principal(self) -> str:
        return f"pakv-server:{self.claims.platform}:{self.claims.measurement.hex()[:32]}"


# Whether the request being answered has an audit record yet (one context per request:
# an aiohttp handler or an ASGI stream task).
_AUDITED: ContextVar[bool] = ContextVar("pakv_request_audited", default=False)

NO_RELEASE_POLICY = "no K/V release policy is configured: no server may fetch private keys"


@dataclass(frozen=True)
class ReleasePolicy:
    """Which attested servers may receive this key set's private halves.

    ``policy=None`` (no release policy in the configuration) fails closed: every session
    is refused with 403, while the public keys are still served.
    """

    policy: Policy | None
    verifier: Verifier


class PakvService:
    def __init__(
        self,
        keys: KeySource,
        *,
        release: ReleasePolicy,
        identity: KmsIdentity,
        audit: AuditFn,
        clock: Clock = utc_now,
        config: PakvServiceConfig | None = None,
    ) -> None:
        self.keys = keys
        self.kms_id = keys.kms_id
        self.release = release
        self.identity = identity
        self._audit = audit
        self._clock = clock
        self.config = config or PakvServiceConfig()
        self._challenges: dict[bytes, int] = {}
        self._sessions: dict[str, Session] = {}

    # -- dispatch --------------------------------------------------------------------
    async def handle(self, request: PakvRequest) -> Answer:
        answer = await self._handle(request)
        if self.unsafe_test_keys:
            answer = Answer(
                answer.status,
                answer.body,
                answer.content_type,
                (*answer.headers, (UNSAFE_TEST_KEYS_HEADER, UNSAFE_TEST_KEYS_MARK)),
            )
        return answer

    async def _handle(self, request: PakvRequest) -> Answer:
        now = self._clock()
        date = http_date(now)
        _AUDITED.set(False)
        try:
            if len(request.body) > self.config.max_request_bytes:
                raise PayloadTooLarge(f"at most {self.config.max_request_bytes} bytes")
            answer = await self._route(request, now)
        except AuditFailed as exc:
            return problem_answer(exc, request.path, date)  # nothing could be recorded
        except ProblemError as exc:
            answer = problem_answer(exc, request.path, date)
        except Exception:
            log.exception("unhandled error answering %s %s", request.method, request.path)
            answer = problem_answer(ProblemError(), request.path, date)
        if not _AUDITED.get():
            try:
                await self._record_unaudited(request, answer.status)
            except AuditFailed as exc:
                return problem_answer(exc, request.path, date)
        if not any(name.lower() == "date" for name, _ in answer.headers):
            answer = Answer(
                answer.status, answer.body, answer.content_type, (*answer.headers, ("Date", date))
            )
        return answer

    @property
    def unsafe_test_keys(self) -> bool:
        """Whether this service serves the publicly known K/V test key pair (every answer
        then says so in ``UNSAFE_TEST_KEYS_HEADER``)."""
        return isinstance(self.keys, UnsafeTestKeySource)

    async def _route(self, request: PakvRequest, now: datetime) -> Answer:
        path, method = request.path, request.method.upper()
        routes: dict[str, tuple[str, Callable[[PakvRequest, datetime], Awaitable[Answer]]]] = {
            PUBLIC_KEYS_PATH: ("GET", self._public_keys),
            PUBLIC_KEYS_ALIAS_PATH: ("GET", self._public_keys),
            SIGNED_PUBLIC_KEYS_PATH: ("GET", self._signed_public_keys),
            CHALLENGE_PATH: ("POST", self._challenge),
            SESSION_PATH: ("POST", self._session),
            RECENT_KEYS_PATH: ("GET", self._recent),
        }
        if path in routes:
            allowed, handler = routes[path]
        elif path.startswith(KEY_BY_ID_PREFIX):
            allowed, handler = "GET", self._by_id
        else:
            raise NotFound(f"no resource at {path}")
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            raise MethodNotAllowed(f"allowed methods: {allowed}", headers={"Allow": allowed})
        return await handler(request, now)

    # -- public keys ------------------------------------------------------------------
    def public_key_set(self, now: datetime) -> tuple[PublicKeySet, bytes, int]:
        """The active set, its exact body bytes and its max-age."""
        active = active_keys(self.keys, now)
        if not active:
            raise NotReady("no active request key: has the rotation job run?")
        keys = PublicKeySet(tuple(PublicKeyEntry(r.key_id, r.public_key) for r in active))
        body = keys.to_body()
        if len(body) >= MAX_PUBLIC_KEYS_BODY:
            raise NotReady("the active key set does not fit the 2 KB answer")
        latest = max(r.expiration_ms for r in active)
        max_age = max(0, min((latest - to_ms(now)) // 1000, MAX_CACHE_SECONDS))
        return keys, body, max_age

    async def _public_keys(self, request: PakvRequest, now: datetime) -> Answer:
        keys, body, max_age = self.public_key_set(now)
        await self._record(
            "anonymous",
            "pakv.public_keys",
            "allowed",
            status=200,
            details={"keys": [k.id for k in keys.keys]},
        )
        return Answer(200, body, headers=_cache_headers(now, max_age))

    def signed_public_keys(self, now: datetime) -> tuple[SignedPublicKeys, int]:
        keys, body, max_age = self.public_key_set(now)
        timestamp = to_ms(now)
        signature = self.identity.sign(signed_document_message(timestamp, body))
        document = SignedPublicKeys(
            kms_id=self.kms_id,
            timestamp_ms=timestamp,
            body=body,
            keys=keys,
            signature=signature,
            signing_key=self.identity.public_key,
            certificate=self.identity.certificate_pem,
        )
        return document, max_age

    async def _signed_public_keys(self, request: PakvRequest, now: datetime) -> Answer:
        document, max_age = self.signed_public_keys(now)
        await self._record(
            "anonymous",
            "pakv.public_keys.signed",
            "allowed",
            status=200,
            details={"keys": [k.id for k in document.keys.keys]},
        )
        return Answer(200, canonical_json(document.to_json()), headers=_cache_headers(now, max_age))

    # -- attestation hand-off ----------------------------------------------------------------
    async def _challenge(self, request: PakvRequest, now: datetime) -> Answer:
        now_ms = to_ms(now)
        self._expire(now_ms)
        if len(self._challenges) >= self.config.max_challenges:
            raise TooManyRequests("too many outstanding challenges", headers={"Retry-After": "5"})
        challenge = secrets.token_bytes(32)
        expires = now_ms + int(self.config.challenge_ttl.total_seconds() * 1000)
        self._challenges[challenge] = expires
        return Answer(
            200,
            canonical_json({"challenge": b64(challenge), "expiresAt": str(expires)}),
            headers=(("Cache-Control", "no-store"),),
        )

    async def _session(self, request: PakvRequest, now: datetime) -> Answer:
        now_ms = to_ms(now)
        self._expire(now_ms)
        try:
            doc = _session_request(request.body)
        except BadRequest as exc:
            await self._record(
                "anonymous", "pakv.attest", "invalid", status=400, details={"reason": exc.detail}
            )
            raise
        platform, evidence, certs, collateral, public_key, challenge = doc
        if self._challenges.pop(challenge, 0) <= now_ms:
            await self._record(
                "anonymous", "pakv.attest", "denied", status=401, details={"reason": "challenge"}
            )
            raise InvalidChallenge()
        try:
            claims = self.release.verifier.verify(
                platform,
                evidence,
                at=now,
                certs=certs,
                collateral=collateral,
                expected_report_data=release_report_data(public_key, challenge),
            )
        except VerificationError as exc:
            await self._record(
                "anonymous",
                "pakv.attest",
                "denied",
                status=401,
                details={"reason": type(exc).__name__},
            )
            raise AttestationFailed(f"{type(exc).__name__}: {exc}") from None
        principal = f"pakv-server:{claims.platform}:{claims.measurement.hex()[:32]}"
        mismatches = self._mismatches(claims, now)
        if mismatches:
            await self._record(
                principal, "pakv.attest", "denied", status=403, details={"mismatches": mismatches}
            )
            raise ReleaseDenied("; ".join(mismatches), extensions={"mismatches": mismatches})
        if len(self._sessions) >= self.config.max_sessions:
            raise TooManyRequests("too many sessions", headers={"Retry-After": "5"})
        token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        expires = now_ms + int(self.config.session_ttl.total_seconds() * 1000)
        session = Session(token, public_key, claims, expires)
        await self._record(
            principal, "pakv.attest", "allowed", status=200, details={"kek": thumbprint(public_key)}
        )
        self._sessions[token] = session
        return Answer(
            200,
            canonical_json(
                {"sessionToken": token, "tokenType": "Bearer", "expiresAt": str(expires)}
            ),
            headers=(("Cache-Control", "no-store"),),
        )

    def _mismatches(self, claims: Claims, now: datetime) -> list[str]:
        if self.release.policy is None:
            return [NO_RELEASE_POLICY]
        try:
            self.release.policy.evaluate(claims, now)
        except PolicyViolation as exc:
            return [str(m) for m in exc.mismatches] or [str(exc)]
        return []

    def _expire(self, now_ms: int) -> None:
        for challenge in [c for c, exp in self._challenges.items() if exp <= now_ms]:
            del self._challenges[challenge]
        for token in [t for t, s in self._sessions.items() if s.expires_ms <= now_ms]:
            del self._sessions[token]

    async def _authorize(
        self, request: PakvRequest, now: datetime, operation: str, key_id: str | None
    ) -> Session:
        now_ms = to_ms(now)
        self._expire(now_ms)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        session = self._sessions.get(token.strip()) if scheme.lower() == "bearer" else None
        if session is None:
            await self._record(
                "anonymous",
                operation,
                "denied",
                key_id=key_id,
                status=401,
                details={"reason": "no attested session"},
            )
            raise Unauthenticated(
                "attest first: POST " + SESSION_PATH,
                headers={"WWW-Authenticate": 'Bearer realm="pakv"'},
            )
        mismatches = self._mismatches(session.claims, now)
        if mismatches:
            await self._record(
                session.principal,
                operation,
                "denied",
                key_id=key_id,
                status=403,
                details={"mismatches": mismatches},
            )
            raise ReleaseDenied("; ".join(mismatches), extensions={"mismatches": mismatches})
        return session

    # -- private key fetch ----------------------------------------------------------------------
    async def _recent(self, request: PakvRequest, now: datetime) -> Answer:
        operation = "pakv.keys.recent"
        raw = request.query.get("maxAgeSeconds")
        max_age = _max_age(raw)
        if max_age is None:
            await self._record(
                "anonymous",
                operation,
                "invalid",
                status=400,
                details={"maxAgeSeconds": (raw or "")[:32]},
            )
            raise BadRequest(
                "maxAgeSeconds is required: a positive integer of seconds",
                extensions={"parameter": "maxAgeSeconds"},
            )
        session = await self._authorize(request, now, operation, None)
        records = recent_keys(self.keys, now, timedelta(seconds=max_age))
        records = records[: self.config.max_recent_keys]
        documents = [self._encryption_key(r, session) for r in records]
        await self._record(
            session.principal,
            operation,
            "allowed",
            status=200,
            details={
                "keys": [r.key_id for r in records],
                "maxAgeSeconds": max_age,
                "kek": thumbprint(session.public_key),
            },
        )
        return Answer(
            200, encryption_keys_body(documents), headers=(("Cache-Control", "no-store"),)
        )

    async def _by_id(self, request: PakvRequest, now: datetime) -> Answer:
        operation = "pakv.keys.get"
        key_id = request.path.removeprefix(KEY_BY_ID_PREFIX)
        if not KEY_ID_RE.fullmatch(key_id):
            await self._record(
                "anonymous", operation, "invalid", status=400, details={"id": key_id[:32]}
            )
            raise BadRequest("a key id is 16 uppercase hexadecimal characters")
        session = await self._authorize(request, now, operation, key_id)
        record = self.keys.get(key_id)
        if record is None:
            await self._record(session.principal, operation, "invalid", key_id=key_id, status=404)
            raise NotFound(f"no key {key_id}")
        document = self._encryption_key(record, session)
        await self._record(
            session.principal,
            operation,
            "allowed",
            key_id=key_id,
            status=200,
            details={"kek": thumbprint(session.public_key)},
        )
        return Answer(
            200, canonical_json(document.to_json()), headers=(("Cache-Control", "no-store"),)
        )

    def _encryption_key(self, record: KeyRecord, session: Session) -> EncryptionKey:
        material = self.keys.material(record)
        wrapped = wrap_for_client(material, session.public_key, record.key_id, WRAP_VERSION)
        signature = b64(
            self.identity.sign(public_key_signature_message(record.key_id, record.public_key))
        )
        own = KeyData(signature, kek_uri(self.kms_id, session.public_key), b64(wrapped))
        data: Sequence[KeyData] = (own,)
        if record.key_type == MULTI_PARTY and record.peer_kms_id:
            peer = KeyData("", kek_uri(record.peer_kms_id, session.public_key), "")
            data = (own, peer) if record.party == 1 else (peer, own)
        return EncryptionKey(
            key_id=record.key_id,
            key_type=record.key_type,
            public_keyset_handle=tink_public_keyset(record.public_key, record.key_id),
            public_key=record.public_key,
            creation_ms=record.creation_ms,
            activation_ms=record.activation_ms,
            expiration_ms=record.expiration_ms,
            key_data=tuple(data),
        )

    # -- audit ---------------------------------------------------------------------------
    async def _record_unaudited(self, request: PakvRequest, status: int) -> None:
        """The record of a request no handler recorded: the challenge, and refusals made
        before a handler ran (unknown path, wrong method, too large, too many, not ready,
        a crash). The HTTP/2 front end has no audit middleware, so this is its only one."""
        operation = "pakv.challenge" if request.path == CHALLENGE_PATH else "pakv.request"
        await self._record(
            "anonymous",
            operation,
            _outcome(status),
            status=status,
            details={"method": request.method[:16], "path": request.path[:256]},
        )

    async def _record(
        self,
        principal: str,
        operation: str,
        outcome: str,
        *,
        key_id: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        _AUDITED.set(True)
        try:
            await self._audit(
                principal=principal,
                operation=operation,
                outcome=outcome,
                key_id=key_id,
                status=status,
                details={
                    "kms_id": self.kms_id,
                    **({"unsafe_test_keys": True} if self.unsafe_test_keys else {}),
                    **(details or {}),
                },
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("audit record failed for %s: %s", operation, type(exc).__name__)
            raise AuditFailed() from None


def _outcome(status: int) -> Outcome:
    if status < 400:
        return "allowed"
    if status in (401, 403):
        return "denied"
    return "invalid" if status < 500 else "error"


def http_date(now: datetime) -> str:
    return format_datetime(now, usegmt=True)


def _cache_headers(now: datetime, max_age: int) -> tuple[tuple[str, str], ...]:
    return (("Date", http_date(now)), ("Cache-Control", f"max-age={max_age}"))


def _max_age(raw: str | None) -> int | None:
    # isdigit() alone accepts superscript and circled digits, which int() refuses.
    if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        return None
    value = int(raw)
    return value if 0 < value <= MAX_MAX_AGE_SECONDS else None


def _b64_field(doc: Mapping[str, Any], name: str) -> bytes:
    value = doc.get(name)
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{name} is not standard base64") from None


def _session_request(
    body: bytes,
) -> tuple[Any, bytes, tuple[bytes, ...], tuple[bytes, ...], bytes, bytes]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the body is not JSON") from None
    known = {"platform", "evidence", "certs", "collateral", "publicKey", "challenge"}
    if not isinstance(doc, dict) or set(doc) - known:
        raise BadRequest(f"the body is an object with fields {sorted(known)}")
    try:
        platform = parse_platform(str(doc.get("platform")))
    except Exception:
        raise BadRequest("platform is one of sev-snp, tdx, nitro") from None
    lists = []
    for name in ("certs", "collateral"):
        items = doc.get(name, [])
        if not isinstance(items, list) or len(items) > 16:
            raise BadRequest(f"{name} is a list of at most 16 base64 strings")
        lists.append(tuple(_b64_field({"x": i}, "x") for i in items))
    public_key = _b64_field(doc, "publicKey")
    if len(public_key) != X25519_KEY_BYTES:
        raise BadRequest("publicKey is a 32-byte X25519 public key")
    try:
        X25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise BadRequest("publicKey is not an X25519 public key") from None
    challenge = _b64_field(doc, "challenge")
    if len(challenge) != 32:
        raise BadRequest("challenge is the 32 bytes the KMS issued")
    return (platform, _b64_field(doc, "evidence"), lists[0], lists[1], public_key, challenge)
