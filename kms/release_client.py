"""SIMULATED attested release client: plays a client enclave that asks the KMS for a key.

This is what ``kms release`` runs. It is a simulation: the "client enclave" is this process,
and its evidence comes from the *fake* hardware of a ``kms-sim`` state directory
(``STATE/hw``, ``enclave.attestation.simulated``), so the KMS releases to it only when the
key's release policy names its measurement *and* sets ``allow_simulated: true``. The
evidence is genuine simulated evidence in the platform's real format, checked by the KMS's
own verifier under the fake roots; nothing is bypassed. A real client enclave does the same
steps with its platform's evidence provider.

The steps (``enclave.kms.release`` has the formats):

1. make an ephemeral X25519 key pair (the private half never leaves this process);
2. ``POST /v1/keys/{id}/release-challenge`` -> a single-use challenge;
3. evidence of the client workload's launch whose report_data is
   ``release_report_data(public key, challenge)``;
4. ``POST /v1/keys/{id}/release`` -> the key's active version HPKE-wrapped to that key;
5. unwrap it locally;
6. ``POST /v1/releases/{release_id}/receipt`` with ``receipt_proof(material, release_id)``,
   which the KMS checks and records (the audit log's ``keys.confirm_receipt``).

The example workload (``SIM_RELEASE_CLIENT``, measurement
``SHA-384("kms-sim/release-client-workload/v1")``) is the default, and
``example_release_policy`` is a release policy that names it.

Must never: print, log or put in an exception the released key material; make new fake
hardware (a directory without the platform's fake hardware is refused, since evidence from
other roots could never verify).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.attestation.launch import LaunchIdentity
from enclave.kms.release import receipt_proof, release_report_data, unwrap_released
from kms.errors import KmsError, UsageError
from verifier.claims import Platform

SIM_RELEASE_CLIENT_NAME = "kms-sim-release-client"
SIM_RELEASE_CLIENT = LaunchIdentity(
    measurement=hashlib.sha384(b"kms-sim/release-client-workload/v1").digest(),
    config=b'{"workload":"release-client"}',
)
MEASUREMENT_BYTES = 48

# A file each platform's fake hardware keeps in its directory (enclave.attestation.simulated):
# without it, ``load_or_create`` would make new hardware under roots the KMS does not trust.
_HARDWARE_MARKERS: dict[Platform, str] = {
    "sev-snp": "sim-vcek-key.pem",
    "tdx": "sim-tdx-pck-key.pem",
    "nitro": "nitro-hw.pem",
}


class ReleaseClientError(KmsError):
    """The released key could not be unwrapped, or the KMS's answer was malformed."""

    type = "release-client-failed"
    title = "The simulated client could not complete the release"


class JsonPoster(Protocol):
    """What the client needs: ``kms.credentials.SyncAuthorizedClient.post``."""

    def post(self, path: str, body: Any = None, *, idempotent: bool = False) -> Any: ...


@dataclass(frozen=True)
class ReleasedKey:
    """A completed release: the unwrapped material (never in ``repr``) and the receipt."""

    release_id: str
    key_id: str
    version: int
    algorithm: str
    measurement: str
    material: bytes = field(repr=False)
    receipt: dict[str, Any] = field(default_factory=dict)

    @property
    def confirmed(self) -> bool:
        return self.receipt.get("confirmed") is True

    def summary(self) -> dict[str, Any]:
        """Everything but the key material (for ``--json``)."""
        return {
            "simulated": True,
            "release_id": self.release_id,
            "key_id": self.key_id,
            "version": self.version,
            "algorithm": self.algorithm,
            "client_measurement": self.measurement,
            "receipt": {
                "confirmed": self.confirmed,
                "confirmed_at": self.receipt.get("confirmed_at"),
                "released_at": self.receipt.get("released_at"),
                "principal_id": self.receipt.get("principal_id"),
            },
        }


