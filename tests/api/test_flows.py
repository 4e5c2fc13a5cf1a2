"""The KMS API end to end over the real app: lifecycle, crypto, rotation, public documents."""

from __future__ import annotations

import base64

import pytest

from tests.api.conftest import PROBLEM, Api, b64

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_auth_info_is_public(api: Api) -> None:
    async with api.client.get("/v1/auth/info") as response:
        assert response.status == 200
        body = await response.json()
    assert body["audience"] == api.kms_id


async def test_encrypt_decrypt_round_trip(api: Api) -> None:
    key_id = await api.new_key()
    sealed = await api.ok(
        "POST",
        "/v1/encrypt",
        {"key_id": key_id, "plaintext": b64(b"hello"), "context": {"tenant": "a"}},
    )
    assert sealed["version"] == 1
    opened = await api.ok(
        "POST", "/v1/decrypt", {"ciphertext": sealed["ciphertext"], "context": {"tenant": "a"}}
    )
    assert base64.b64decode(opened["plaintext"]) == b"hello"
    status, problem, ctype = await api.call(
        "POST", "/v1/decrypt", {"ciphertext": sealed["ciphertext"], "context": {"tenant": "b"}}
    )
    assert status == 400 and ctype == PROBLEM
    assert problem["type"].endswith("/decryption-failed")
