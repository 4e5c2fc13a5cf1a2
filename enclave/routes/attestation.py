"""``GET /v1/attestation?nonce=HEX``: fresh evidence bound to the TLS key and a nonce.

ARCHITECTURE.md "Attested TLS" step 2. The nonce is exactly 32 bytes (64 hex digits); the
evidence's report_data is ``attested_tls_report_data(TLS SPKI, nonce)`` for the same key
the connection was made with. The answer is public (evidence carries no secret) and must
never be cached by anything between the enclave and the client.
"""

from __future__ import annotations

import asyncio
import base64
import re

from aiohttp import web

from enclave import app as app_keys
from enclave.config import NONCE_BYTES
from enclave.problems import AttestationUnavailable, InvalidNonce, TooManyRequests

routes = web.RouteTableDef()
_NONCE_HEX = re.compile(rf"\A[0-9a-fA-F]{{{NONCE_BYTES * 2}}}\Z")


def parse_nonce(request: web.Request) -> bytes:
    values = request.query.getall("nonce", [])
    if len(values) != 1:
        raise InvalidNonce("give exactly one nonce query parameter")
    text = values[0]
    if not _NONCE_HEX.match(text):
        raise InvalidNonce(f"the nonce must be {NONCE_BYTES * 2} hex digits ({NONCE_BYTES} bytes)")
    return bytes.fromhex(text)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@routes.get("/v1/attestation")
async def attestation(request: web.Request) -> web.Response:
    nonce = parse_nonce(request)
    app = request.app
    identity = app[app_keys.TLS_IDENTITY]
    provider = app[app_keys.LAUNCH].provider
    gate = app[app_keys.EVIDENCE_GATE]
    if gate.locked():
        raise TooManyRequests(
            "too many attestation requests are waiting", headers={"Retry-After": "1"}
        )
    async with gate:
        try:
            evidence = await asyncio.get_running_loop().run_in_executor(
                None, provider.evidence, identity.report_data(nonce)
            )
        except Exception as exc:
            raise AttestationUnavailable("the platform did not produce evidence") from exc
    body = {
        "platform": evidence.platform,
        "evidence": _b64(evidence.evidence),
        "certs": [_b64(c) for c in evidence.certs],
        "collateral": [_b64(c) for c in evidence.collateral],
        "nonce": nonce.hex(),
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})
