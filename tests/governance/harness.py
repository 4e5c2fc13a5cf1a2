"""An in-process KMS (real bootstrap, KMS API, governance feature) with a 3-admin quorum
(threshold 2) and 3 backup custodians (threshold 2) in its attested launch configuration,
behind aiohttp's test server; helpers to propose, sign offline and approve over HTTP.

Used by tests/governance, tests/backup and tests/emergency (one app per test module:
bootstrap is the slow part).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.app import RUNTIME, TLS_IDENTITY, create_app
from enclave.auth.tokens import issue_token
from enclave.bootstrap import BootstrapOptions
from enclave.config import EnclaveConfig
from enclave.features.governance import GOVERNANCE, GovernanceFeature
from enclave.features.kms_api import KMS_SERVICE
from enclave.governance.approvals import Approval, sign_approval
from enclave.governance.proposals import Proposal
from enclave.kms.service import KmsService
from enclave.runtime import KmsRuntime
from simulator.testing import SimulatedLaunch

ADMIN_NAMES = ("alice", "bob", "carol")
CUSTODIAN_NAMES = ("dave", "erin", "frank")


@dataclass(frozen=True)
class Keys:
    """The people of a launch configuration: admins (Ed25519) and custodians (X25519)."""

    admins: tuple[Ed25519PrivateKey, ...]
    custodians: tuple[X25519PrivateKey, ...]

    @classmethod
    def generate(cls) -> Keys:
        return cls(
            tuple(Ed25519PrivateKey.generate() for _ in ADMIN_NAMES),
            tuple(X25519PrivateKey.generate() for _ in CUSTODIAN_NAMES),
        )

    def launch_sections(self, threshold: int = 2) -> dict[str, Any]:
        return {
            "quorum": {
                "threshold": threshold,
                "admins": [
                    {"name": n, "public_key": k.public_key().public_bytes_raw().hex()}
                    for n, k in zip(ADMIN_NAMES, self.admins, strict=True)
                ],
            },
            "backup": {
                "threshold": 2,
                "custodians": [
                    {"name": n, "public_key": k.public_key().public_bytes_raw().hex()}
                    for n, k in zip(CUSTODIAN_NAMES, self.custodians, strict=True)
                ],
            },
        }


def write_launch_config(state: Path, keys: Keys, **extra: Any) -> None:
    config = json.loads((state / "launch.json").read_text())
    config.update(keys.launch_sections())
    config.update(extra)
    (state / "launch.json").write_text(json.dumps(config))


def admin_id(key: Ed25519PrivateKey) -> str:
    from enclave.features import kms_api

    public = key.public_key().public_bytes_raw()
    derive = getattr(kms_api, "admin_principal_id", None)
    if derive is not None:
        return str(derive(public))
    raise AssertionError("the KMS API derives no admin principal id")


@dataclass
class Kms:
    client: TestClient[web.Request, web.Application]
    state: Path
    keys: Keys
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def app(self) -> web.Application:
        return self.client.app  # type: ignore[return-value]

    @property
    def runtime(self) -> KmsRuntime:
        return self.app[RUNTIME]

    @property
    def kms(self) -> KmsService:
        return self.app[KMS_SERVICE]

    @property
    def feature(self) -> GovernanceFeature:
        return self.app[GOVERNANCE]

    def principal_id(self, admin: int = 0) -> str:
        public = self.keys.admins[admin].public_key().public_bytes_raw()
        for principal in self.kms.principal_directory.all():
            if principal.public_key == public:
                return principal.id
        raise AssertionError("admin not registered")

    def token(self, key: Ed25519PrivateKey, principal_id: str) -> str:
        cached = self.tokens.get(principal_id)
        if cached is None:
            cached = issue_token(
                key,
                principal_id=principal_id,
                audience=self.runtime.kms_id,
                tls_spki_der=self.app[TLS_IDENTITY].spki_der,
            )
            self.tokens[principal_id] = cached
        return cached

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        admin: int = 0,
        raw: bytes | None = None,
        token: str | None = None,
    ) -> tuple[int, Any]:
        headers = {
            "Authorization": "Bearer "
            + (token or self.token(self.keys.admins[admin], self.principal_id(admin)))
        }
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None and raw is None:
            headers["Content-Type"] = "application/json"
        async with self.client.request(method, path, data=data, headers=headers) as response:
            content = await response.read()
            if response.content_type in ("application/json", "application/problem+json"):
                return response.status, json.loads(content)
            return response.status, content

    async def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, document = await self.call(method, path, body, **kwargs)
        assert status in (200, 201), (status, document)
        return document

    async def propose(
        self, operation: str, parameters: dict[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any]:
        body = {"operation": operation, "parameters": parameters or {}, **extra}
        return dict(await self.ok("POST", "/v1/governance/proposals", body))

    @staticmethod
    def sign(view: dict[str, Any], key: Ed25519PrivateKey) -> Approval:
        """The admin's offline step: sign the proposal as shown."""
        return sign_approval(key, Proposal.from_dict(view["proposal"]))

    async def approve_raw(
        self, proposal_id: str, approval: Approval, *, admin: int = 0
    ) -> tuple[int, Any]:
        return await self.call(
            "POST",
            f"/v1/governance/proposals/{proposal_id}/approvals",
            approval.to_dict(),
            admin=admin,
        )

    async def approve(self, view: dict[str, Any], admin: int) -> dict[str, Any]:
        approval = self.sign(view, self.keys.admins[admin])
        status, document = await self.approve_raw(view["proposal"]["id"], approval, admin=admin)
        assert status == 200, (status, document)
        return dict(document)

    async def run(self, operation: str, parameters: dict[str, Any] | None = None) -> Any:
        """Propose and approve with two admins (M = 2): the operation's result."""
        view = await self.propose(operation, parameters)
        await self.approve(view, 0)
        done = await self.approve(view, 1)
        assert done["status"] == "executed", done
        return done["result"]

    async def new_key(self) -> str:
        made = await self.ok("POST", "/v1/keys", {"purpose": "encrypt"})
        return str(made["id"])

    async def encrypt(self, key_id: str, plaintext: bytes) -> str:
        done = await self.ok("POST", "/v1/encrypt", {"key_id": key_id, "plaintext": b64(plaintext)})
        return str(done["ciphertext"])

    async def decrypt(self, ciphertext: str) -> bytes:
        done = await self.ok("POST", "/v1/decrypt", {"ciphertext": ciphertext})
        return base64.b64decode(done["plaintext"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def start_kms(
    template: SimulatedLaunch, state: Path, backend: Any, keys: Keys, **extra: Any
) -> Kms:
    if state.exists():
        shutil.rmtree(state)
    shutil.copytree(template.state, state)
    write_launch_config(state, keys, **extra)
    config = EnclaveConfig.create(platform="sev-snp", state_dir=state, listen="tcp:127.0.0.1:0")
    options = BootstrapOptions(
        hsm=backend,
        counter_label="kms-gov-test/" + hashlib.sha256(str(state).encode()).hexdigest()[:20],
    )
    client = TestClient(TestServer(create_app(config, bootstrap_options=options)))
    await client.start_server()
    return Kms(client, state, keys)
