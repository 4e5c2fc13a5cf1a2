"""The remote verifier endpoint: happy path + token, problem+json for every client mistake,
hostile bodies, and a property test that no body ever gets a 5xx."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verifier.cli import main
from verifier.errors import UsageError
from verifier.roots import TrustRoots
from verifier.server import ISSUER_KEY, ServerConfig, create_app, parse_listen
from verifier.token import InvalidResultToken, verify_result_token

SNP = Path(__file__).resolve().parents[1] / "vectors" / "sev-snp"
VIRTEE_REPORT = bytes.fromhex((SNP / "virtee_milan_v2_report.hex").read_text())
VIRTEE_VCEK = (SNP / "virtee_milan_v2_vcek.der").read_bytes()
VIRTEE_MEASUREMENT = (
    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
    "3e1a0dc39b2c60bd95b9c480cd81841f"
)
GOSEV_REPORT = (SNP / "gosevguest_milan_v2_report.bin").read_bytes()
GOSEV_VCEK = (SNP / "gosevguest_milan_v2_vcek.der").read_bytes()
NOW = datetime(2026, 1, 1, tzinfo=UTC)
PROBLEMS = "https://enclave-kms.dev/problems/"

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def virtee_body(**extra: Any) -> dict[str, Any]:
    return {"platform": "sev-snp", "evidence": b64(VIRTEE_REPORT), "certs": [b64(VIRTEE_VCEK)]} | (
        extra
    )


def config(**overrides: Any) -> ServerConfig:
    return ServerConfig(roots=TrustRoots.production(), clock=lambda: NOW, **overrides)


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> Client:
    return await aiohttp_client(create_app(config()))


async def assert_problem(
    response: Any, status: int, problem_type: str | None = None
) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body = await response.json(content_type=None)
    assert body["status"] == status
    assert body["type"].startswith(PROBLEMS)
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str)
    if problem_type is not None:
        assert body["type"] == PROBLEMS + problem_type
    return body  # type: ignore[no-any-return]


async def assert_healthy(client: Client) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"


# --- happy path ---------------------------------------------------------------------------


async def test_accepted_evidence_gets_claims_and_a_token_that_verifies(client: Client) -> None:
    pytest.importorskip("verifier.snp.verify")
    response = await client.post("/v1/attest", json=virtee_body(nonce="00ff" * 16))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["claims"]["measurement"] == VIRTEE_MEASUREMENT
    assert body["claims"]["debug"] is False

    jwks = await (await client.get("/.well-known/jwks.json")).json()
    [key] = jwks["keys"]
    assert key["kid"] and key["alg"] == "ES256"
    import jwt

    assert jwt.get_unverified_header(body["token"])["kid"] == key["kid"]
    result = verify_result_token(body["token"], jwks, now=NOW, nonce="00ff" * 16)
    assert result.verdict == "affirming"
    assert result.platform == "sev-snp"
    assert result.measurement.hex() == VIRTEE_MEASUREMENT
    assert result.report_data.hex() == body["claims"]["report_data"]
    assert result.debug is False
    assert result.nonce == "00ff" * 16
    assert result.policy_digest is None
    assert result.tcb["reported_tcb"]["snp"] == 8
    assert 0 < (result.expires_at - result.issued_at).total_seconds() <= 300
    assert result.raw["iss"] == "kms-verifier"

    with pytest.raises(InvalidResultToken):
        verify_result_token(body["token"], jwks, now=NOW, nonce="11" * 32)


async def test_debug_evidence_without_policy_is_accepted_and_flagged(client: Client) -> None:
    pytest.importorskip("verifier.snp.verify")
    body = {"platform": "sev-snp", "evidence": b64(GOSEV_REPORT), "certs": [b64(GOSEV_VCEK)]}
    response = await client.post("/v1/attest", json=body)
    assert response.status == 200
    document = await response.json()
    assert document["claims"]["debug"] is True
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    assert verify_result_token(document["token"], jwks, now=NOW).debug is True


async def test_policy_forbids_debug(client: Client) -> None:
    pytest.importorskip("verifier.snp.validate")
    body = {
        "platform": "sev-snp",
        "evidence": b64(GOSEV_REPORT),
        "certs": [b64(GOSEV_VCEK)],
        "policy": {"platform": "sev-snp"},
    }
    problem = await assert_problem(await client.post("/v1/attest", json=body), 422)
    assert problem["type"] == PROBLEMS + "policy-violation"
    assert {"field": "debug", "seen": "true", "expected": "false"} in problem["mismatches"]


async def test_policy_digest_goes_into_the_token(client: Client) -> None:
    pytest.importorskip("verifier.snp.validate")
    policy = {"platform": "sev-snp", "measurements": [{"name": "v1", "value": VIRTEE_MEASUREMENT}]}
    response = await client.post("/v1/attest", json=virtee_body(policy=policy))
    assert response.status == 200, await response.text()
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    result = verify_result_token((await response.json())["token"], jwks, now=NOW)
    assert result.policy_digest is not None and result.policy_digest.startswith("sha256:")


async def test_old_evidence_checked_at_given_time(client: Client) -> None:
    pytest.importorskip("verifier.snp.verify")
    response = await client.post("/v1/attest", json=virtee_body(at="2031-01-01T00:00:00Z"))
    problem = await assert_problem(response, 422, "expired")
    assert "SEV-VCEK" in problem["detail"] or problem["detail"]
    response = await client.post("/v1/attest", json=virtee_body(at="2024-01-01T00:00:00Z"))
    assert response.status == 200


async def test_rejected_evidence_is_422(client: Client) -> None:
    pytest.importorskip("verifier.snp.verify")
    tampered = (SNP / "negative" / "virtee_milan_v2_report_tampered.bin").read_bytes()
    response = await client.post("/v1/attest", json=virtee_body(evidence=b64(tampered)))
    await assert_problem(response, 422, "bad-signature")
    response = await client.post("/v1/attest", json=virtee_body(certs=[]))
    await assert_problem(response, 422, "missing-certificate")
    response = await client.post("/v1/attest", json=virtee_body(evidence=b64(b"\x00" * 7)))
    await assert_problem(response, 422)


async def test_signing_key_from_pem(aiohttp_client: ClientFactory) -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    app = create_app(config(signing_key_pem=pem, issuer="https://verifier.example"))
    client = await aiohttp_client(app)
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    assert jwks["keys"][0]["alg"] == "EdDSA"
    assert jwks["keys"][0]["kid"] == app[ISSUER_KEY].kid
    pytest.importorskip("verifier.snp.verify")
    response = await client.post("/v1/attest", json=virtee_body())
    token = (await response.json())["token"]
    result = verify_result_token(token, jwks, now=NOW, issuer="https://verifier.example")
    assert result.measurement.hex() == VIRTEE_MEASUREMENT


async def test_busy_verifier_answers_503(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_app(config(max_pending_verifications=0)))
    response = await client.post("/v1/attest", json=virtee_body())
    await assert_problem(response, 503, "busy")
    assert response.headers["Retry-After"]
    await assert_healthy(client)


async def test_healthz_and_jwks(client: Client) -> None:
    await assert_healthy(client)
    response = await client.get("/.well-known/jwks.json")
    assert response.status == 200
    key = (await response.json())["keys"][0]
    assert {"kty", "crv", "x", "kid"} <= set(key)
    assert "d" not in key


# --- client mistakes: the right 4xx, always problem+json, server keeps serving --------------


def nested(depth: int) -> bytes:
    return b'{"platform": ' + b"[" * depth + b"]" * depth + b"}"


HOSTILE_BODIES: list[Any] = [
    pytest.param(b'{"platform": "sev-snp", "evidence": "AAAA', 400, id="truncated-json"),
    pytest.param(b"", 400, id="empty"),
    pytest.param(b"null", 400, id="null"),
    pytest.param(b"[1, 2, 3]", 400, id="array"),
    pytest.param(b'"just a string"', 400, id="string"),
    pytest.param(b"\xff\xfe\x00garbage\x80", 400, id="random-bytes"),
    pytest.param(nested(50_000), 400, id="deeply-nested"),
    pytest.param(b"[" * 200_000, 400, id="deeply-nested-unclosed"),
    pytest.param(b'{"platform": "sev-snp"}', 400, id="missing-evidence"),
    pytest.param(b'{"evidence": "AAAA"}', 400, id="missing-platform"),
    pytest.param(b'{"platform": 5, "evidence": "AAAA"}', 400, id="platform-not-string"),
    pytest.param(b'{"platform": "sgx", "evidence": "AAAA"}', 400, id="unknown-platform"),
    pytest.param(b'{"platform": "sev-snp", "evidence": 42}', 400, id="evidence-not-string"),
    pytest.param(b'{"platform": "sev-snp", "evidence": "!!not base64!!"}', 400, id="bad-b64"),
    pytest.param(b'{"platform": "sev-snp", "evidence": "A"}', 400, id="b64-bad-length"),
    pytest.param(b'{"platform": "sev-snp", "evidence": ""}', 400, id="empty-evidence"),
    pytest.param(
        b'{"platform": "sev-snp", "evidence": "AAAA", "certs": "AAAA"}', 400, id="certs-not-list"
    ),
    pytest.param(
        b'{"platform": "sev-snp", "evidence": "AAAA", "certs": [1]}', 400, id="cert-not-string"
    ),
    pytest.param(
        b'{"platform": "sev-snp", "evidence": "AAAA", "collateral": ["%%"]}', 400, id="bad-coll"
    ),
    pytest.param(
        b'{"platform": "sev-snp", "evidence": "AAAA", "policy": []}', 400, id="policy-not-object"
    ),
    pytest.param(
        b'{"platform": "sev-snp", "evidence": "AAAA", "policy": {"nope": 1}}',
        400,
        id="policy-unknown-field",
    ),
    pytest.param(
        b'{"platform": "sev-snp", "evidence": "AAAA", "policy": {"allow_debug": "yes"}}',
        400,
        id="policy-wrong-type",
    ),
    pytest.param(
        b'{"platform": "sev-snp", "evidence": "AAAA", "nonce": "xyz"}', 400, id="nonce-not-hex"
    ),
    pytest.param(b'{"platform": "sev-snp", "evidence": "AAAA", "nonce": 7}', 400, id="nonce-int"),
    pytest.param(
        b'{"platform": "sev-snp", "evidence": "AAAA", "at": "last tuesday"}', 400, id="bad-at"
    ),
    pytest.param(b'{"platform": "sev-snp", "evidence": "AAAA", "at": 0}', 400, id="at-int"),
    pytest.param(
        b'{"platform": "sev-snp", "evidence": "AAAA", "at": "0001-01-01T00:00:00+01:00"}',
        400,
        id="at-before-year-1-in-utc",
    ),
    pytest.param(
        b'{"platform": "sev-snp", "evidence": "AAAA", "policy": {"pcrs": {"1e9": "aa"}}}',
        400,
        id="policy-bad-index",
    ),
    pytest.param(b'{"platform": "sev-snp", "evidence": "\\ud800"}', 400, id="lone-surrogate"),
    pytest.param(
        b'{"platform": "sev-snp", "evidence": "AAAA", "extra": true}', 400, id="unknown-field"
    ),
    pytest.param(
        b'{"platform": "sev-snp", "platform": "tdx", "evidence": "AAAA"}', 400, id="duplicate-key"
    ),
    pytest.param(b'{"platform": "sev-snp", "evidence": 1e999999}', 400, id="huge-float"),
    pytest.param(b'{"platform": "sev-snp", "evidence": ' + b"9" * 5000 + b"}", 400, id="huge-int"),
    pytest.param(
        json.dumps({"platform": "sev-snp", "evidence": "*" * 900_000}).encode(),
        400,
        id="huge-json",
    ),
    pytest.param(b"x" * (2 * 1024 * 1024), 413, id="2MiB-body"),
]


@pytest.mark.parametrize(("body", "status"), HOSTILE_BODIES)
async def test_hostile_bodies(client: Client, body: bytes, status: int) -> None:
    response = await client.post(
        "/v1/attest", data=body, headers={"Content-Type": "application/json"}
    )
    await assert_problem(response, status)
    await assert_healthy(client)


async def test_chunked_body_over_the_cap_is_413(client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"[" * 65536

    response = await client.post(
        "/v1/attest", data=chunks(), headers={"Content-Type": "application/json"}
    )
    await assert_problem(response, 413, "payload-too-large")
    await assert_healthy(client)


@pytest.mark.parametrize(
    "sent",
    [b"Transfer-Encoding: chunked\r\n\r\n5\r\n[1, 2", b"Content-Length: 100\r\n\r\n[1, 2"],
)
async def test_a_body_never_finished_is_408_not_waited_for(
    aiohttp_client: ClientFactory, sent: bytes
) -> None:
    client = await aiohttp_client(create_app(config(body_read_seconds=0.2)))
    assert client.server.host is not None and client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"POST /v1/attest HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n")
    writer.write(sent)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"application/problem+json" in head
    writer.close()
    await assert_healthy(client)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
)
async def test_wrong_content_type_is_415(client: Client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    data = json.dumps(virtee_body()).encode()
    if content_type is None:
        response = await client.post("/v1/attest", data=data, skip_auto_headers=["Content-Type"])
    else:
        response = await client.post("/v1/attest", data=data, headers=headers)
    await assert_problem(response, 415, "unsupported-media-type")


async def test_unknown_path_is_404_problem(client: Client) -> None:
    await assert_problem(await client.get("/v2/nothing"), 404, "not-found")
    await assert_problem(await client.post("/", json={}), 404, "not-found")


async def test_wrong_method_is_405_problem(client: Client) -> None:
    response = await client.get("/v1/attest")
    await assert_problem(response, 405, "method-not-allowed")
    assert "POST" in response.headers["Allow"]
    await assert_problem(await client.delete("/healthz"), 405, "method-not-allowed")


async def test_unexpected_error_is_a_bare_500_problem(aiohttp_client: ClientFactory) -> None:
    app = create_app(config())

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals /etc/passwd")

    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    body = await assert_problem(await client.get("/boom"), 500, "internal-error")
    assert "secret" not in json.dumps(body)
    await assert_healthy(client)


async def test_evidence_is_not_logged_at_info(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    marker = b"\x13\x37" * 600
    await client.post("/v1/attest", json=virtee_body(evidence=b64(marker)))
    await client.post("/v1/attest", json=virtee_body())
    text = caplog.text
    assert b64(marker)[:40] not in text
    assert marker.hex()[:40] not in text
    assert b64(VIRTEE_REPORT)[:40] not in text


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("nohost", ":80", "host:", "host:99999", "host:http"):
        with pytest.raises(UsageError, match=r"listen|port"):
            parse_listen(bad)


# --- property: no body, header or shape ever gets a 5xx ------------------------------------


@pytest.fixture(scope="module")
def live_server() -> Iterator[tuple[str, int]]:
    """The app on a real port in its own thread, for a synchronous hypothesis test."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            runner = web.AppRunner(create_app(config()))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            state["runner"] = runner
            state["port"] = runner.addresses[0][1]
            ready.set()

        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(state["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield "127.0.0.1", state["port"]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
field_value = st.one_of(
    json_value,
    st.sampled_from(["sev-snp", "tdx", "nitro", "", "AAAA", "0x00", "2026-01-01T00:00:00Z"]),
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    st.lists(st.binary(max_size=32).map(lambda b: base64.b64encode(b).decode()), max_size=3),
    st.dictionaries(
        st.sampled_from(["platform", "allow_debug", "measurements", "pcrs", "min_tcb", "x"]),
        json_value,
        max_size=3,
    ),
)
request_object = st.dictionaries(
    st.sampled_from(
        ["platform", "evidence", "certs", "collateral", "policy", "nonce", "at", "zzz"]
    ),
    field_value,
    max_size=7,
)
body_strategy = st.one_of(
    request_object.map(lambda d: json.dumps(d).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    request_object.map(lambda d: json.dumps(d).encode()[: len(json.dumps(d)) // 2]),
    st.binary(max_size=200),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=body_strategy,
    content_type=st.sampled_from(["application/json", "application/problem+json", "text/plain"]),
    path=st.sampled_from(["/v1/attest", "/v1/attest", "/v1/attest/", "/healthz"]),
    method=st.sampled_from(["POST", "POST", "POST", "PUT", "GET"]),
)
def test_no_input_gets_a_5xx(
    live_server: tuple[str, int], body: bytes, content_type: str, path: str, method: str
) -> None:
    host, port = live_server
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    assert response.status < 500, payload
    if response.status >= 400:
        assert response.getheader("Content-Type", "").startswith("application/problem+json")
        assert json.loads(payload)["status"] == response.status


# --- kms-verifier serve: ready line, answers, stops cleanly --------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])
def test_serve_command_lifecycle(tmp_path: Path, stop_signal: signal.Signals) -> None:
    key = tmp_path / "signing.pem"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "verifier", "serve", "--listen", "127.0.0.1:0",
         "--signing-key", str(key)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        assert line.startswith("ready http://127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
        process.send_signal(stop_signal)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_command_usage_errors(tmp_path: Path) -> None:
    bad_key = tmp_path / "bad.pem"
    bad_key.write_text("not a key")
    for argv in (
        ["serve", "--listen", "nonsense"],
        ["serve", "--listen", "127.0.0.1:0", "--signing-key", str(bad_key)],
        ["serve", "--listen", "127.0.0.1:0", "--signing-key", "/nonexistent"],
        ["serve", "--listen", "127.0.0.1:0", "--roots", "simulated:/nonexistent"],
    ):
        stdout, stderr = io.StringIO(), io.StringIO()
        assert main(argv, stdout=stdout, stderr=stderr) == 2, argv
        assert stderr.getvalue()
        assert stdout.getvalue() == ""
