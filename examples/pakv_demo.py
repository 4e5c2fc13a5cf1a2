"""K/V request keys end to end on loopback, with simulated SEV-SNP hardware.

    .venv/bin/python examples/pakv_demo.py

1. A KMS key set is rotated once (5 active X25519 keys, coordinator key ids).
2. The KMS serves the public keys over HTTP/1.1 (aiohttp) and the private-key endpoints over
   HTTP/2 cleartext (hypercorn), both from one ``PakvService``.
3. A browser-like client fetches the public keys, checks the headers and the KMS signature,
   and OHTTP-encrypts a K/V request with the K/V labels.
4. A simulated attested K/V server attests (challenge -> evidence -> session), fetches its
   private keys over HTTP/2, decrypts the request and encrypts the answer.
5. The client decrypts the answer. Every fetch is in the audit trail printed at the end.

Against a running simulated stack (``kms-sim up --state DIR``), the same steps through the
host proxy to the enclave, with the sim's fake hardware playing the attested K/V server::

    .venv/bin/python examples/pakv_demo.py --state DIR
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.attestation.launch import LaunchIdentity
from enclave.attestation.simulated.snp import SimulatedSnp
from enclave.pakv.formats import PUBLIC_KEYS_PATH, SIGNED_PUBLIC_KEYS_PATH, SignedPublicKeys
from enclave.pakv.h2server import H2Server
from enclave.pakv.http import create_pakv_app
from enclave.pakv.keyset import KeySet
from enclave.pakv.service import KmsIdentity, PakvService, ReleasePolicy
from kms.pakv.client import choose_key, encrypt_request, fetch_public_keys
from kms.pakv.server import KmsEndpoint, PakvKeyFetcher
from verifier.policy import Policy
from verifier.roots import TrustRoots
from verifier.verify import Verifier


class DictStore:
    """A throw-away in-memory Store for the demo (the enclave uses the SQLite store)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[int, bytes]] = {}

    def get(self, kind: str, record_id: str) -> Any:
        from enclave.storage.records import Record

        row = self.rows.get((kind, record_id))
        return Record(kind, record_id, *row) if row else None

    def list(self, kind: str) -> list[Any]:
        from enclave.storage.records import RecordRef

        return [RecordRef(k, i, v) for (k, i), (v, _) in self.rows.items() if k == kind]

    def put(self, kind: str, record_id: str, value: bytes, **_: Any) -> int:
        version = self.rows.get((kind, record_id), (0, b""))[0] + 1
        self.rows[(kind, record_id)] = (version, value)
        return version

    def delete(self, kind: str, record_id: str, **_: Any) -> bool:
        return self.rows.pop((kind, record_id), None) is not None

    def transaction(self) -> Any:
        import contextlib

        return contextlib.nullcontext(self)

    def close(self) -> None:
        pass


