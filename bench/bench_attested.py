"""Attested connections per second beside bare TLS handshakes per second, same run.

Attested: ``AsyncKmsClient.attest()`` against the simulated stack (enclave in its own
process behind the host proxy): a TLS handshake, a fresh nonce, fresh SNP evidence signed
by the (simulated) AMD-SP, and full verification (chain, signature, binding, policy), with
the local verifier library and with the remote ``kms-verifier`` endpoint. Baseline: a TLS
handshake plus one small GET against a bare aiohttp HTTPS server (P-256 key, like the
enclave's) in its own process, no proxy. The target is informative ("report").
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import BenchResult, rate, result

SECONDS = 2.0
REPEATS = 3

_BARE_SERVER = r"""
import datetime, sys
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import ssl
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare")])
now = datetime.datetime.now(datetime.UTC)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
path = sys.argv[1]
open(path, "wb").write(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(path)
async def healthz(request):
    return web.json_response({"status": "ok"})
app = web.Application()
app.router.add_get("/healthz", healthz)
async def main():
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
import asyncio
asyncio.run(main())
"""


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _bare_handshake(port: int, context: ssl.SSLContext) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    await writer.drain()
    await reader.read()
    writer.close()


def run() -> list[BenchResult]:
    from kms.client import AsyncKmsClient
    from kms.profile import Profile
    from simulator.stack import SimStack

    with tempfile.TemporaryDirectory() as tmp, asyncio.Runner() as runner:
        bare = subprocess.Popen(
            [sys.executable, "-c", _BARE_SERVER, str(Path(tmp) / "bare.pem")],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        stack = SimStack(state=Path(tmp) / "state", listen="127.0.0.1:0")
        try:
            assert bare.stdout is not None
            port = int(bare.stdout.readline())
            runner.run(stack.start())
            context = _client_context()
            bare_rate = rate(lambda: runner.run(_bare_handshake(port, context)), seconds=SECONDS,
                             repeats=REPEATS)  # fmt: skip
            local = AsyncKmsClient(Profile.load(stack.profile_path))
            local_rate = rate(lambda: runner.run(local.attest()), seconds=SECONDS,
                              repeats=REPEATS)  # fmt: skip
            runner.run(local.close())
            remote = AsyncKmsClient(Profile.load(stack.remote_profile_path))
            remote_rate = rate(lambda: runner.run(remote.attest()), seconds=SECONDS,
                               repeats=REPEATS)  # fmt: skip
            runner.run(remote.close())
        finally:
            runner.run(stack.stop())
            bare.terminate()
            bare.wait(timeout=10)
    baseline = "bare TLS handshake + GET (aiohttp HTTPS)"
    return [
        result("attested connection (local verifier)", local_rate, "conn/s", baseline,
               bare_rate, "report"),
        result("attested connection (remote verifier)", remote_rate, "conn/s", baseline,
               bare_rate, "report"),
    ]  # fmt: skip


if __name__ == "__main__":
    for row in run():
        print(row)
