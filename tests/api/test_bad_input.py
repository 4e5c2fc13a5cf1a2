"""Bad input and bad credentials: the right 4xx problem+json, an audit record, nothing changed."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.api.conftest import PROBLEM, Api, b64

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _slug(problem: object) -> str:
    assert isinstance(problem, dict)
    return str(problem["type"]).rsplit("/", 1)[-1]


async def _expect(
    api: Api, status: int, slug: str, method: str, path: str, body: object = None,
    **kwargs: object,
) -> None:  # fmt: skip
    before = api.store_digest()
    records = len(api.audit_records())
    got, problem, ctype = await api.call(method, path, body, **kwargs)  # type: ignore[arg-type]
    assert (got, ctype) == (status, PROBLEM), (got, problem)
    assert _slug(problem) == slug, problem
    assert isinstance(problem, dict) and problem["status"] == status and problem["title"]
    assert api.store_digest() == before
    new = api.audit_records()[records:]
    assert new, "the refusal was not audited"
    outcome = "denied" if status in (401, 403) else "invalid"
    assert any(r.outcome == outcome for r in new), [(r.operation, r.outcome) for r in new]


@pytest.fixture(scope="module")
def key_holder() -> dict[str, str]:
    return {}


async def _key(api: Api, holder: dict[str, str]) -> str:
    if "key" not in holder:
        holder["key"] = await api.new_key()
    return holder["key"]


@pytest.mark.parametrize(
    ("raw", "slug"),
    [
        (b"{not json", "malformed-json"),
        (b'{"key_id": "k", "plaintext": "aGk=",}', "malformed-json"),
        (b"\xff\xfe", "malformed-json"),
        (b'{"key_id": NaN, "plaintext": "aGk="}', "malformed-json"),
        (b"[1, 2]", "invalid-request"),
        (b'"text"', "invalid-request"),
        (b"[" * 10000 + b"]" * 10000, "malformed-json"),
        (b'{"key_id": "k", "plaintext": "aGk=", "context": ' + b'{"a":' * 40 + b'"b"' + b"}" * 41,
         "malformed-json"),
        (b"[" * 20000, "malformed-json"),  # within the fast path's body limit
        (b'{"key_id": "k", "plaintext": "aGk=", "context": {"a": "\\ud800"}}', "malformed-json"),
        (b'{"key_id": "k", "plaintext": "aGk=", "\\udc00": 1}', "malformed-json"),
    ],
    ids=["garbage", "trailing-comma", "not-utf8", "nan", "array", "string", "deep-array",
         "deep-object", "deep-unterminated", "lone-surrogate", "lone-surrogate-name"],
)  # fmt: skip
async def test_malformed_json_is_400(api: Api, raw: bytes, slug: str) -> None:
    await _expect(api, 400, slug, "POST", "/v1/encrypt", raw=raw)


@pytest.mark.parametrize(
    ("body", "slug"),
    [
        ({"plaintext": "aGk="}, "missing-field"),
        ({"key_id": 5, "plaintext": "aGk="}, "wrong-type"),
        ({"key_id": "K", "plaintext": 5}, "wrong-type"),
        ({"key_id": "K", "plaintext": "aGk=", "context": ["a"]}, "wrong-type"),
        ({"key_id": "K", "plaintext": "aGk=", "context": {"a": 1}}, "wrong-type"),
        ({"key_id": "K", "plaintext": "aGk=", "extra": 1}, "unknown-field"),
        ({"key_id": "K", "plaintext": "not base64!"}, "invalid-base64"),
        ({"key_id": "K", "plaintext": "aGk"}, "invalid-base64"),
        ({"key_id": "K", "plaintext": "aGk=", "context": None, "Key_id": "x"}, "unknown-field"),
    ],
    ids=[
        "missing",
        "id-number",
        "plaintext-number",
        "context-list",
        "context-int",
        "unknown",
        "bad-b64",
        "unpadded-b64",
        "case",
    ],
)
async def test_bad_fields_are_400(
    api: Api, key_holder: dict[str, str], body: dict[str, object], slug: str
) -> None:
    key_id = await _key(api, key_holder)
    document = {k: (key_id if v == "K" else v) for k, v in body.items()}
    await _expect(api, 400, slug, "POST", "/v1/encrypt", document)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/datakey", {"key_id": "K", "plaintext": 1}),
        ("/v1/datakey", {"key_id": "K", "length": True}),
        ("/v1/keys/K/schedule-deletion", {"days": "7"}),
        ("/v1/keys/K/schedule-deletion", {"days": 7.5}),
        ("/v1/keys", {"purpose": "encrypt", "rotation_days": "30"}),
        ("/v1/grants", {"principal_id": "p", "key_id": "K", "level": "1"}),
    ],
    ids=[
        "datakey-bool",
        "length-bool",
        "days-string",
        "days-float",
        "rotation-string",
        "level-string",
    ],
)
async def test_wrong_types_elsewhere_are_400(
    api: Api, key_holder: dict[str, str], path: str, body: dict[str, object]
) -> None:
    key_id = await _key(api, key_holder)
    document = {k: (key_id if v == "K" else v) for k, v in body.items()}
    await _expect(api, 400, "wrong-type", "POST", path.replace("K", key_id), document)


async def test_deletion_window_out_of_range_is_400(api: Api, key_holder: dict[str, str]) -> None:
    key_id = await _key(api, key_holder)
    for days in (6, 31, 0, -1, 2**63, 10**400, -(10**30)):  # huge: once a 500 (overflow)
        await _expect(api, 400, "invalid-request", "POST", f"/v1/keys/{key_id}/schedule-deletion",
                      {"days": days})  # fmt: skip


async def test_a_lone_surrogate_is_refused_before_it_reaches_the_audit_log(api: Api) -> None:
    # Public, and audited with what it names: a string UTF-8 cannot carry once stopped the
    # audit writer, and with it every later request.
    body = b'{"principal_id": "\\ud800", "platform": "sev-snp", "evidence": "", "challenge": ""}'
    await _expect(api, 400, "malformed-json", "POST", "/v1/workloads/authenticate", raw=body)
    await _expect(api, 404, "not-found", "GET", "/v1/keys/key_" + "0" * 32)


async def test_a_refused_workload_authentication_is_a_4xx_not_a_500(api: Api) -> None:
    # A public route: the service's typed refusals (audited by the service) once escaped as 500.
    body = {"principal_id": "prn_" + "0" * 24, "platform": "sev-snp",
            "evidence": b64(b"e" * 32), "challenge": b64(b"c" * 32)}  # fmt: skip
    await _expect(api, 403, "release-refused", "POST", "/v1/workloads/authenticate", body)


async def test_oversized_bodies_are_413(api: Api, key_holder: dict[str, str]) -> None:
    key_id = await _key(api, key_holder)
    big = json.dumps({"key_id": key_id, "plaintext": b64(b"x" * (1024 * 1024))}).encode()
    await _expect(api, 413, "payload-too-large", "POST", "/v1/encrypt", raw=big)
    await _expect(api, 413, "payload-too-large", "POST", "/v1/encrypt",
                  raw=b"{" + b" " * (4 * 1024 * 1024) + b"}")  # fmt: skip


async def test_unknown_key_and_route(api: Api) -> None:
    await _expect(api, 404, "not-found", "GET", "/v1/keys/key_" + "0" * 32)
    await _expect(api, 400, "invalid-request", "GET", "/v1/keys/not-a-key")
    await _expect(api, 404, "not-found", "GET", "/v1/keys/key_" + "0" * 32 + "/nothing")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("DELETE", "/v1/grants/not-a-principal/*", None),
     ("DELETE", "/v1/grants/prn_" + "0" * 24 + "/not-a-key", None),
     ("POST", "/v1/keys/not-a-key/release-challenge", {}),
     ("GET", "/v1/keys/key_" + "0" * 32 + "%0A", None)],
    ids=["revoke-principal", "revoke-key", "release-challenge", "final-newline"],
)  # fmt: skip
async def test_a_malformed_id_in_the_path_is_400(
    api: Api, method: str, path: str, body: object
) -> None:
    # The first three were answered 200 (nothing revoked; a challenge issued).
    await _expect(api, 400, "invalid-request", method, path, body)


@pytest.mark.parametrize("odd", ["%00", "x" * 600], ids=["nul", "too-long"])
@pytest.mark.parametrize(
    ("method", "template"),
    [("GET", "/v1/keys/{}/rotation"), ("POST", "/v1/principals/{}/disable"),
     ("DELETE", "/v1/grants/{}/{}")],
    ids=["rotation", "disable", "revoke"],
)  # fmt: skip
async def test_an_id_the_store_cannot_hold_is_400(
    api: Api, odd: str, method: str, template: str
) -> None:
    # The store refuses such an id as a malformed record id; that was a 503.
    body = {} if method == "POST" else None
    await _expect(api, 400, "invalid-request", method, template.format(odd, odd), body)


@pytest.mark.parametrize(
    ("raw", "status", "slug"),
    [(b"[" * 10000 + b"]" * 10000, 400, "malformed-json"),
     (b'{"operation": "\\ud800"}', 400, "malformed-json"),
     (b"\xef\xbb\xbf{}", 400, "malformed-json"),
     (b'{"operation": "x", "ttl_seconds": NaN}', 400, "malformed-json"),
     (b"{" + b" " * (300 * 1024) + b"}", 413, "payload-too-large")],
    ids=["deep", "lone-surrogate", "bom", "nan", "too-large"],
)  # fmt: skip
@pytest.mark.parametrize(
    "path",
    ["/v1/governance/proposals", "/v1/governance/proposals/prop_x/approvals",
     "/v1/backup/restore/shares"],
    ids=["propose", "approve", "share"],
)  # fmt: skip
async def test_governance_bodies_are_refused_like_the_api_s(
    api: Api, path: str, raw: bytes, status: int, slug: str
) -> None:
    # They were parsed with json.loads: a deep body and an oversized one were 500s.
    await _expect(api, status, slug, "POST", path, raw=raw)


@pytest.mark.parametrize("ttl", [8 * 86400, 2**63, 10**400])
async def test_a_proposal_ttl_beyond_the_limit_is_400(api: Api, ttl: int) -> None:
    # A huge one overflowed timedelta: 500.
    await _expect(api, 400, "invalid-proposal", "POST", "/v1/governance/proposals",
                  {"operation": "master_key.rotate", "ttl_seconds": ttl})  # fmt: skip


@pytest.mark.parametrize(
    "query",
    ["end=0001-01-01T00:00:00Z", "start=0001-01-01T00:00:00%2B01:00", "format=xml",
     "start=garbage", "start=2026-01-01T00:00:00"],
    ids=["end-overflow", "start-overflow", "format", "garbage", "no-zone"],
)  # fmt: skip
async def test_a_bad_report_query_is_400_and_audited_as_invalid(api: Api, query: str) -> None:
    # The first two were 500s (overflow); every one was audited as an allowed read.
    await _expect(api, 400, "bad-request", "GET", f"/v1/reports/compliance?{query}")
    assert api.audit_records()[-1].outcome == "invalid"


# -- credentials ---------------------------------------------------------------------------------
async def test_missing_or_malformed_authorization_is_401(api: Api) -> None:
    for value in ("", "Basic abc", "Bearer not.a.jwt", "Bearer ", "Bearer " + "a" * 5000):
        await _expect(api, 401, "invalid-token", "GET", "/v1/keys",
                      headers={"Authorization": value})  # fmt: skip
    async with api.client.get("/v1/keys") as response:  # no header at all
        assert response.status == 401 and response.content_type == PROBLEM
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("token", [b"t\xf6k.en.x", b"\xff", b"\xc3\xa9"], ids=repr)
async def test_a_token_that_is_not_ascii_is_401(api: Api, token: bytes) -> None:
    # Sent as raw bytes (a client encodes text headers as UTF-8): aiohttp gives a byte that
    # is not UTF-8 to the token check as a lone surrogate, which once answered 500.
    before, records = api.store_digest(), len(api.audit_records())
    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /v1/keys HTTP/1.1\r\nHost: kms\r\nConnection: close\r\n"
                 b"Authorization: Bearer " + token + b"\r\n\r\n")  # fmt: skip
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert b"content-type: application/problem+json" in head.lower()
    assert _slug(json.loads(body)) == "invalid-token"
    assert api.store_digest() == before
    assert [r.outcome for r in api.audit_records()[records:]] == ["denied"]


async def test_bad_tokens_are_401(api: Api) -> None:
    other_tls = (
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    now = time.time()
    cases = [
        ("expired-token", api.token(api.admin, now=now - 1000, lifetime=60)),
        ("wrong-audience", api.token(api.admin, audience="kms_another")),
        ("wrong-audience", api.token(api.admin, audience=[api.kms_id, "kms_another"])),
        ("wrong-tls-key", api.token(api.admin, tls_spki_der=other_tls)),
        ("token-lifetime-too-long", api.token(api.admin, lifetime=3600)),
        ("invalid-token", api.token(api.admin, key=Ed25519PrivateKey.generate())),
        ("unknown-principal", api.token(api.admin, principal_id="prn_" + "0" * 24)),
        ("invalid-token", api.token(api.admin, now=now + 600, lifetime=60)),  # not yet valid
    ]
    for slug, token in cases:
        await _expect(api, 401, slug, "GET", "/v1/keys", token=token)


async def test_a_refused_token_changes_nothing_on_a_write(api: Api) -> None:
    token = api.token(api.admin, audience="kms_another")
    await _expect(api, 401, "wrong-audience", "POST", "/v1/keys", {"purpose": "encrypt"},
                  token=token)  # fmt: skip


async def test_public_documents_need_no_token(api: Api) -> None:
    for path in ("/healthz", "/readyz", "/v1/auth/info"):
        async with api.client.get(path) as response:
            assert response.status == 200, path
