"""The ``kms`` command against a real ``kms-sim up`` (processes, host proxy, attested TLS):
a service onboarded with its own profile and credentials runs the whole key lifecycle.

One stack for the module; the steps run in order in one test (each builds on the last),
and each ``kms`` call is a real subprocess, as a user would type it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.attestation.simulated.snp import SimulatedSnp
from enclave.keys.material import Ciphertext, SymmetricKey
from enclave.kms.context import canonical_context
from enclave.kms.release import receipt_proof, release_report_data, unwrap_released
from kms.credentials import SyncAuthorizedClient
from kms.profile import Profile
from tests.cli.support import Sim, kms, running_sim

CLIENT_MEASUREMENT = bytes(range(48))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with running_sim(tmp_path_factory.mktemp("kms-cli") / "state") as running:
        yield running


def kms_json(profile: Path, *args: str, stdin: bytes = b"") -> object:
    return json.loads(kms(profile, *args, "--json", stdin=stdin).stdout)


def test_service_lifecycle_through_the_cli(sim: Sim) -> None:
    work = sim.state / "svc"
    work.mkdir()
    admin = sim.admin
    assert "[credentials]" in admin.read_text()
    assert oct((sim.state / "admin.key").stat().st_mode & 0o777) == "0o600"

    # -- onboarding: the service's own key pair, profile and credentials ----------------------
    kms(admin, "principals", "keygen", "--out", str(work / "svc.key"))
    assert oct((work / "svc.key").stat().st_mode & 0o777) == "0o600"
    onboarded = kms_json(
        admin, "principals", "onboard", "--name", "orders", "--kind", "service",
        "--public-key", str(work / "svc.key.pub"), "--level", "3",
        "--key-purpose", "encrypt", "--profile-out", str(work / "svc.toml"),
    )  # fmt: skip
    assert isinstance(onboarded, dict)
    principal = onboarded["principal"]["id"]
    assert onboarded["keys"][0]["owner"] == principal
    svc = work / "svc.toml"
    assert Profile.load(svc).credentials["principal"] == principal

    # -- keys of each purpose, created by the service itself -----------------------------------
    made = {}
    hpke = "DHKEM-X25519-HKDF-SHA256/HKDF-SHA256/AES-256-GCM"
    for purpose, algorithm in (("encrypt", "AES-256-GCM"), ("sign", "Ed25519"), ("hpke", hpke)):
        key = kms_json(svc, "keys", "create", "--purpose", purpose)
        assert isinstance(key, dict)
        assert key["id"].startswith("key_") and key["algorithm"] == algorithm
        assert key["owner"] == principal
        made[purpose] = key["id"]
    # a wrap key: AES-256-GCM key-wrapping key; data keys are sealed under it, and only it
    wrap = kms_json(svc, "keys", "create", "--purpose", "wrap")
    assert isinstance(wrap, dict)
    assert wrap["purpose"] == "wrap" and wrap["algorithm"] == "AES-256-GCM"
    wrapped = kms_json(svc, "datakey", "--key", wrap["id"], "--context", "use=dek")
    assert isinstance(wrapped, dict) and wrapped["key_id"] == wrap["id"]
    unwrapped = kms(svc, "decrypt", "--context", "use=dek",
                    stdin=wrapped["ciphertext"].encode()).stdout  # fmt: skip
    assert unwrapped == base64.b64decode(wrapped["plaintext"])
    hsm_kek = kms(svc, "keys", "create", "--purpose", "wrap", "--algorithm", "AES-256-KWP",
                  "--json", expect=None)  # fmt: skip
    assert hsm_kek.returncode != 0 and b"AES-256-KWP" in hsm_kek.stderr
    made["wrap"] = wrap["id"]
    listed = kms_json(svc, "keys", "list")
    assert isinstance(listed, list)
    assert set(made.values()) <= {k["id"] for k in listed}
    enc, sig = made["encrypt"], made["sign"]

    # -- encrypt / decrypt with a context ----------------------------------------------------
    kms(svc, "keys", "consumer", enc)  # it will acknowledge rotations
    ct1 = kms(svc, "encrypt", "--key", enc, "--context", "tenant=acme", "--context", "app=orders",
              stdin=b"order #1").stdout.strip()  # fmt: skip
    out = kms(svc, "decrypt", "--context", "app=orders", "--context", "tenant=acme", stdin=ct1)
    assert out.stdout == b"order #1"
    wrong = kms(svc, "decrypt", "--context", "tenant=other", stdin=ct1, expect=None)
    assert wrong.returncode != 0 and b"decryption-failed" in wrong.stderr
    # ``kms --json CMD`` is ``kms CMD --json``: the problem document on stdout as well
    wrong_json = kms(svc, "--json", "decrypt", "--context", "tenant=other", stdin=ct1,
                     expect=None)  # fmt: skip
    assert wrong_json.returncode == wrong.returncode
    assert json.loads(wrong_json.stdout)["type"].endswith("/decryption-failed")
    assert kms(svc, "decrypt", stdin=ct1, expect=None).returncode != 0  # context missing

    # -- data key round trip -------------------------------------------------------------------
    dk = kms_json(svc, "datakey", "--key", enc, "--context", "file=a.bin")
    assert isinstance(dk, dict)
    plaintext_key = base64.b64decode(dk["plaintext"])
    assert len(plaintext_key) == 32
    opened = kms(svc, "decrypt", "--context", "file=a.bin", stdin=dk["ciphertext"].encode())
    assert opened.stdout == plaintext_key

    # -- sign and verify -------------------------------------------------------------------------
    signature = kms(svc, "sign", "--key", sig, stdin=b"invoice 42").stdout.decode().strip()
    kms(svc, "verify", "--key", sig, "--signature", signature, stdin=b"invoice 42")
    kms(svc, "verify", "--key", sig, "--signature", signature, stdin=b"invoice 43", expect=1)

    # -- rotation: old ciphertexts decrypt in the grace period, not once v1 is disabled ---------
    rotated = kms_json(svc, "keys", "rotate", enc)
    assert isinstance(rotated, dict)
    assert rotated["primary_version"] == 2
    assert [v["state"] for v in rotated["versions"]] == ["decrypt-only", "active"]
    events = kms_json(svc, "events", "--key", enc, "--after", "0", "--timeout", "1")
    assert isinstance(events, dict)
    assert events["events"][-1]["type"] == "rotated" and events["events"][-1]["new_version"] == 2
    ct2 = kms(svc, "encrypt", "--key", enc, "--context", "tenant=acme",
              stdin=b"order #2").stdout.strip()  # fmt: skip
    assert Ciphertext.from_bytes(base64.b64decode(ct2)).version == 2
    grace = kms(svc, "decrypt", "--context", "tenant=acme", "--context", "app=orders", stdin=ct1)
    assert grace.stdout == b"order #1"
    kms(svc, "ack", "--key", enc, "--version", "2")
    # every consumer switched: v1 is now pending deletion; it no longer decrypts
    described = kms_json(svc, "keys", "describe", enc)
    assert isinstance(described, dict)
    assert described["versions"][0]["state"] in ("pending-deletion", "disabled")
    refused = kms(svc, "decrypt", "--context", "tenant=acme", "--context", "app=orders",
                  stdin=ct1, expect=None)  # fmt: skip
    assert refused.returncode != 0 and b"key-unusable" in refused.stderr
    assert kms(svc, "decrypt", "--context", "tenant=acme", stdin=ct2).stdout == b"order #2"

    # a second key: rotate, then disable the old version explicitly
    other = kms_json(svc, "keys", "create", "--purpose", "encrypt")
    assert isinstance(other, dict)
    old_ct = kms(svc, "encrypt", "--key", other["id"], stdin=b"old").stdout.strip()
    kms(svc, "keys", "rotate", other["id"])
    assert kms(svc, "decrypt", stdin=old_ct).stdout == b"old"
    kms(svc, "keys", "disable", other["id"], "--version", "1")
    assert b"key-unusable" in kms(svc, "decrypt", stdin=old_ct, expect=None).stderr
    kms(svc, "keys", "enable", other["id"], "--version", "1")
    assert kms(svc, "decrypt", stdin=old_ct).stdout == b"old"

    # -- schedule and cancel deletion --------------------------------------------------------
    too_short = kms(svc, "keys", "schedule-deletion", sig, "--days", "3", expect=None)
    assert too_short.returncode != 0
    scheduled = kms_json(svc, "keys", "schedule-deletion", sig, "--days", "7")
    assert isinstance(scheduled, dict)
    assert scheduled["versions"][0]["state"] == "pending-deletion"
    assert scheduled["versions"][0]["deletion_due"]
    assert kms(svc, "sign", "--key", sig, stdin=b"x", expect=None).returncode != 0
    cancelled = kms_json(svc, "keys", "cancel-deletion", sig)
    assert isinstance(cancelled, dict)
    assert cancelled["versions"][0]["state"] == "disabled"
    kms(svc, "keys", "enable", sig)
    kms(svc, "sign", "--key", sig, stdin=b"x")

    # -- attested release to a simulated client enclave, receipt recorded ----------------------
    policy = {"platform": "sev-snp", "allow_simulated": True,
              "measurements": [{"name": "client", "value": CLIENT_MEASUREMENT.hex()}]}  # fmt: skip
    (work / "policy.json").write_text(json.dumps(policy))
    kms(svc, "keys", "release-policy", enc, "--policy", str(work / "policy.json"))
    device = SimulatedSnp.load_or_create(sim.state / "hw")  # the client's (fake) hardware
    client_key = X25519PrivateKey.generate()
    public = client_key.public_key().public_bytes_raw()
    with SyncAuthorizedClient(Profile.load(svc)) as client:
        challenge = base64.b64decode(client.post(f"/v1/keys/{enc}/release-challenge")["challenge"])
        report = device.report(report_data=release_report_data(public, challenge),
                               measurement=CLIENT_MEASUREMENT)  # fmt: skip
        released = client.post(f"/v1/keys/{enc}/release", {
            "platform": "sev-snp", "evidence": base64.b64encode(report).decode(),
            "certs": [base64.b64encode(c).decode() for c in device.certs()],
            "client_public_key": base64.b64encode(public).decode(),
            "challenge": base64.b64encode(challenge).decode(),
        })  # fmt: skip
        material = unwrap_released(base64.b64decode(released["wrapped"]), client_key, enc,
                                   released["version"])  # fmt: skip
        # the client enclave now opens the KMS's ciphertext itself
        envelope = Ciphertext.from_bytes(base64.b64decode(ct2))
        opened_locally = SymmetricKey(enc, released["version"], material).decrypt(
            envelope, canonical_context({"tenant": "acme"})
        )
        assert opened_locally == b"order #2"
        proof = receipt_proof(material, released["release_id"])
        receipt = client.post(f"/v1/releases/{released['release_id']}/receipt", {"proof": proof})
        assert receipt["confirmed"] is True and receipt["key_id"] == enc

    # -- access: the service cannot administer; a disabled service is refused ------------------
    denied = kms(svc, "principals", "describe", principal, expect=None)
    assert denied.returncode != 0 and b"access-denied" in denied.stderr
    kms(admin, "principals", "disable", principal)
    gone = kms(svc, "keys", "list", "--json", expect=None)
    assert gone.returncode != 0 and b"401" in gone.stderr
    problem = json.loads(gone.stdout)
    assert problem["status"] == 401
