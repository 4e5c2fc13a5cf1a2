"""Attested TLS end to end: the real enclave app, the real host proxy, the real client.

Every refusal is shown to happen before the client sends anything but the attestation
request: the enclave's request log (what reached it) holds nothing else, and a MITM's own
record of what the client sent holds one ``GET /v1/attestation`` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave.attestation.evidence import attested_tls_report_data
from enclave.attestation.providers import RUNNING_TREE
from enclave.tls import decode_boot_evidence, spki_der_of_certificate
from kms.cli import main as kms_main
from kms.client import AsyncKmsClient
from kms.errors import AttestationRefused
from kms.profile import TrustConfig
from measurements.compute import simulated_measurement
from simulator.testing import InProcessEnclave, SimulatedLaunch
from verifier.roots import TrustRoots
from verifier.verify import Verifier


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> SimulatedLaunch:
    return SimulatedLaunch.prepare(tmp_path_factory.mktemp("state"))


@pytest.fixture
async def enclave(launch: SimulatedLaunch, tmp_path: Path) -> AsyncIterator[InProcessEnclave]:
    async with InProcessEnclave(launch, tmp_path / "enclave.sock") as running:
        yield running


def _self_signed_context(tmp_path: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mitm")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path = tmp_path / "mitm.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(path)
    return context


class Mitm:
    """A host that terminates TLS itself. ``replay`` answers attestation with a recorded
    answer; otherwise it relays the decrypted bytes to the real enclave over TLS."""

    def __init__(self, socket_path: Path, context: ssl.SSLContext, replay: bytes | None = None):
        self.socket_path = socket_path
        self.context = context
        self.replay = replay
        self.received = bytearray()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"https://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.replay is not None:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received += head
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(self.replay)}\r\nConnection: close\r\n\r\n".encode()
                    + self.replay
                )
                await writer.drain()
                return
            client = ssl.create_default_context()
            client.check_hostname = False
            client.verify_mode = ssl.CERT_NONE
            up_reader, up_writer = await asyncio.open_unix_connection(
                str(self.socket_path), ssl=client, server_hostname="enclave"
            )

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, log: bool) -> None:
                while data := await src.read(65536):
                    if log:
                        self.received += data
                    dst.write(data)
                    await dst.drain()
                with contextlib.suppress(Exception):
                    dst.write_eof()

            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False),
                                 return_exceptions=True)  # fmt: skip
            up_writer.close()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def request_lines(self) -> list[str]:
        return [
            line for line in bytes(self.received).decode("latin-1").split("\r\n")
            if line.startswith(("GET ", "POST ", "PUT ", "DELETE ", "HEAD ", "PATCH "))
        ]  # fmt: skip


def _only_attestation_reached(enclave: InProcessEnclave, before: int) -> None:
    recent = list(enclave.request_log.recent)[before:]
    assert all(r.path == "/v1/attestation" for r in recent), [r.path for r in recent]


# -- the stack attests -------------------------------------------------------------------


async def test_client_attests_real_stack_and_shows_computed_measurement(
    launch: SimulatedLaunch, enclave: InProcessEnclave
) -> None:
    expected = simulated_measurement(RUNNING_TREE, launch.launch_config).hex()
    tool = subprocess.run(
        [sys.executable, "-m", "measurements", "--config", str(launch.state / "launch.json")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert tool.stdout.strip() == expected
    async with AsyncKmsClient(launch.profile([enclave.url])) as client:
        result = await client.attest()
        assert result.measurement == expected
        assert result.claims["simulated"] is True
        assert result.certificate_der == enclave.certificate_der
        assert await client.get("/healthz") == {"status": "ok"}
    assert enclave.request_log.paths() == ["/v1/attestation", "/healthz"]


async def test_kms_cli_attest_json(launch: SimulatedLaunch, enclave: InProcessEnclave) -> None:
    import io

    path = launch.state / "cli-client.toml"
    launch.profile([enclave.url]).write(path)
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(
        kms_main, ["--profile", str(path), "attest", "--json"], stdout=out, stderr=err
    )
    assert code == 0, err.getvalue()
    claims = json.loads(out.getvalue())
    assert claims["measurement"] == launch.measurement.hex()
    assert claims["platform"] == "sev-snp"


async def test_boot_certificate_carries_evidence_bound_to_its_key(
    launch: SimulatedLaunch, enclave: InProcessEnclave
) -> None:
    evidence = decode_boot_evidence(enclave.certificate_der)
    roots = TrustRoots.from_pem({"sev-snp": launch.roots_pem}, simulated=True, label="t")
    claims = Verifier(roots).verify(
        "sev-snp", evidence.evidence, at=datetime.datetime.now(datetime.UTC), certs=evidence.certs
    )
    spki = spki_der_of_certificate(enclave.certificate_der)
    assert claims.report_data == attested_tls_report_data(spki, b"")
    assert claims.measurement == launch.measurement


async def test_later_connections_are_pinned_and_reattested_after_key_change(
    launch: SimulatedLaunch, tmp_path: Path
) -> None:
    socket_path = tmp_path / "e.sock"
    first = await InProcessEnclave(launch, socket_path, proxy=False).start()
    from host.config import EnclaveAddress, ListenAddress, ProxyConfig
    from host.proxy import HostProxy

    proxy = HostProxy(ProxyConfig(ListenAddress.parse("127.0.0.1:0"),
                                  EnclaveAddress.parse(f"unix:{socket_path}")))  # fmt: skip
    await proxy.start()
    url = f"https://127.0.0.1:{proxy.port}"
    try:
        async with AsyncKmsClient(launch.profile([url])) as client:
            pin1 = (await client.attest()).certificate_sha256
            await first.stop()
            second = await InProcessEnclave(launch, socket_path, proxy=False).start()
            try:
                assert await client.get("/healthz") == {"status": "ok"}
                attested = client.attested()
                assert attested is not None and attested.certificate_sha256 != pin1
                # The new enclave saw a fresh attestation before the request.
                assert second.request_log.paths() == ["/v1/attestation", "/healthz"]
            finally:
                await second.stop()
    finally:
        await proxy.stop(grace=0.5)


# -- refusals, before anything is sent ----------------------------------------------------


async def test_refuses_mitm_terminating_tls_with_its_own_certificate(
    launch: SimulatedLaunch, enclave: InProcessEnclave, tmp_path: Path
) -> None:
    mitm = Mitm(enclave.socket_path, _self_signed_context(tmp_path))
    url = await mitm.start()
    before = len(enclave.request_log.recent)
    try:
        async with AsyncKmsClient(launch.profile([url])) as client:
            with pytest.raises(AttestationRefused) as refused:
                await client.request("GET", "/healthz")
    finally:
        await mitm.stop()
    assert refused.value.type == "binding-mismatch"
    _only_attestation_reached(enclave, before)
    assert len(enclave.request_log.recent) - before == 1  # the relayed attestation request
    lines = mitm.request_lines()
    assert len(lines) == 1 and lines[0].startswith("GET /v1/attestation?nonce=")


async def test_refuses_replayed_attestation_answer(
    launch: SimulatedLaunch, enclave: InProcessEnclave, tmp_path: Path
) -> None:
    # Record a genuine answer (someone else's nonce), then replay it from a MITM.
    async with AsyncKmsClient(launch.profile([enclave.url])) as client:
        await client.attest()
    from kms.client import _attestation_exchange

    recorded = await _attestation_exchange(
        enclave.url, "nonce=" + "ab" * 32, connect_timeout=5, total_timeout=10, limit=1 << 20
    )
    assert recorded.status == 200
    before = len(enclave.request_log.recent)
    for answer, expected_types in (
        (recorded.body, {"stale-evidence"}),
        # The MITM also rewrites the nonce field: the evidence still binds the old one.
        (
            json.dumps(json.loads(recorded.body) | {"nonce": "__NONCE__"}).encode(),
            {"stale-evidence", "binding-mismatch"},
        ),
    ):
        mitm = Mitm(enclave.socket_path, _self_signed_context(tmp_path), replay=answer)
        if b"__NONCE__" in answer:
            mitm.replay = None  # filled per request below
            original = mitm._handle

            async def rewriting(
                reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter,
                template: bytes = answer,
                m: Mitm = mitm,
                forward: Any = original,
            ) -> None:
                head = await reader.readuntil(b"\r\n\r\n")
                nonce = head.split(b"nonce=")[1][:64]
                m.replay = template.replace(b"__NONCE__", nonce)
                feed = asyncio.StreamReader()
                feed.feed_data(head)
                feed.feed_eof()
                await forward(feed, writer)

            mitm._handle = rewriting  # type: ignore[method-assign]
        url = await mitm.start()
        try:
            async with AsyncKmsClient(launch.profile([url])) as client:
                with pytest.raises(AttestationRefused) as refused:
                    await client.request("GET", "/healthz")
        finally:
            await mitm.stop()
        assert refused.value.type in expected_types
        assert len(mitm.request_lines()) == 1
    assert len(enclave.request_log.recent) == before  # nothing reached the enclave


async def test_refuses_evidence_of_a_different_measurement(
    launch: SimulatedLaunch, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    for name in ("enclave", "verifier"):
        shutil.copytree(RUNNING_TREE / name, tree / name,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    target = tree / "enclave" / "app.py"
    target.write_bytes(target.read_bytes() + b"\n# one changed byte\n")
    async with InProcessEnclave(launch, tmp_path / "m.sock", measure_root=tree) as changed:
        async with AsyncKmsClient(launch.profile([changed.url])) as client:
            with pytest.raises(AttestationRefused) as refused:
                await client.request("GET", "/healthz")
        assert refused.value.type == "policy-violation"
        assert [m["field"] for m in refused.value.mismatches] == ["measurement"]
        assert changed.request_log.paths() == ["/v1/attestation"]


async def test_refuses_simulated_evidence_when_profile_trusts_vendor_roots(
    launch: SimulatedLaunch, enclave: InProcessEnclave
) -> None:
    profile = launch.profile([enclave.url], trust=TrustConfig("production"))
    assert profile.policy.allow_simulated is False
    before = len(enclave.request_log.recent)
    async with AsyncKmsClient(profile) as client:
        with pytest.raises(AttestationRefused) as refused:
            await client.request("GET", "/healthz")
    assert refused.value.type in {"bad-chain", "policy-violation"}
    _only_attestation_reached(enclave, before)


async def test_refusal_exits_3_with_problem_json(
    launch: SimulatedLaunch, enclave: InProcessEnclave, tmp_path: Path
) -> None:
    import io

    mitm = Mitm(enclave.socket_path, _self_signed_context(tmp_path))
    url = await mitm.start()
    path = tmp_path / "mitm.toml"
    launch.profile([url]).write(path)
    out, err = io.StringIO(), io.StringIO()
    try:
        code = await asyncio.to_thread(
            kms_main, ["--profile", str(path), "attest", "--json"], stdout=out, stderr=err
        )
    finally:
        await mitm.stop()
    assert code == 3
    assert len(err.getvalue().strip().splitlines()) == 1
    problem = json.loads(out.getvalue())
    assert problem["type"].endswith("/binding-mismatch")