def example_release_policy(
    platform: Platform, launch: LaunchIdentity = SIM_RELEASE_CLIENT
) -> dict[str, Any]:
    """A release policy (``kms keys release-policy ID --policy FILE``) naming the simulated
    client workload; ``allow_simulated`` makes it useless against real hardware."""
    return {
        "description": "SIMULATED: the kms-sim release client workload (kms.release_client)",
        "platform": platform,
        "allow_simulated": True,
        "allow_debug": False,
        "measurements": [{"name": SIM_RELEASE_CLIENT_NAME, "value": launch.measurement.hex()}],
    }


def client_launch(measurement_hex: str | None) -> LaunchIdentity:
    """The simulated client workload: ``SIM_RELEASE_CLIENT`` or one of this measurement."""
    if measurement_hex is None:
        return SIM_RELEASE_CLIENT
    try:
        measurement = bytes.fromhex(measurement_hex)
    except ValueError:
        raise UsageError("--measurement is hexadecimal") from None
    if len(measurement) != MEASUREMENT_BYTES:
        raise UsageError(
            f"--measurement is {MEASUREMENT_BYTES} bytes ({2 * MEASUREMENT_BYTES} hex)"
        )
    return LaunchIdentity(measurement=measurement, config=SIM_RELEASE_CLIENT.config)


def hardware_dir(path: Path, platform: Platform) -> Path:
    """The fake hardware directory: ``path`` itself, or ``path/hw`` for a kms-sim state
    directory. Refused when it holds no fake ``platform`` hardware."""
    for candidate in (path, path / "hw"):
        if (candidate / _HARDWARE_MARKERS[platform]).is_file():
            return candidate
    raise UsageError(
        f"no simulated {platform} hardware in {path} (give the kms-sim state directory "
        "or its hw/ directory)"
    )


def _b64(document: dict[str, Any], name: str) -> bytes:
    value = document.get(name)
    if not isinstance(value, str):
        raise ReleaseClientError(f"the KMS's answer has no {name}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ReleaseClientError(f"the KMS's {name} is not base64") from None


def release_to_simulated_client(
    client: JsonPoster,
    key_id: str,
    *,
    platform: Platform,
    hw_dir: Path,
    launch: LaunchIdentity = SIM_RELEASE_CLIENT,
) -> ReleasedKey:
    """Run one release as the simulated client enclave ``launch`` on the fake hardware in
    ``hw_dir`` (from ``hardware_dir``), confirm receipt, and return the material."""
    from enclave.attestation.providers import simulated_device

    key_path = f"/v1/keys/{urllib.parse.quote(key_id, safe='')}"
    ephemeral = X25519PrivateKey.generate()
    public = ephemeral.public_key().public_bytes_raw()
    challenge = _b64(client.post(key_path + "/release-challenge"), "challenge")
    provider = simulated_device(platform, hw_dir).provider(launch)
    evidence = provider.evidence(release_report_data(public, challenge))
    released = client.post(
        key_path + "/release",
        {
            "platform": evidence.platform,
            "evidence": base64.b64encode(evidence.evidence).decode(),
            "certs": [base64.b64encode(c).decode() for c in evidence.certs],
            "collateral": [base64.b64encode(c).decode() for c in evidence.collateral],
            "client_public_key": base64.b64encode(public).decode(),
            "challenge": base64.b64encode(challenge).decode(),
        },
    )
    release_id, version = released.get("release_id"), released.get("version")
    if not isinstance(release_id, str) or not isinstance(version, int):
        raise ReleaseClientError("the KMS's release answer has no release_id or version")
    try:
        material = unwrap_released(_b64(released, "wrapped"), ephemeral, key_id, version)
    except ReleaseClientError:
        raise
    except Exception:
        # Opaque on purpose: which check failed inside HPKE is no business of the output.
        raise ReleaseClientError(f"{release_id}: the wrapped key does not unwrap") from None
    receipt = client.post(
        f"/v1/releases/{urllib.parse.quote(release_id, safe='')}/receipt",
        {"proof": receipt_proof(material, release_id)},
    )
    return ReleasedKey(
        release_id=release_id,
        key_id=key_id,
        version=version,
        algorithm=str(released.get("algorithm", "")),
        measurement=launch.measurement.hex(),
        material=material,
        receipt=dict(receipt) if isinstance(receipt, dict) else {},
    )
