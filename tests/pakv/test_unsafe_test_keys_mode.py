"""The UNSAFE K/V test-key mode (``--unsafe-pakv-test-keys``): off by default, refused with
hardware attestation, and when on, the well-known test key pair (id 64) is the only key
served and released, every answer says ``UNSAFE-TEST-KEYS``, and every use logs a warning.

The service on its own (in-process), then two real ``kms-sim up`` stacks: one with the flag
(public keys, a request encrypted to the served key decrypts with the well-known private
key, an attested K/V server fetches that private key over h2c) and one without (the test
key appears nowhere)."""

from __future__ import annotations

import base64
import json
import logging
import os
import select
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.config import ConfigError, EnclaveConfig
from enclave.pakv.formats import PUBLIC_KEYS_PATH, PublicKeySet
from enclave.pakv.service import PakvRequest, PakvService
from enclave.pakv.unsafe_test_keys import (
    UNSAFE_TEST_KEY_ID,
    UNSAFE_TEST_KEYS_HEADER,
    UNSAFE_TEST_KEYS_MARK,
    UNSAFE_TEST_PRIVATE_KEY_HEX,
    UNSAFE_TEST_PUBLIC_KEY_B64,
    UnsafeTestKeySource,
)
from kms.pakv.client import encrypt_request
from kms.pakv.server import KeyFetchError, KmsEndpoint, PakvKeyFetcher
from kms.pakv.simulated import kv_server_evidence_provider, other_kv_server
from tests.pakv.conftest import Identity
from tests.pakv.helpers import Recorder, make_service, real_now_clock, release_policy
from verifier.verify import Verifier

KV_REQUEST = b'{"metadata":{"hostname":"example.com"},"partitions":[{"id":0}]}'
KV_RESPONSE = b'{"compressionGroups":[{"compressionGroupId":0,"content":"x"}]}'
TEST_KEY_LOGGER = "enclave.pakv.UNSAFE_TEST_KEYS"
WELL_KNOWN_PUBLIC = base64.b64decode(UNSAFE_TEST_PUBLIC_KEY_B64)


def well_known_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(UNSAFE_TEST_PRIVATE_KEY_HEX))


# -- configuration --------------------------------------------------------------------------
def test_off_by_default_and_refused_with_hardware_attestation(tmp_path: Path) -> None:
    common: dict[str, Any] = {"platform": "sev-snp", "state_dir": tmp_path, "listen": "tcp:x:1"}
    assert EnclaveConfig.create(**common).unsafe_pakv_test_keys is False
    assert EnclaveConfig.create(**common, unsafe_pakv_test_keys=True).unsafe_pakv_test_keys
    with pytest.raises(ConfigError, match="hardware"):
        EnclaveConfig.create(**common, attestation="hardware", unsafe_pakv_test_keys=True)


