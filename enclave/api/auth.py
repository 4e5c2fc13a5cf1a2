"""Authentication and the default-deny gate of the KMS HTTP API.

Every API route is added through ``ApiRoutes.add`` with a ``Declaration``: the operation of
``enclave.kms.guard.OPERATIONS`` it runs (so its level and scope are the catalogue's), or
``PUBLIC`` for the few documents anyone may read (attestation, health, the token
parameters, the workload challenge). ``api_middleware`` then, for each request:

1. finds the route's declaration; a request under the API's prefixes that reaches a route
   without one is refused (403, audited): denial is the default;
2. authenticates the ``Authorization: Bearer`` token: a principal's EdDSA request token
   (``enclave.auth.tokens.TokenAuthenticator``: audience = this KMS's ``kms_id``, ``cnf`` =
   this enclave's attested TLS key, at most 5 minutes) or a workload session issued here
   after attested evidence (``WorkloadSessions``). Any failure is 401, audited as denied;
3. when the declaration's scope can be checked before the body is read (system scope, or
   the key named in the path), checks the caller's level (403, audited as denied);
4. runs the handler; a malformed request found before the service ran (bad JSON, wrong
   types, unknown fields, bad base64, too large) is audited as invalid here, since the
   service never saw it. Everything the service refuses it has already audited itself.

Every error answer is problem+json (``enclave.api.errors``).

Must never: let a request under the API's prefixes reach a handler without a declaration,
answer before a refusal's audit record is durable, or log a token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from aiohttp import web

from enclave.api.errors import problem_for, unauthenticated
from enclave.api.models import BadInput
from enclave.audit.log import AuditLog
from enclave.auth.principals import Principal, PrincipalDirectory
from enclave.auth.tokens import (
    CLOCK_LEEWAY,
    CNF_KEY,
    MAX_TOKEN_BYTES,
    MAX_TOKEN_LIFETIME,
    AuthenticationError,
    TokenAuthenticator,
    spki_thumbprint,
)
from enclave.kms.guard import OPERATIONS
from enclave.kms.service import KmsService
from enclave.problems import Handler

log = logging.getLogger("enclave.api")

PUBLIC = "public"
ANONYMOUS = "anonymous"
SESSION_KID = "kms-workload-session"
WORKLOAD_SESSION_SECONDS = 300
# Where the request's key id is, when the gate can check it before the handler runs.
KeySource = Literal["path", "body", "none"]


@dataclass(frozen=True)
class Declaration:
    """What a route requires: ``operation`` (a key of ``OPERATIONS``, or ``PUBLIC``) and
    where the key it acts on is named."""

    operation: str
    key: KeySource = "none"

    def __post_init__(self) -> None:
        if self.operation != PUBLIC and self.operation not in OPERATIONS:
            raise ValueError(f"{self.operation!r} is not a declared operation")
        if self.operation != PUBLIC:
            scope = OPERATIONS[self.operation].scope
            if scope == "key" and self.key == "none" and self.operation != "keys.list":
                raise ValueError(f"{self.operation} is key-scoped: say where the key is")

    @property
    def public(self) -> bool:
        return self.operation == PUBLIC


class WorkloadSessions:
    """Bearer tokens for workloads that proved themselves with evidence (HS256, a key that
    lives and dies with this process, bound like request tokens to audience and TLS key)."""

    def __init__(self, *, audience: str, tls_spki_der: bytes, clock: Callable[[], float]) -> None:
        self._key = secrets.token_bytes(32)
        self._audience = audience
        self._thumbprint = spki_thumbprint(tls_spki_der)
        self._clock = clock

    def issue(self, principal_id: str) -> tuple[str, int]:
        now = int(self._clock())
        expires = now + WORKLOAD_SESSION_SECONDS
        claims = {"iss": self._audience, "sub": principal_id, "aud": self._audience,
                  "iat": now, "exp": expires, "cnf": {CNF_KEY: self._thumbprint}}  # fmt: skip
        token = jwt.encode(claims, self._key, algorithm="HS256", headers={"kid": SESSION_KID})
        return token, expires

    def verify(self, token: str) -> str:
        try:
            claims = jwt.decode(
                token, self._key, algorithms=["HS256"], audience=self._audience,
                options={"require": ["exp", "iat", "sub", "aud"]}, leeway=CLOCK_LEEWAY,
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("session has expired", "expired-token") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("session is for another KMS", "wrong-audience") from None
        except jwt.InvalidTokenError:
            raise AuthenticationError("session token is invalid", "invalid-token") from None
        cnf = claims.get("cnf")
        if not isinstance(cnf, dict) or cnf.get(CNF_KEY) != self._thumbprint:
            raise AuthenticationError("session is bound to another TLS key", "wrong-tls-key")
        if claims["exp"] - claims["iat"] > MAX_TOKEN_LIFETIME:
            raise AuthenticationError("session lifetime is too long", "token-lifetime-too-long")
        return str(claims["sub"])


@dataclass
class ApiState:
    """The API's per-application state (``API_STATE``)."""

    kms: KmsService
    audit: AuditLog
    authenticator: TokenAuthenticator
    sessions: WorkloadSessions
    principals: PrincipalDirectory
    kms_id: str
    tls_spki_sha256: str
    body_limit: int
    declarations: dict[Callable[..., Any], Declaration] = field(default_factory=dict)
    prefixes: tuple[str, ...] = ()


