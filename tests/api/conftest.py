"""The real enclave app (bootstrap, attested TLS identity, KMS API feature) behind aiohttp's
test server, with an administrator in its launch configuration, and helpers that mint
request tokens bound to the app's attested TLS key.

One app per test module (bootstrap is the slow part); tests make their own keys and
principals so they do not depend on each other.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.app import RUNTIME, TLS_IDENTITY, create_app
from enclave.audit.records import AuditRecord
from enclave.auth.tokens import issue_token
from enclave.bootstrap import BootstrapOptions
from enclave.config import EnclaveConfig
from enclave.features.kms_api import KMS_SERVICE
from enclave.kms.principals import identity_proof_message
from enclave.kms.service import KmsService
from simulator.testing import SimulatedLaunch
from tests.hsm import support
from tests.support.fastpath import FastPathTestServer

PROBLEM = "application/problem+json"


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


@dataclass
class Caller:
    principal_id: str
    key: Ed25519PrivateKey
    name: str = ""


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    state: Path
    admin: Caller
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def app(self) -> web.Application:
        return self.client.app  # type: ignore[return-value]

    @property
    def kms(self) -> KmsService:
        return self.app[KMS_SERVICE]

    @property
    def kms_id(self) -> str:
        return self.app[RUNTIME].kms_id

    @property
    def spki(self) -> bytes:
        return self.app[TLS_IDENTITY].spki_der

    def token(self, caller: Caller, **overrides: Any) -> str:
        """A request token; ``overrides``: audience, tls_spki_der, lifetime, now, key."""
        if not overrides:
            cached = self.tokens.get(caller.principal_id)
            if cached is not None:
                return cached
        token = issue_token(
            overrides.pop("key", caller.key),
            principal_id=overrides.pop("principal_id", caller.principal_id),
            audience=overrides.pop("audience", self.kms_id),
            tls_spki_der=overrides.pop("tls_spki_der", self.spki),
            **overrides,
        )
        if not overrides:
            self.tokens[caller.principal_id] = token
        return token

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        caller: Caller | None = None,
        token: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, str]:
        send = dict(headers or {})
        who = caller or self.admin
        send.setdefault("Authorization", f"Bearer {token or self.token(who)}")
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            send.setdefault("Content-Type", "application/json")
        async with self.client.request(method, path, data=data, headers=send) as response:
            text = await response.text()
            try:
                document = json.loads(text) if text else None
            except ValueError:
                document = text
            return response.status, document, response.content_type

    async def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, document, _ = await self.call(method, path, body, **kwargs)
        assert status in (200, 201), (status, document)
        return document

    async def new_principal(
        self, name: str, *, kind: str = "service", level: int | None = None
    ) -> Caller:
        key = Ed25519PrivateKey.generate()
        public = raw_public(key)
        challenge = base64.b64decode(
            (await self.ok("POST", "/v1/principals/challenge"))["challenge"]
        )
        proof = key.sign(identity_proof_message(challenge, public, name))
        made = await self.ok("POST", "/v1/principals", {
            "name": name, "kind": kind, "public_key": b64(public),
            "challenge": b64(challenge), "proof": b64(proof), "system_level": level,
        })  # fmt: skip
        return Caller(made["id"], key, name)

    async def new_key(self, purpose: str = "encrypt", *, owner: Caller | None = None) -> str:
        made = await self.ok("POST", "/v1/keys", {"purpose": purpose}, caller=owner or self.admin)
        return str(made["id"])

    async def grant(self, who: Caller, key_id: str, level: int) -> None:
        await self.ok(
            "POST",
            "/v1/grants",
            {"principal_id": who.principal_id, "key_id": key_id, "level": level},
        )

    def audit_records(self) -> list[AuditRecord]:
        path = self.state / "audit" / "audit.log"
        out = []
        for line in path.read_bytes().splitlines():
            if line.strip():
                document = json.loads(line)
                if document.get("type") == "header":
                    continue
                record = AuditRecord.from_json(document)
                if not record.is_checkpoint:
                    out.append(record)
        return out

    def store_digest(self) -> str:
        """A digest of every stored record (kind, id, version): 'nothing changed'."""
        store = self.app[RUNTIME].store.store
        h = hashlib.sha256()
        for kind in (
            "keys",
            "keks",
            "principals",
            "grants",
            "rotations",
            "rotation_events",
            "releases",
            "release_policies",
            "sharing",
        ):
            for ref in store.list(kind):
                h.update(f"{kind}/{ref.id}/{ref.version}\n".encode())
        return h.hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def shared_hsm() -> Iterator[support.SharedHsm]:
    shared = support.acquire()
    yield shared
    support.release()


@pytest.fixture(scope="session")
def launch_template(tmp_path_factory: pytest.TempPathFactory) -> SimulatedLaunch:
    return SimulatedLaunch.prepare(tmp_path_factory.mktemp("api-template"))


def write_launch_config(state: Path, admin: Ed25519PrivateKey) -> None:
    config = json.loads((state / "launch.json").read_text())
    config["quorum"] = {
        "threshold": 1,
        "admins": [{"name": "root-admin", "public_key": raw_public(admin).hex()}],
    }
    (state / "launch.json").write_text(json.dumps(config))


# Every API test runs twice: through aiohttp's own server, and with connections starting on
# the enclave's fast path (``kms-enclave serve``'s default), which must answer the same.
@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["aiohttp", "fastpath"])
async def api(
    request: pytest.FixtureRequest, shared_hsm: support.SharedHsm,
    launch_template: SimulatedLaunch, tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Api]:  # fmt: skip
    state = tmp_path_factory.mktemp("api-state")
    shutil.rmtree(state)
    shutil.copytree(launch_template.state, state)
    admin_key = Ed25519PrivateKey.generate()
    write_launch_config(state, admin_key)
    config = EnclaveConfig.create(platform="sev-snp", state_dir=state, listen="tcp:127.0.0.1:0")
    options = BootstrapOptions(
        hsm=shared_hsm.backend,
        counter_label="kms-api-test/" + hashlib.sha256(str(state).encode()).hexdigest()[:20],
    )
    app = create_app(config, bootstrap_options=options)
    server: TestServer = (
        FastPathTestServer(app, body_limit=config.limits.max_request_body_bytes)
        if request.param == "fastpath" else TestServer(app)
    )  # fmt: skip
    # On the fast path, one keep-alive connection carries every request: the fast routes
    # are answered on it, every other one by aiohttp in turn.
    client = TestClient(server)
    await client.start_server()
    try:
        kms = client.app[KMS_SERVICE]  # type: ignore[index]
        admins = [p for p in kms.principal_directory.all() if p.kind == "admin"]
        assert len(admins) == 1 and admins[0].public_key == raw_public(admin_key)
        yield Api(client, state, Caller(admins[0].id, admin_key, "root-admin"))
        if isinstance(server, FastPathTestServer):
            assert server.served_fast > 0, "no request took the fast path"
            assert server.delegated > 0, "no request was delegated to aiohttp"
    finally:
        await client.close()


def now() -> float:
    return time.time()
