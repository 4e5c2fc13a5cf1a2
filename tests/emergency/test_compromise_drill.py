"""The key compromise drill, end to end, on a real in-process KMS (3 admins, M = 2).

Isolate the suspected principal; respond to a compromised data key (mark compromised,
emergency rotation, dependents notified, their ciphertexts re-encrypted under the new
version); respond to a compromised KEK (rotation and rewrap of every key it wrapped, data
still decrypts); isolate a key. Every step is a quorum proposal over HTTP.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.kms.principals import identity_proof_message
from kms.commands.emergency import parameters
from simulator.testing import SimulatedLaunch
from tests.governance.harness import Keys, Kms, b64, start_kms
from tests.hsm import support

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def shared_hsm() -> Iterator[support.SharedHsm]:
    shared = support.acquire()
    yield shared
    support.release()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kms(
    shared_hsm: support.SharedHsm, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Kms]:
    template = SimulatedLaunch.prepare(tmp_path_factory.mktemp("drill-template"))
    state = tmp_path_factory.mktemp("drill") / "state"
    instance = await start_kms(template, state, shared_hsm.backend, Keys.generate())
    try:
        yield instance
    finally:
        await instance.client.close()


async def test_compromise_drill(kms: Kms) -> None:
    # A service principal using a key: the suspected source of the leak.
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    challenge = base64.b64decode((await kms.ok("POST", "/v1/principals/challenge"))["challenge"])
    proof = key.sign(identity_proof_message(challenge, public, "billing"))
    service = await kms.ok("POST", "/v1/principals", {
        "name": "billing", "kind": "service", "public_key": b64(public),
        "challenge": b64(challenge), "proof": b64(proof), "system_level": 1,
    })  # fmt: skip
    service_token = kms.token(key, service["id"])
    key_id = await kms.new_key()
    old = [await kms.encrypt(key_id, f"invoice {i}".encode()) for i in range(3)]
    await kms.ok(
        "POST", "/v1/grants", {"principal_id": service["id"], "key_id": key_id, "level": 1}
    )
    status, _ = await kms.call("POST", "/v1/decrypt", {"ciphertext": old[0]}, token=service_token)
    assert status == 200

    # 1. isolation of the principal
    isolated = await kms.run(
        "emergency.isolate", parameters("emergency.isolate", service["id"], "leak suspected")
    )
    assert isolated == {"principal_id": service["id"], "isolated": True}
    status, _ = await kms.call("POST", "/v1/decrypt", {"ciphertext": old[0]}, token=service_token)
    assert status in (401, 403)

    # 2. the compromise response for the data key
    report = await kms.run(
        "emergency.compromise", parameters("emergency.compromise", key_id, "leak")
    )
    assert report["compromised_versions"] == [1] and report["new_version"] == 2
    described = await kms.ok("GET", f"/v1/keys/{key_id}")
    versions = {v["version"]: v for v in described["versions"]}
    assert versions[1]["compromised"] is True and versions[2]["state"] == "active"
    # dependents are notified: a "rotated" then a "compromised" event
    events = (await kms.ok("GET", f"/v1/keys/{key_id}/events?after=0&timeout=0"))["events"]
    assert [e["type"] for e in events][-2:] == ["rotated", "compromised"]
    assert events[-1]["new_version"] == 2
    # re-encryption of the affected ciphertexts: decrypt under v1, encrypt under v2
    for index, blob in enumerate(old):
        moved = await kms.ok("POST", "/v1/re-encrypt", {"ciphertext": blob})
        assert moved["version"] == 2
        assert await kms.decrypt(moved["ciphertext"]) == f"invoice {index}".encode()
    fresh = await kms.ok("POST", "/v1/encrypt", {"key_id": key_id, "plaintext": b64(b"new")})
    assert fresh["version"] == 2

    # 3. the compromise response for the service KEK: rotate and rewrap everything under it
    kek = await kms.runtime.current_kek()
    report = await kms.run("emergency.compromise", {"key_id": kek.key_id, "reason": "drill"})
    assert report["kind"] == "keks" and key_id in report["rewrapped"]
    assert report["not_rewrapped"] == []
    stored = kms.kms.repository.require(key_id)
    new_kek_version = report["new_version"]
    assert all(v.wrapped_by.version == new_kek_version for v in stored.versions if v.wrapped)
    assert await kms.decrypt(fresh["ciphertext"]) == b"new"
    assert await kms.decrypt(old[1]) == b"invoice 1"  # v1: compromised, still decrypts
    other = await kms.new_key()  # new keys are wrapped by the new KEK version
    assert kms.kms.repository.require(other).latest.wrapped_by.version == new_kek_version

    # 4. isolation of a key: nothing encrypts or decrypts with it any more
    done = await kms.run("emergency.isolate", {"key_id": key_id})
    assert set(done["disabled_versions"]) == {1, 2}
    status, _ = await kms.call("POST", "/v1/decrypt", {"ciphertext": fresh["ciphertext"]})
    assert status in (403, 409, 422), status

    # every step left its audit trail
    operations = [r["operation"] for r in _audit(kms)]
    assert operations.count("governance.execute") >= 8


def _audit(kms: Kms) -> list[dict[str, object]]:
    import json

    path = kms.state / "audit" / "audit.log"
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