API_STATE = web.AppKey("kms_api_state", ApiState)
CALLER_KEY = web.RequestKey("kms_api_caller", Principal)


def caller_of(request: web.Request) -> Principal:
    """The authenticated principal of a declared, non-public request."""
    principal = request.get(CALLER_KEY)
    if not isinstance(principal, Principal):  # unreachable behind api_middleware
        raise unauthenticated("the request is not authenticated")
    return principal


RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ApiRoutes:
    """A route table whose every entry carries its ``Declaration``."""

    entries: list[tuple[str, str, RouteHandler, Declaration]] = field(default_factory=list)

    def add(
        self, method: str, path: str, operation: str, *, key: KeySource = "none"
    ) -> Callable[[RouteHandler], RouteHandler]:
        declaration = Declaration(operation, key)

        def register(handler: RouteHandler) -> RouteHandler:
            self.entries.append((method, path, handler, declaration))
            return handler

        return register

    def install(
        self, app: web.Application, declarations: dict[Callable[..., Any], Declaration]
    ) -> None:
        for method, path, handler, declaration in self.entries:
            if handler in declarations:
                raise ValueError(f"{handler.__name__} is routed twice")
            declarations[handler] = declaration
            app.router.add_route(method, path, handler)


def _bearer(request: web.Request) -> str:
    values = request.headers.getall("Authorization", [])
    if not values:
        raise unauthenticated("an Authorization: Bearer token is required")
    if len(values) != 1:
        raise AuthenticationError("one Authorization header only", "invalid-token")
    scheme, _, token = values[0].partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("the Authorization scheme must be Bearer", "invalid-token")
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthenticationError("token is too large", "invalid-token")
    if not token.isascii():  # a JWT is base64url and dots; other bytes arrive as surrogates
        raise AuthenticationError("token is not a JWT", "invalid-token")
    return token


def authenticate(state: ApiState, request: web.Request) -> Principal:
    token = _bearer(request)
    if _header_kid(token) == SESSION_KID:
        principal_id = state.sessions.verify(token)
        principal = state.principals.get(principal_id)
        if principal is None or not principal.active or principal.kind != "workload":
            raise AuthenticationError("workload is disabled or unknown", "unknown-principal")
        return principal
    return state.authenticator.principal(token)


# Header segment -> its kid. Every token of one signer shares one header segment, so this
# stays tiny; it is a pure function of the segment, bounded and cleared when full.
_KID_CACHE: dict[str, object] = {}
MAX_KID_CACHE = 256


def _header_kid(token: str) -> object:
    """The ``kid`` of a JWT's header, cheaply (the full checks follow in the verifier; this
    only picks which verifier). None when the header does not decode."""
    # ``token.split(".", 1)[0]``, without copying the rest of the token into a list.
    end = token.find(".")
    head = token if end < 0 else token[:end]
    try:
        return _KID_CACHE[head]
    except KeyError:
        pass
    try:
        document = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, UnicodeDecodeError):
        kid: object = None
    else:
        kid = document.get("kid") if isinstance(document, dict) else None
    if not isinstance(kid, str | None):
        return kid  # an odd kid (a number, an object): answered, not cached
    if len(_KID_CACHE) >= MAX_KID_CACHE:
        _KID_CACHE.clear()
    _KID_CACHE[head] = kid
    return kid


