"""The KMS HTTP API under ``/v1``: one handler per ``KmsService`` operation.

Every route is declared with the operation it runs (``enclave.api.auth``); handlers read
the body with a size cap, parse it into a strict model (``enclave.api.schemas``), call the
service (which checks the level on the key or the system, runs, and audits), and answer
JSON built by ``enclave.api.views``. Errors become problem+json in the API middleware.

The table (level: the catalogue's, ``enclave.kms.guard.OPERATIONS``):

=======  ========================================  ===========================  =====
method   path                                      operation                    level
=======  ========================================  ===========================  =====
GET      /v1/auth/info                             (public: token parameters)   -
POST     /v1/workloads/challenge                   (public)                     -
POST     /v1/workloads/authenticate                (public: evidence)           -
POST     /v1/principals/challenge                  principals.register          4
POST     /v1/principals                            principals.register          4
POST     /v1/principals/onboard                    principals.onboard           4
POST     /v1/principals/workloads                  principals.register_workload 4
GET      /v1/principals/{id}                       principals.describe          4
POST     /v1/principals/{id}/disable|enable|isolate principals.*                4
POST     /v1/grants                                grants.grant                 4
DELETE   /v1/grants/{principal}/{key or *}         grants.revoke                4
GET      /v1/keys/{id}/grants                      grants.list                  0 key
POST     /v1/keys                                  keys.create                  3
GET      /v1/keys                                  keys.list (filter)           0 key
GET      /v1/keys/{id}                             keys.describe                0 key
POST     /v1/keys/{id}/enable|disable|expire       keys.*                       2 key
POST     /v1/keys/{id}/rotate                      keys.rotate                  2 key
PUT      /v1/keys/{id}/rotation-schedule           keys.set_rotation            2 key
POST     /v1/keys/{id}/schedule-deletion           keys.schedule_deletion       3 key
POST     /v1/keys/{id}/cancel-deletion             keys.cancel_deletion         3 key
PUT      /v1/keys/{id}/release-policy              keys.set_release_policy      3 key
GET      /v1/keys/{id}/public-key                  keys.get_public_key          0 key
GET      /v1/keys/{id}/rotation                    rotation.status              0 key
POST     /v1/keys/{id}/consumers                   rotation.register_consumer   1 key
POST     /v1/keys/{id}/acknowledge                 rotation.acknowledge         1 key
GET      /v1/keys/{id}/events?after=N&timeout=S    rotation.wait_for_events     0 key
POST     /v1/keys/{id}/release-challenge           keys.release                 1 key
POST     /v1/keys/{id}/release                     keys.release                 1 key
POST     /v1/releases/{release_id}/receipt         keys.confirm_receipt         1 key
GET      /v1/keys/{id}/sharing                     sharing.status               0 key
POST     /v1/sharing                               sharing.create               3
POST     /v1/encrypt                               keys.encrypt                 1 key
POST     /v1/decrypt                               keys.decrypt                 1 key
POST     /v1/datakey                               keys.generate_data_key       1 key
POST     /v1/re-encrypt                            keys.re_encrypt              1 both
POST     /v1/sign                                  keys.sign                    1 key
POST     /v1/verify                                keys.verify                  1 key
=======  ========================================  ===========================  =====
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from enclave.api.auth import API_STATE, ApiRoutes, ApiState, caller_of
from enclave.api.models import (
    BadInput,
    M,
    b64,
    compact_json,
    parse,
    parse_json,
    parse_query_float,
    parse_query_int,
)
from enclave.api.schemas import (
    AcknowledgeBody,
    AuthenticateWorkload,
    ConsumerBody,
    CreateKey,
    DataKeyBody,
    DecryptBody,
    Empty,
    EncryptBody,
    ExpireBody,
    GrantBody,
    KeySpec,
    OnboardPrincipal,
    ReceiptBody,
    ReEncryptBody,
    RegisterPrincipal,
    RegisterWorkload,
    ReleaseBody,
    ReleasePolicyBody,
    RotationScheduleBody,
    ScheduleDeletion,
    SharingBody,
    SignBody,
    VerifyBody,
    VersionBody,
)
from enclave.api.views import (
    event_view,
    grant_view,
    key_view,
    principal_view,
    release_record_view,
    release_view,
    rotation_view,
    sharing_view,
)
from enclave.auth.principals import Level
from enclave.auth.tokens import CNF_KEY, MAX_TOKEN_LIFETIME
from enclave.http_body import read_whole
from enclave.keys.material import Ciphertext
from enclave.keys.metadata import KEY_ID_PATTERN
from enclave.kms.rotation import MAX_WAIT_SECONDS
from enclave.kms.service import KeyRequest
from verifier.errors import InvalidPolicy
from verifier.policy import Policy

T = TypeVar("T")

PREFIXES = (
    "/v1/auth", "/v1/workloads", "/v1/principals", "/v1/grants", "/v1/keys", "/v1/releases",
    "/v1/sharing", "/v1/encrypt", "/v1/decrypt", "/v1/datakey", "/v1/re-encrypt", "/v1/sign",
    "/v1/verify",
)  # fmt: skip
# A wrap key is an AES-256-GCM key-wrapping key (data keys and key material sealed under
# it); the service's own KEKs (AES-256-KWP, in the HSM) are not made through the API.
DEFAULT_ALGORITHMS = {"encrypt": "AES-256-GCM", "sign": "ED25519", "hpke": "X25519",
                      "wrap": "AES-256-GCM"}  # fmt: skip
DEFAULT_EVENTS_TIMEOUT = 30.0
# The routes ``enclave.fastpath`` serves without aiohttp's per-request machinery: their
# handlers use only what its ``FastRequest`` offers (the app, the body, the caller the API
# middleware authenticated) and answer a ``web.Response`` with a byte body.
FAST_PATH_ROUTES = (
    ("POST", "/v1/encrypt"), ("POST", "/v1/decrypt"), ("POST", "/v1/datakey"),
    ("POST", "/v1/re-encrypt"), ("POST", "/v1/sign"), ("POST", "/v1/verify"),
)  # fmt: skip

api = ApiRoutes()


# From a handler's first read of a body to its last byte (the fast path's own framing
# holds a request to the same bound: ``enclave.fastpath.connection``).
BODY_READ_SECONDS = 30.0


# -- plumbing -----------------------------------------------------------------------------------
def _state(request: web.Request) -> ApiState:
    return request.app[API_STATE]


async def read_body(
    request: web.Request, limit: int, *, seconds: float = BODY_READ_SECONDS
) -> bytes:
    """The body, at most ``limit`` bytes (413 beyond, before reading it when declared),
    whole within ``seconds`` (408 after: a body sent slowly or never finished, which only
    aiohttp lets through, must not hold the connection)."""
    declared = request.content_length
    too_large = BadInput(f"the body is larger than {limit} bytes", slug="payload-too-large",
                         status=413)  # fmt: skip
    if declared is not None and declared > limit:
        raise too_large
    try:
        body = await read_whole(request.content, limit, declared=declared, seconds=seconds)
    except TimeoutError:
        raise BadInput(f"the body was not received within {seconds:g} s",
                       slug="request-timeout", status=408) from None  # fmt: skip
    if len(body) > limit:
        raise too_large
    return body


async def body_of(request: web.Request, model: type[M]) -> M:
    raw = await read_body(request, _state(request).body_limit)
    document: object = {} if not raw.strip() else parse_json(raw)
    return parse(model, document)


# ``json.dumps(..., separators=...)`` builds this encoder per call; one serves every answer.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def answer(body: Any, status: int = 200) -> web.Response:
    return answer_json(_COMPACT.encode(body).encode(), status)


# The headers of every JSON answer, in the order ``content_type=`` after ``headers=`` gave
# them; the response copies them, so one instance serves every answer.
_JSON_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(
    CIMultiDict((("Cache-Control", "no-store"), ("Content-Type", "application/json")))
)


def answer_json(encoded: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=encoded, headers=_JSON_HEADERS)


def _level(value: int | None) -> Level | None:
    if value is None:
        return None
    try:
        return Level(value)
    except ValueError:
        raise BadInput("a level is 0..4") from None


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{name} must be an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise BadInput(f"{name} must carry a time zone")
    return parsed


def _algorithm(purpose: str, algorithm: str | None) -> str:
    if algorithm is not None:
        return algorithm
    return DEFAULT_ALGORITHMS.get(purpose, "")


async def _audit_allowed(
    request: web.Request, operation: str, *, key_id: str | None = None
) -> None:
    """Audit a request that no service operation records (challenges)."""
    await _state(request).audit.record(
        principal=caller_of(request).id, operation=operation, outcome="allowed", status=200,
        key_id=key_id, details={"path": request.path},
    )  # fmt: skip


# -- public documents and workload authentication ---------------------------------------------
@api.add("GET", "/v1/auth/info", "public")
async def auth_info(request: web.Request) -> web.Response:
    state = _state(request)
    return answer({
        "kms_id": state.kms_id, "audience": state.kms_id, "token_algorithm": "EdDSA",
        "max_token_lifetime": MAX_TOKEN_LIFETIME, "cnf": {CNF_KEY: state.tls_spki_sha256},
    })  # fmt: skip


@api.add("POST", "/v1/workloads/challenge", "public")
async def workload_challenge(request: web.Request) -> web.Response:
    await body_of(request, Empty)
    return answer({"challenge": b64(_state(request).kms.principals.identity_challenge())})


@api.add("POST", "/v1/workloads/authenticate", "public")
async def workload_authenticate(request: web.Request) -> web.Response:
    state = _state(request)
    body = await body_of(request, AuthenticateWorkload)
    principal = await state.kms.principals.authenticate_workload(
        body.principal_id, platform=body.platform, evidence=body.evidence,
        challenge=body.challenge, certs=body.certs or (), collateral=body.collateral or (),
    )  # fmt: skip
    token, expires = state.sessions.issue(principal.id)
    return answer({"token": token, "expires_at": expires, "principal": principal_view(principal)})


# -- principals -------------------------------------------------------------------------------
@api.add("POST", "/v1/principals/challenge", "principals.register")
async def principal_challenge(request: web.Request) -> web.Response:
    await body_of(request, Empty)
    challenge = _state(request).kms.principals.identity_challenge()
    await _audit_allowed(request, "principals.challenge")
    return answer({"challenge": b64(challenge)})


@api.add("POST", "/v1/principals", "principals.register")
async def register_principal(request: web.Request) -> web.Response:
    body = await body_of(request, RegisterPrincipal)
    principal = await _state(request).kms.principals.register(
        caller_of(request), name=body.name, kind=body.kind, public_key=body.public_key,
        challenge=body.challenge, proof=body.proof, system_level=_level(body.system_level),
    )  # fmt: skip
    return answer(principal_view(principal), 201)


@api.add("POST", "/v1/principals/onboard", "principals.onboard")
async def onboard_principal(request: web.Request) -> web.Response:
    body = await body_of(request, OnboardPrincipal)
    specs = [parse(KeySpec, k) for k in body.keys or []]
    onboarded = await _state(request).kms.onboard(
        caller_of(request), name=body.name, kind=body.kind, public_key=body.public_key,
        challenge=body.challenge, proof=body.proof, system_level=_level(body.system_level),
        keys=[KeyRequest(s.purpose, _algorithm(s.purpose, s.algorithm), s.description)
              for s in specs],
    )  # fmt: skip
    return answer({"principal": principal_view(onboarded.principal),
                   "keys": [key_view(k) for k in onboarded.keys]}, 201)  # fmt: skip


@api.add("POST", "/v1/principals/workloads", "principals.register_workload")
async def register_workload(request: web.Request) -> web.Response:
    body = await body_of(request, RegisterWorkload)
    measurements = []
    for value in body.measurements:
        try:
            measurements.append(bytes.fromhex(value))
        except ValueError:
            raise BadInput("measurements are hex strings") from None
    principal = await _state(request).kms.principals.register_workload(
        caller_of(request), name=body.name, measurements=measurements,
        system_level=_level(body.system_level),
    )  # fmt: skip
    return answer(principal_view(principal), 201)


@api.add("GET", "/v1/principals/{principal_id}", "principals.describe")
async def describe_principal(request: web.Request) -> web.Response:
    principal = await _state(request).kms.principals.describe(
        caller_of(request), request.match_info["principal_id"]
    )
    return answer(principal_view(principal))


@api.add("POST", "/v1/principals/{principal_id}/disable", "principals.disable")
async def disable_principal(request: web.Request) -> web.Response:
    await body_of(request, Empty)
    kms = _state(request).kms
    p = await kms.principals.disable(caller_of(request), request.match_info["principal_id"])
    return answer(principal_view(p))


@api.add("POST", "/v1/principals/{principal_id}/enable", "principals.enable")
async def enable_principal(request: web.Request) -> web.Response:
    await body_of(request, Empty)
    kms = _state(request).kms
    p = await kms.principals.enable(caller_of(request), request.match_info["principal_id"])
    return answer(principal_view(p))


@api.add("POST", "/v1/principals/{principal_id}/isolate", "principals.isolate")
async def isolate_principal(request: web.Request) -> web.Response:
    await body_of(request, Empty)
    kms = _state(request).kms
    p = await kms.principals.isolate(caller_of(request), request.match_info["principal_id"])
    return answer(principal_view(p))


# -- grants -----------------------------------------------------------------------------------
@api.add("POST", "/v1/grants", "grants.grant")
async def grant(request: web.Request) -> web.Response:
    body = await body_of(request, GrantBody)
    level = _level(body.level)
    assert level is not None
    made = await _state(request).kms.grants.grant(
        caller_of(request), body.principal_id, body.key_id, level
    )
    return answer(grant_view(made), 201)


@api.add("DELETE", "/v1/grants/{principal_id}/{grant_key}", "grants.revoke")
async def revoke(request: web.Request) -> web.Response:
    removed = await _state(request).kms.grants.revoke(
        caller_of(request), request.match_info["principal_id"], request.match_info["grant_key"]
    )
    return answer({"revoked": removed})


@api.add("GET", "/v1/keys/{key_id}/grants", "grants.list", key="path")
async def list_grants(request: web.Request) -> web.Response:
    grants = await _state(request).kms.grants.list_for_key(
        caller_of(request), request.match_info["key_id"]
    )
    return answer({"grants": [grant_view(g) for g in grants]})


# -- keys ---------------------------------------------------------------------------------------
@api.add("POST", "/v1/keys", "keys.create")
async def create_key(request: web.Request) -> web.Response:
    body = await body_of(request, CreateKey)
    info = await _state(request).kms.keys.create(
        caller_of(request), body.purpose, _algorithm(body.purpose, body.algorithm),
        owner=body.owner, description=body.description,
        expires_at=_time(body.expires_at, "expires_at"), rotation_days=body.rotation_days,
    )  # fmt: skip
    return answer(key_view(info), 201)


@api.add("GET", "/v1/keys", "keys.list")
async def list_keys(request: web.Request) -> web.Response:
    keys = await _state(request).kms.keys.list(caller_of(request))
    return answer({"keys": [key_view(k) for k in keys]})


@api.add("GET", "/v1/keys/{key_id}", "keys.describe", key="path")
async def describe_key(request: web.Request) -> web.Response:
    info = await _state(request).kms.keys.describe(caller_of(request), request.match_info["key_id"])
    return answer(key_view(info))


@api.add("POST", "/v1/keys/{key_id}/enable", "keys.enable", key="path")
async def enable_key(request: web.Request) -> web.Response:
    body = await body_of(request, VersionBody)
    info = await _state(request).kms.keys.enable(
        caller_of(request), request.match_info["key_id"], body.version
    )
    return answer(key_view(info))


@api.add("POST", "/v1/keys/{key_id}/disable", "keys.disable", key="path")
async def disable_key(request: web.Request) -> web.Response:
    body = await body_of(request, VersionBody)
    info = await _state(request).kms.keys.disable(
        caller_of(request), request.match_info["key_id"], body.version
    )
    return answer(key_view(info))


@api.add("POST", "/v1/keys/{key_id}/expire", "keys.expire", key="path")
async def expire_key(request: web.Request) -> web.Response:
    body = await body_of(request, ExpireBody)
    info = await _state(request).kms.keys.expire(
        caller_of(request), request.match_info["key_id"], _time(body.at, "at")
    )
    return answer(key_view(info))


@api.add("POST", "/v1/keys/{key_id}/rotate", "keys.rotate", key="path")
async def rotate_key(request: web.Request) -> web.Response:
    await body_of(request, Empty)
    info = await _state(request).kms.rotation.rotate(
        caller_of(request), request.match_info["key_id"]
    )
    return answer(key_view(info))


@api.add("PUT", "/v1/keys/{key_id}/rotation-schedule", "keys.set_rotation", key="path")
async def set_rotation(request: web.Request) -> web.Response:
    body = await body_of(request, RotationScheduleBody)
    info = await _state(request).kms.keys.set_rotation(
        caller_of(request), request.match_info["key_id"], body.period_days
    )
    return answer(key_view(info))


@api.add("POST", "/v1/keys/{key_id}/schedule-deletion", "keys.schedule_deletion", key="path")
async def schedule_deletion(request: web.Request) -> web.Response:
    body = await body_of(request, ScheduleDeletion)
    info = await _state(request).kms.keys.schedule_deletion(
        caller_of(request), request.match_info["key_id"], window_days=body.days,
        version=body.version,
    )  # fmt: skip
    return answer(key_view(info))


@api.add("POST", "/v1/keys/{key_id}/cancel-deletion", "keys.cancel_deletion", key="path")
async def cancel_deletion(request: web.Request) -> web.Response:
    body = await body_of(request, VersionBody)
    info = await _state(request).kms.keys.cancel_deletion(
        caller_of(request), request.match_info["key_id"], body.version
    )
    return answer(key_view(info))


@api.add("PUT", "/v1/keys/{key_id}/release-policy", "keys.set_release_policy", key="path")
async def set_release_policy(request: web.Request) -> web.Response:
    body = await body_of(request, ReleasePolicyBody)
    try:
        policy = Policy.from_mapping(body.policy)
    except InvalidPolicy as exc:
        raise BadInput(f"the policy is invalid: {exc}"[:300]) from None
    key_id = request.match_info["key_id"]
    await _state(request).kms.distribution.set_release_policy(caller_of(request), key_id, policy)
    return answer({"key_id": key_id, "policy": policy.to_json()})


@api.add("GET", "/v1/keys/{key_id}/public-key", "keys.get_public_key", key="path")
async def public_key(request: web.Request) -> web.Response:
    version = (
        parse_query_int(request.query, "version", 0, low=1, high=1_000_000)
        if "version" in request.query else None
    )  # fmt: skip
    found = await _state(request).kms.crypto.get_public_key(
        caller_of(request), request.match_info["key_id"], version
    )
    return answer({"key_id": found.key_id, "version": found.version,
                   "algorithm": found.algorithm.value, "spki": b64(found.spki_der)})  # fmt: skip


# -- rotation -----------------------------------------------------------------------------------
@api.add("GET", "/v1/keys/{key_id}/rotation", "rotation.status", key="path")
async def rotation_status(request: web.Request) -> web.Response:
    status = await _state(request).kms.rotation.status(
        caller_of(request), request.match_info["key_id"]
    )
    return answer(rotation_view(status))


@api.add("POST", "/v1/keys/{key_id}/consumers", "rotation.register_consumer", key="path")
async def register_consumer(request: web.Request) -> web.Response:
    body = await body_of(request, ConsumerBody)
    status = await _state(request).kms.rotation.register_consumer(
        caller_of(request), request.match_info["key_id"], body.consumer
    )
    return answer(rotation_view(status))


@api.add("POST", "/v1/keys/{key_id}/acknowledge", "rotation.acknowledge", key="path")
async def acknowledge(request: web.Request) -> web.Response:
    body = await body_of(request, AcknowledgeBody)
    status = await _state(request).kms.rotation.acknowledge(
        caller_of(request), request.match_info["key_id"], body.version, body.consumer
    )
    return answer(rotation_view(status))


@api.add("GET", "/v1/keys/{key_id}/events", "rotation.wait_for_events", key="path")
async def rotation_events(request: web.Request) -> web.Response:
    after = parse_query_int(request.query, "after", 0, low=0, high=2**53)
    timeout = parse_query_float(request.query, "timeout", DEFAULT_EVENTS_TIMEOUT,
                                low=0.0, high=MAX_WAIT_SECONDS)  # fmt: skip
    events = await _state(request).kms.rotation.wait_for_events(
        caller_of(request), request.match_info["key_id"], after, timeout
    )
    last = events[-1].seq if events else after
    return answer({"events": [event_view(e) for e in events], "last_seq": last})


# -- distribution and sharing -----------------------------------------------------------------
@api.add("POST", "/v1/keys/{key_id}/release-challenge", "keys.release", key="path")
async def release_challenge(request: web.Request) -> web.Response:
    await body_of(request, Empty)
    if not KEY_ID_PATTERN.match(request.match_info["key_id"]):
        raise BadInput("a key id is key_ followed by 32 hex digits")
    challenge = _state(request).kms.distribution.release_challenge()
    await _audit_allowed(request, "keys.release_challenge", key_id=request.match_info["key_id"])
    return answer({"challenge": b64(challenge)})


@api.add("POST", "/v1/keys/{key_id}/release", "keys.release", key="path")
async def release_key(request: web.Request) -> web.Response:
    body = await body_of(request, ReleaseBody)
    released = await _state(request).kms.distribution.release_key(
        caller_of(request), request.match_info["key_id"], platform=body.platform,
        evidence=body.evidence, client_public_key=body.client_public_key,
        challenge=body.challenge, certs=body.certs or (), collateral=body.collateral or (),
    )  # fmt: skip
    return answer(release_view(released))


@api.add("POST", "/v1/releases/{release_id}/receipt", "keys.confirm_receipt", key="body")
async def confirm_receipt(request: web.Request) -> web.Response:
    body = await body_of(request, ReceiptBody)
    record = await _state(request).kms.distribution.confirm_receipt(
        caller_of(request), request.match_info["release_id"], body.proof
    )
    return answer(release_record_view(record))


@api.add("GET", "/v1/keys/{key_id}/sharing", "sharing.status", key="path")
async def sharing_status(request: web.Request) -> web.Response:
    sharing = await _state(request).kms.distribution.sharing_status(
        caller_of(request), request.match_info["key_id"]
    )
    return answer(sharing_view(sharing))


@api.add("POST", "/v1/sharing", "sharing.create")
async def create_sharing(request: web.Request) -> web.Response:
    body = await body_of(request, SharingBody)
    if not 1 <= body.ttl_seconds <= 30 * 86400:
        raise BadInput("ttl_seconds is 1..2592000")
    sharing = await _state(request).kms.distribution.create_sharing_key(
        caller_of(request), body.target, timedelta(seconds=body.ttl_seconds)
    )
    return answer(sharing_view(sharing), 201)


# -- cryptographic operations ---------------------------------------------------------------
@api.add("POST", "/v1/encrypt", "keys.encrypt", key="body")
async def encrypt(request: web.Request) -> web.Response:
    body = await body_of(request, EncryptBody)
    blob = await _state(request).kms.crypto.encrypt(
        caller_of(request), body.key_id, body.plaintext, body.context
    )
    _, version = Ciphertext.named_key_version(blob)  # the envelope the service just made
    return answer_json(
        compact_json(("key_id", body.key_id), ("version", version), ("ciphertext", blob))
    )


@api.add("POST", "/v1/decrypt", "keys.decrypt", key="body")
async def decrypt(request: web.Request) -> web.Response:
    body = await body_of(request, DecryptBody)
    plaintext = await _state(request).kms.crypto.decrypt(
        caller_of(request), body.ciphertext, body.context, key_id=body.key_id
    )
    key_id, version = Ciphertext.named_key_version(body.ciphertext)  # it opened: well formed
    return answer_json(compact_json(("key_id", key_id), ("version", version),
                                    ("plaintext", plaintext)))  # fmt: skip


@api.add("POST", "/v1/datakey", "keys.generate_data_key", key="body")
async def datakey(request: web.Request) -> web.Response:
    body = await body_of(request, DataKeyBody)
    made = await _state(request).kms.crypto.generate_data_key(
        caller_of(request), body.key_id, body.context, include_plaintext=body.plaintext,
        length=body.length,
    )  # fmt: skip
    out: list[tuple[str, str | int | bytes]] = [("key_id", made.key_id),
                                                ("version", made.version),
                                                ("ciphertext", made.wrapped)]  # fmt: skip
    if made.plaintext is not None:
        out.append(("plaintext", made.plaintext))
    return answer_json(compact_json(*out))


@api.add("POST", "/v1/re-encrypt", "keys.re_encrypt", key="body")
async def re_encrypt(request: web.Request) -> web.Response:
    body = await body_of(request, ReEncryptBody)
    blob = await _state(request).kms.crypto.re_encrypt(
        caller_of(request), body.ciphertext, body.context,
        destination_key_id=body.destination_key_id, destination_context=body.destination_context,
    )  # fmt: skip
    key_id, version = Ciphertext.named_key_version(blob)  # the envelope the service made
    return answer_json(compact_json(("key_id", key_id), ("version", version),
                                    ("ciphertext", blob)))  # fmt: skip


@api.add("POST", "/v1/sign", "keys.sign", key="body")
async def sign(request: web.Request) -> web.Response:
    body = await body_of(request, SignBody)
    signed = await _state(request).kms.crypto.sign(caller_of(request), body.key_id, body.message)
    return answer_json(compact_json(
        ("key_id", signed.key_id), ("version", signed.version),
        ("algorithm", signed.algorithm.value), ("signature", signed.signature),
    ))  # fmt: skip


@api.add("POST", "/v1/verify", "keys.verify", key="body")
async def verify(request: web.Request) -> web.Response:
    body = await body_of(request, VerifyBody)
    valid = await _state(request).kms.crypto.verify(
        caller_of(request), body.key_id, body.message, body.signature, version=body.version
    )
    return answer({"key_id": body.key_id, "valid": valid})