def test_the_enclave_command_refuses_the_flag_with_hardware_attestation(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "enclave.server", "serve", "--state", str(tmp_path),
         "--listen", "tcp:127.0.0.1:0", "--platform", "sev-snp", "--attestation", "hardware",
         "--unsafe-pakv-test-keys"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "hardware" in done.stderr


# -- the service, in-process ------------------------------------------------------------------
def unsafe_service(verifier: Verifier, identity: Identity, audit: Recorder) -> PakvService:
    clock = real_now_clock()
    return PakvService(
        UnsafeTestKeySource("kms-a", since=clock.now),
        release=release_policy(verifier),
        identity=make_service(verifier, identity, audit, clock)[0].identity,
        audit=audit,
        clock=clock,
    )


async def test_service_serves_only_the_test_key_marked_and_warns_on_every_use(
    sim_verifier: Verifier, identity: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    audit = Recorder()
    service = unsafe_service(sim_verifier, identity, audit)
    caplog.set_level(logging.WARNING, logger=TEST_KEY_LOGGER)
    for _ in range(2):
        caplog.clear()
        answer = await service.handle(PakvRequest("GET", PUBLIC_KEYS_PATH))
        assert answer.status == 200
        assert json.loads(answer.body) == {
            "keys": [{"id": UNSAFE_TEST_KEY_ID, "key": UNSAFE_TEST_PUBLIC_KEY_B64}]
        }
        assert (UNSAFE_TEST_KEYS_HEADER, UNSAFE_TEST_KEYS_MARK) in answer.headers
        assert any("PUBLICLY KNOWN" in r.getMessage() for r in caplog.records)
    # problems are marked too, and the audit trail says which mode answered
    missing = await service.handle(PakvRequest("GET", "/nowhere"))
    assert missing.status == 404
    assert (UNSAFE_TEST_KEYS_HEADER, UNSAFE_TEST_KEYS_MARK) in missing.headers
    assert audit.records and all(r["details"]["unsafe_test_keys"] for r in audit.records)


async def test_service_without_the_mode_never_shows_the_test_key(
    sim_verifier: Verifier, identity: Identity
) -> None:
    service, _ = make_service(sim_verifier, identity, Recorder(), real_now_clock())
    answer = await service.handle(PakvRequest("GET", PUBLIC_KEYS_PATH))
    keys = PublicKeySet.from_body(answer.body)
    # The id itself is an ordinary one (counter 2, bit-reversed): only the key is the test's.
    assert UNSAFE_TEST_KEY_ID in {k.id for k in keys.keys}
    assert WELL_KNOWN_PUBLIC not in {k.key for k in keys.keys}
    assert all(name != UNSAFE_TEST_KEYS_HEADER for name, _ in answer.headers)


# -- real kms-sim stacks ------------------------------------------------------------------------
@dataclass(frozen=True)
class Sim:
    state: Path
    url: str
    pakv: dict[str, Any]


def _ready(process: subprocess.Popen[str], timeout: float = 120.0) -> list[str]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        if select.select([process.stdout], [], [], 1.0)[0]:
            line = process.stdout.readline()
            if line.startswith("ready "):
                # the banner follows at once, in one write (maybe already buffered)
                lines.append(line)
                while "stop:" not in lines[-1]:
                    lines.append(process.stdout.readline())
                return lines
            if not line and process.poll() is not None:
                break
    raise AssertionError(f"kms-sim did not get ready: {lines}")


def _sim(state: Path, *flags: str) -> Iterator[tuple[Sim, list[str]]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "up", "--state", str(state),
         "--listen", "127.0.0.1:0", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        lines = _ready(process)
        url = next(line for line in lines if line.startswith("ready ")).split()[1]
        yield Sim(state, url, json.loads((state / "pakv.json").read_text())), lines
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def unsafe_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sim, list[str]]]:
    yield from _sim(tmp_path_factory.mktemp("unsafe") / "state", "--unsafe-pakv-test-keys")


@pytest.fixture(scope="module")
def safe_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sim, list[str]]]:
    yield from _sim(tmp_path_factory.mktemp("safe") / "state")


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    # The public documents are public: no attestation needed to read them (as a browser).
    context = ssl._create_unverified_context()
    with urllib.request.urlopen(url, context=context, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


@pytest.mark.slow
async def test_with_the_flag_the_well_known_pair_is_served_and_released(
    unsafe_sim: tuple[Sim, list[str]],
) -> None:
    sim, banner = unsafe_sim
    assert any("UNSAFE" in line and "PUBLICLY KNOWN" in line for line in banner)
    assert "UNSAFE-TEST-KEYS" in sim.pakv["unsafe_test_keys"]

    # 1. The public documents list only id 64's well-known key, and say UNSAFE-TEST-KEYS.
    for name in ("public_keys", "public_keys_alias", "public_keys_signed"):
        status, headers, body = get(sim.pakv[name])
        assert status == 200
        assert headers[UNSAFE_TEST_KEYS_HEADER] == UNSAFE_TEST_KEYS_MARK
    status, _, body = get(sim.pakv["public_keys"])
    keys = PublicKeySet.from_body(body)
    assert [(k.id, base64.b64encode(k.key).decode()) for k in keys.keys] == [
        (UNSAFE_TEST_KEY_ID, UNSAFE_TEST_PUBLIC_KEY_B64)
    ]

    # 2. A request encrypted to the served key opens with the well-known private key.
    encapsulated, client_context = encrypt_request(keys.keys[0], KV_REQUEST)
    assert encapsulated[0] == 64  # the OHTTP key id
    local = PakvKeyFetcher.unsafe_test_keys()
    request, server_context = local.decrypt_request(encapsulated)
    assert request == KV_REQUEST
    reply = server_context.encapsulate_response(KV_RESPONSE)
    assert client_context.decapsulate_response(reply) == KV_RESPONSE

    # 3. An attested K/V server gets the private key from the KMS (h2c), HPKE-wrapped.
    signed = json.loads(get(sim.pakv["public_keys_signed"])[2])
    endpoint = KmsEndpoint(sim.pakv["h2c"], signed["kmsId"])
    fetcher = PakvKeyFetcher([endpoint], kv_server_evidence_provider(sim.state))
    _, material = await fetcher.fetch_key(endpoint, UNSAFE_TEST_KEY_ID)
    assert material == bytes.fromhex(UNSAFE_TEST_PRIVATE_KEY_HEX)
    fetched = await fetcher.refresh()
    assert [k.key_id for k in fetched] == [UNSAFE_TEST_KEY_ID]
    assert fetcher.decrypt_request(encapsulated)[0] == KV_REQUEST

    # 4. The enclave said so at start and on every use.
    log = (sim.state / "enclave.log").read_text()
    assert "--unsafe-pakv-test-keys" in log
    assert log.count("UNSAFE_TEST_KEYS: serving the PUBLICLY KNOWN") >= 3
    assert "UNSAFE_TEST_KEYS: releasing the PUBLICLY KNOWN" in log


@pytest.mark.slow
async def test_without_the_flag_the_test_key_never_appears(
    safe_sim: tuple[Sim, list[str]],
) -> None:
    sim, banner = safe_sim
    assert not any("UNSAFE" in line for line in banner)
    assert "unsafe_test_keys" not in sim.pakv
    for name in ("public_keys", "public_keys_alias", "public_keys_signed"):
        status, headers, body = get(sim.pakv[name])
        assert status == 200 and UNSAFE_TEST_KEYS_HEADER not in headers
        assert UNSAFE_TEST_PUBLIC_KEY_B64 not in body.decode()
    signed = json.loads(get(sim.pakv["public_keys_signed"])[2])
    endpoint = KmsEndpoint(sim.pakv["h2c"], signed["kmsId"])
    fetcher = PakvKeyFetcher([endpoint], kv_server_evidence_provider(sim.state))
    # id 4000000000000000 is an ordinary key id of the real key set: a fresh key, not the test's
    document, material = await fetcher.fetch_key(endpoint, UNSAFE_TEST_KEY_ID)
    assert document.public_key != WELL_KNOWN_PUBLIC
    assert material != bytes.fromhex(UNSAFE_TEST_PRIVATE_KEY_HEX)
    fetched = await fetcher.refresh()
    assert fetched and WELL_KNOWN_PUBLIC not in {k.public_key for k in fetched}
    assert "UNSAFE_TEST_KEYS" not in (sim.state / "enclave.log").read_text()


@pytest.mark.slow
async def test_with_the_flag_the_release_policy_still_decides(
    unsafe_sim: tuple[Sim, list[str]],
) -> None:
    sim, _ = unsafe_sim
    signed = json.loads(get(sim.pakv["public_keys_signed"])[2])
    endpoint = KmsEndpoint(sim.pakv["h2c"], signed["kmsId"])
    provider = kv_server_evidence_provider(sim.state, launch=other_kv_server())
    with pytest.raises(KeyFetchError) as refused:
        await PakvKeyFetcher([endpoint], provider).fetch_key(endpoint, UNSAFE_TEST_KEY_ID)
    assert refused.value.status == 403