async def _audit_refusal(
    state: ApiState,
    request: web.Request,
    *,
    principal: str,
    operation: str,
    outcome: Literal["denied", "invalid"],
    status: int,
    error: str,
    key_id: str | None = None,
) -> None:
    details: dict[str, Any] = {"error": error, "method": request.method, "path": request.path[:256]}
    await state.audit.record(
        principal=principal, operation=operation, outcome=outcome, status=status,
        key_id=key_id, details=details,
    )  # fmt: skip


def _path_key(request: web.Request) -> str | None:
    return request.match_info.get("key_id")


async def _answer_error(
    state: ApiState,
    request: web.Request,
    exc: Exception,
    *,
    principal: str,
    operation: str,
    audit_it: bool,
) -> web.StreamResponse:
    problem = problem_for(exc)
    if problem is None:
        raise exc
    if audit_it:
        outcome: Literal["denied", "invalid"] = (
            "denied" if problem.status in (401, 403) else "invalid"
        )
        try:
            await _audit_refusal(
                state, request, principal=principal, operation=operation, outcome=outcome,
                status=problem.status, error=problem.slug, key_id=_path_key(request),
            )  # fmt: skip
        except Exception as audit_exc:  # fail closed: no answer but "unavailable"
            unavailable = problem_for(audit_exc)
            if unavailable is None:
                raise
            return unavailable.response(request.path)
    return problem.response(request.path)


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app.get(API_STATE)
    route = request.match_info.route
    declaration = None if state is None else state.declarations.get(route.handler)
    if state is None or (declaration is None and not _under(request.path, state.prefixes)):
        return await handler(request)  # not an API route (another feature's, or health)
    if declaration is not None and declaration.public:
        try:
            return await handler(request)
        except (BadInput, AuthenticationError) as exc:
            return await _answer_error(state, request, exc, principal=ANONYMOUS,
                                       operation="api.public", audit_it=True)  # fmt: skip
        except Exception as exc:  # the service audited its own refusals
            return await _answer_error(state, request, exc, principal=ANONYMOUS,
                                       operation="api.public", audit_it=False)  # fmt: skip
    operation = declaration.operation if declaration is not None else "api.unrouted"
    try:
        caller = authenticate(state, request)
    except AuthenticationError as exc:
        return await _answer_error(state, request, exc, principal=ANONYMOUS,
                                   operation=operation, audit_it=True)  # fmt: skip
    if declaration is None:
        if request.match_info.http_exception is None:
            # A route under the API without a declaration: refused, whatever it is.
            from enclave.auth.access import AccessDenied

            denial = AccessDenied("this route declares no access level; denied by default")
            return await _answer_error(state, request, denial, principal=caller.id,
                                       operation=operation, audit_it=True)  # fmt: skip
        # Unknown path or method under the API: the router's 404/405, audited as invalid.
        exc_http = request.match_info.http_exception
        await _audit_refusal(state, request, principal=caller.id, operation=operation,
                             outcome="invalid", status=exc_http.status,
                             error="no-such-route")  # fmt: skip
        raise exc_http
    request[CALLER_KEY] = caller
    requirement = OPERATIONS[declaration.operation]
    if requirement.scope == "system" or declaration.key == "path":
        key_id = _path_key(request) if requirement.scope == "key" else None
        try:
            state.kms.guard.require(caller, declaration.operation, key_id)
        except Exception as exc:
            return await _answer_error(state, request, exc, principal=caller.id,
                                       operation=operation, audit_it=True)  # fmt: skip
    try:
        return await handler(request)
    except BadInput as exc:  # refused before the service saw it: audit here
        return await _answer_error(state, request, exc, principal=caller.id,
                                   operation=operation, audit_it=True)  # fmt: skip
    except Exception as exc:  # the service audited its own refusals
        return await _answer_error(state, request, exc, principal=caller.id,
                                   operation=operation, audit_it=False)  # fmt: skip


def request_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def now() -> float:
    return time.time()