async def main() -> None:
    hw = SimulatedSnp.load_or_create(Path(tempfile.mkdtemp(prefix="pakv-demo-snp-")))
    kv_server = LaunchIdentity(measurement=bytes(48), config=b'{"service": "kv"}')
    identity = Ed25519PrivateKey.generate()
    audit_trail: list[dict[str, Any]] = []

    async def audit(**record: Any) -> None:
        audit_trail.append(record)

    keys = KeySet(DictStore(), os.urandom(32), kms_id="kms-demo")
    keys.run_rotation()
    service = PakvService(
        keys,
        release=ReleasePolicy(
            policy=Policy.from_mapping(
                {
                    "platform": "sev-snp",
                    "allow_simulated": True,
                    "measurements": [{"name": "kv", "value": kv_server.measurement.hex()}],
                }
            ),
            verifier=Verifier(
                TrustRoots.from_pem({"sev-snp": hw.roots_pem()}, simulated=True, label="demo")
            ),
        ),
        identity=KmsIdentity(identity.sign, identity.public_key().public_bytes_raw()),
        audit=audit,
    )

    runner = web.AppRunner(create_pakv_app(service))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    http_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with H2Server(service) as h2c:
        async with aiohttp.ClientSession() as session:
            answer = await fetch_public_keys(
                session, http_url, identity_public_key=identity.public_key().public_bytes_raw()
            )
        print(f"public keys (max-age {answer.max_age}s, signature ok):")
        for entry in answer.keys.keys:
            print(f"  {entry.id}  ohttp id {int(entry.id[:2], 16):3d}")
        key = choose_key(answer.keys)
        encapsulated, client_context = encrypt_request(key, b'{"keys": ["hi"]}')
        print(f"request encrypted to {key.id}: {len(encapsulated)} bytes")

        fetcher = PakvKeyFetcher(
            [KmsEndpoint(f"http://127.0.0.1:{h2c.port}", "kms-demo")], hw.provider(kv_server)
        )
        fetched = await fetcher.refresh()
        print(f"K/V server fetched {len(fetched)} private keys over {fetcher.last_transports}")
        request, server_context = fetcher.decrypt_request(encapsulated)
        print(f"K/V server decrypted: {request!r}")
        reply = server_context.encapsulate_response(b'{"hi": "Hello, world!"}')
        print(f"client decrypted the answer: {client_context.decapsulate_response(reply)!r}")
    await runner.cleanup()
    print("audit trail:")
    for record in audit_trail:
        print(f"  {record['operation']:26} {record['outcome']:8} {record['principal']}")


async def against_sim(state: Path) -> None:
    """The browser client and the K/V server against ``kms-sim up --state STATE``."""
    from kms.client import AsyncKmsClient
    from kms.pakv.server import pinned_tls_context
    from kms.pakv.simulated import kv_server_evidence_provider
    from kms.profile import Profile

    pakv = json.loads((state / "pakv.json").read_text())
    async with AsyncKmsClient(Profile.load(state / "client.toml")) as kms:
        attested = await kms.attest()  # the enclave's TLS certificate, proven by evidence
    print(f"attested the KMS: measurement {attested.measurement[:32]}...")
    base = pakv["public_keys"].removesuffix(PUBLIC_KEYS_PATH)
    https = pinned_tls_context(attested.certificate_der, alpn=("http/1.1",))
    async with aiohttp.ClientSession() as session:
        async with session.get(base + SIGNED_PUBLIC_KEYS_PATH, ssl=https) as response:
            signed = SignedPublicKeys.from_body(await response.read())
        answer = await fetch_public_keys(
            session, base, identity_public_key=signed.signing_key, ssl_context=https
        )
    print(f"public keys of {signed.kms_id} (max-age {answer.max_age}s, signature ok):")
    for entry in answer.keys.keys:
        print(f"  {entry.id}  ohttp id {int(entry.id[:2], 16):3d}")
    key = choose_key(answer.keys)
    encapsulated, client_context = encrypt_request(key, b'{"keys": ["hi"]}')
    for url, context in (
        (pakv["h2"], pinned_tls_context(attested.certificate_der)),
        (pakv["h2c"], None),
    ):
        endpoint = KmsEndpoint(url, signed.kms_id, signed.signing_key, context)
        fetcher = PakvKeyFetcher([endpoint], kv_server_evidence_provider(state))
        fetched = await fetcher.refresh()
        print(f"K/V server at {url}: {len(fetched)} keys over {fetcher.last_transports}")
        request, server_context = fetcher.decrypt_request(encapsulated)
        reply = server_context.encapsulate_response(b'{"hi": "Hello, world!"}')
        print(
            f"  decrypted {request!r}; client read {client_context.decapsulate_response(reply)!r}"
        )
    print(f"audit log: {state / 'audit' / 'audit.log'}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--state":
        asyncio.run(against_sim(Path(sys.argv[2])))
    else:
        asyncio.run(main())
