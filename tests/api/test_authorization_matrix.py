"""Every HTTP endpoint of the KMS API, called at every access level, as the key's owner and
as others: the declared level decides; every denial is 403 ``access-denied`` problem+json,
is audited as ``denied`` under the endpoint's operation, and changes nothing stored."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from enclave.auth.access import effective_level
from enclave.kms.guard import OPERATIONS
from tests.api.conftest import PROBLEM, Api, Caller, b64

pytestmark = pytest.mark.asyncio(loop_scope="module")

Body = Callable[["Target"], Any]


@dataclass
class Target:
    key_id: str
    sign_key: str
    ciphertext: str
    signature: str
    principal_id: str


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {k}: the encrypt key, {s}: the sign key, {p}: a principal
    operation: str
    body: Body | None = None
    purpose: str = "encrypt"

    def url(self, t: Target) -> str:
        return self.path.format(k=t.key_id, s=t.sign_key, p=t.principal_id)


ENDPOINTS = [
    # key-scoped, key in the path
    Endpoint("GET", "/v1/keys/{k}", "keys.describe"),
    Endpoint("GET", "/v1/keys/{k}/grants", "grants.list"),
    Endpoint("GET", "/v1/keys/{k}/rotation", "rotation.status"),
    Endpoint("GET", "/v1/keys/{k}/events?after=0&timeout=0", "rotation.wait_for_events"),
    Endpoint("GET", "/v1/keys/{s}/public-key", "keys.get_public_key", purpose="sign"),
    Endpoint("GET", "/v1/keys/{k}/sharing", "sharing.status"),
    Endpoint("POST", "/v1/keys/{k}/consumers", "rotation.register_consumer", lambda t: {}),
    Endpoint("POST", "/v1/keys/{k}/acknowledge", "rotation.acknowledge",
             lambda t: {"version": 1}),
    Endpoint("POST", "/v1/keys/{k}/release-challenge", "keys.release", lambda t: {}),
    Endpoint("POST", "/v1/keys/{k}/release", "keys.release", lambda t: {
        "platform": "sev-snp", "evidence": b64(b"x" * 64), "client_public_key": b64(b"k" * 32),
        "challenge": b64(b"c" * 32)}),
    Endpoint("POST", "/v1/keys/{k}/enable", "keys.enable", lambda t: {}),
    Endpoint("POST", "/v1/keys/{k}/disable", "keys.disable", lambda t: {}),
    Endpoint("POST", "/v1/keys/{k}/expire", "keys.expire", lambda t: {}),
    Endpoint("POST", "/v1/keys/{k}/rotate", "keys.rotate", lambda t: {}),
    Endpoint("PUT", "/v1/keys/{k}/rotation-schedule", "keys.set_rotation",
             lambda t: {"period_days": 90}),
    Endpoint("POST", "/v1/keys/{k}/schedule-deletion", "keys.schedule_deletion",
             lambda t: {"days": 7}),
    Endpoint("POST", "/v1/keys/{k}/cancel-deletion", "keys.cancel_deletion", lambda t: {}),
    Endpoint("PUT", "/v1/keys/{k}/release-policy", "keys.set_release_policy", lambda t: {
        "policy": {"allow_simulated": True, "measurements": [{"name": "c", "value": "00" * 48}]}}),
    # key-scoped, key in the body
    Endpoint("POST", "/v1/encrypt", "keys.encrypt",
             lambda t: {"key_id": t.key_id, "plaintext": b64(b"p"), "context": {"a": "b"}}),
    Endpoint("POST", "/v1/decrypt", "keys.decrypt",
             lambda t: {"ciphertext": t.ciphertext, "context": {"a": "b"}}),
    Endpoint("POST", "/v1/datakey", "keys.generate_data_key", lambda t: {"key_id": t.key_id}),
    Endpoint("POST", "/v1/re-encrypt", "keys.re_encrypt",
             lambda t: {"ciphertext": t.ciphertext, "context": {"a": "b"}}),
    Endpoint("POST", "/v1/sign", "keys.sign",
             lambda t: {"key_id": t.sign_key, "message": b64(b"m")}, purpose="sign"),
    Endpoint("POST", "/v1/verify", "keys.verify",
             lambda t: {"key_id": t.sign_key, "message": b64(b"m"), "signature": t.signature},
             purpose="sign"),
    # system-scoped
    Endpoint("POST", "/v1/keys", "keys.create", lambda t: {"purpose": "encrypt"}),
    Endpoint("POST", "/v1/sharing", "sharing.create",
             lambda t: {"target": t.principal_id, "ttl_seconds": 60}),
    Endpoint("POST", "/v1/principals/challenge", "principals.register", lambda t: {}),
    Endpoint("POST", "/v1/principals", "principals.register", lambda t: {
        "name": "x", "kind": "service", "public_key": b64(b"k" * 32),
        "challenge": b64(b"c" * 32), "proof": b64(b"p" * 64)}),
    Endpoint("POST", "/v1/principals/onboard", "principals.onboard", lambda t: {
        "name": "x", "kind": "service", "public_key": b64(b"k" * 32),
        "challenge": b64(b"c" * 32), "proof": b64(b"p" * 64)}),
    Endpoint("POST", "/v1/principals/workloads", "principals.register_workload",
             lambda t: {"name": "w", "measurements": ["ab" * 48]}),
    Endpoint("GET", "/v1/principals/{p}", "principals.describe"),
    Endpoint("POST", "/v1/principals/{p}/disable", "principals.disable", lambda t: {}),
    Endpoint("POST", "/v1/principals/{p}/isolate", "principals.isolate", lambda t: {}),
    Endpoint("POST", "/v1/principals/{p}/enable", "principals.enable", lambda t: {}),
    Endpoint("POST", "/v1/grants", "grants.grant",
             lambda t: {"principal_id": t.principal_id, "key_id": t.key_id, "level": 1}),
    Endpoint("DELETE", "/v1/grants/{p}/{k}", "grants.revoke"),
]  # fmt: skip


@dataclass
class Cast:
    """Callers: ``owner`` (system level 3, owns the keys), ``sys[l]`` (system level l),
    ``grant[l]`` (no system level, a level-l grant on the keys), ``nobody``, the admin."""

    owner: Caller
    sys: dict[int, Caller]
    grant: dict[int, Caller]
    nobody: Caller
    victim: Caller  # the principal the principal-admin endpoints act on


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cast(api: Api) -> Cast:
    sys = {lvl: await api.new_principal(f"sys{lvl}", level=lvl) for lvl in range(4)}
    grant = {lvl: await api.new_principal(f"grant{lvl}") for lvl in range(4)}
    return Cast(sys[3], sys, grant, await api.new_principal("nobody"),
                await api.new_principal("victim"))  # fmt: skip


async def _target(api: Api, cast: Cast) -> Target:
    key_id = await api.new_key("encrypt", owner=cast.owner)
    sign_key = await api.new_key("sign", owner=cast.owner)
    for level, who in cast.grant.items():
        await api.grant(who, key_id, level)
        await api.grant(who, sign_key, level)
    body = {"key_id": key_id, "plaintext": b64(b"s"), "context": {"a": "b"}}
    sealed = await api.ok("POST", "/v1/encrypt", body, caller=cast.owner)
    signed = await api.ok("POST", "/v1/sign", {"key_id": sign_key, "message": b64(b"m")},
                          caller=cast.owner)  # fmt: skip
    return Target(key_id, sign_key, sealed["ciphertext"], signed["signature"],
                  cast.victim.principal_id)  # fmt: skip


def _denials(api: Api, operation: str) -> int:
    return sum(1 for r in api.audit_records()
               if r.operation == operation and r.outcome == "denied")  # fmt: skip


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
async def test_every_level_on_every_endpoint(api: Api, cast: Cast, endpoint: Endpoint) -> None:
    requirement = OPERATIONS[endpoint.operation]
    callers = [("nobody", cast.nobody), *[(f"sys{lvl}", c) for lvl, c in cast.sys.items()],
               *[(f"grant{lvl}", c) for lvl, c in cast.grant.items()]]  # fmt: skip
    kms = api.kms
    target = await _target(api, cast)
    key = target.sign_key if endpoint.purpose == "sign" else target.key_id
    scope_key = key if requirement.scope == "key" else None
    denied_before = _denials(api, endpoint.operation)
    denied = 0
    for label, caller in callers:
        principal = kms.principal_directory.get(caller.principal_id)
        assert principal is not None
        level = effective_level(principal, scope_key, kms.grant_directory.grants_for(principal.id))
        allowed = level is not None and level >= requirement.level
        before = api.store_digest()
        body = endpoint.body(target) if endpoint.body else None
        status, problem, ctype = await api.call(endpoint.method, endpoint.url(target), body,
                                                caller=caller)  # fmt: skip
        is_denial = status == 403 and isinstance(problem, dict) and problem.get(
            "type", "").endswith("/access-denied")  # fmt: skip
        if allowed:
            assert not is_denial, (label, status, problem)
            assert status < 500, (label, status, problem)
        else:
            assert is_denial and ctype == PROBLEM, (label, status, problem)
            assert api.store_digest() == before, f"{label}: a denied request changed the store"
            denied += 1
    assert _denials(api, endpoint.operation) - denied_before == denied
    # the administrator is allowed everywhere
    fresh = await _target(api, cast)
    body = endpoint.body(fresh) if endpoint.body else None
    status, problem, _ = await api.call(endpoint.method, endpoint.url(fresh), body)
    assert status != 403 or "access-denied" not in str(problem), problem


async def test_listing_shows_only_what_the_caller_may_view(api: Api, cast: Cast) -> None:
    mine = await api.new_key(owner=cast.owner)
    seen = {k["id"] for k in (await api.ok("GET", "/v1/keys", caller=cast.grant[0]))["keys"]}
    assert mine not in seen
    await api.grant(cast.grant[0], mine, 0)
    seen = {k["id"] for k in (await api.ok("GET", "/v1/keys", caller=cast.grant[0]))["keys"]}
    assert mine in seen
    assert (await api.ok("GET", "/v1/keys", caller=cast.nobody))["keys"] == [] or all(
        k["id"] != mine for k in (await api.ok("GET", "/v1/keys", caller=cast.nobody))["keys"]
    )


async def test_every_api_route_has_a_declaration(api: Api) -> None:
    from enclave.api.auth import API_STATE

    state = api.app[API_STATE]
    for route in api.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if any(path == p or path.startswith(p + "/") for p in state.prefixes):
            assert route.handler in state.declarations, path


async def test_a_denied_decrypt_reveals_nothing(api: Api, cast: Cast) -> None:
    target = await _target(api, cast)
    status, problem, _ = await api.call("POST", "/v1/decrypt", {
        "ciphertext": target.ciphertext, "context": {"a": "b"}}, caller=cast.nobody)  # fmt: skip
    assert status == 403
    assert "plaintext" not in problem and base64.b64encode(b"s").decode() not in str(problem)
