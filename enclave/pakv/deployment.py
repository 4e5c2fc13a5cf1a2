"""The K/V key service inside a running KMS: its policy, trust roots and wrapping key.

This module owns what ties the ``pakv`` package to a bootstrapped KMS (``KmsRuntime``):

- the **release policy** comes from the attested launch configuration (``launch.json``,
  whose hash the platform attests: SNP HOST_DATA, TDX MRCONFIGID, Nitro PCR16), section
  ``pakv.release_policy``, a ``verifier.policy.Policy`` document naming the K/V server
  images that may receive private keys. The host cannot change it without changing what
  the KMS attests, and a KMS state refuses to start on a changed launch configuration.
  No section: every private-key fetch is refused (public keys are still served). A section
  that does not parse, or that names no measurement (which would accept any image), stops
  the start: a release policy must never be wider than its author meant;
- the **trust roots** for K/V servers' evidence: the pinned vendor roots on hardware, the
  fake hardware's roots (``STATE/hw``) in simulation, so simulated evidence verifies only
  in simulation and only under a policy that sets ``allow_simulated``;
- the **wrapping key** of the key set's private halves: a dedicated AES-256-GCM data key
  made by the KMS key hierarchy (generated in the HSM, wrapped by the current KEK, stored
  as ``pakv_meta/wrapping-key``); the 32 bytes ``KeySet`` uses are derived from it with
  HKDF in enclave memory. No key in clear ever reaches the disk.

Must never: widen a release policy it cannot parse, or keep the wrapping key anywhere but
in memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave.config import ConfigError, EnclaveConfig
from enclave.keys.material import SymmetricKey
from enclave.keys.metadata import Algorithm, KeyMetadata, Purpose
from enclave.pakv.keyset import WRAPPING_KEY_BYTES
from enclave.pakv.store import META_KIND
from enclave.runtime import KmsRuntime, encode_key
from enclave.storage.errors import VersionConflict
from verifier.claims import Platform
from verifier.errors import InvalidPolicy
from verifier.policy import Policy
from verifier.roots import TrustRoots

log = logging.getLogger("enclave.pakv.deployment")

LAUNCH_SECTION = "pakv"
RELEASE_POLICY_FIELD = "release_policy"
WRAPPING_KEY_ID = "wrapping-key"
WRAPPING_KEY_OWNER = "kms:pakv"
_WRAPPING_INFO = b"enclave-kms/pakv-keyset-wrapping/v1"


def release_policy_from_launch_config(launch_config: bytes) -> Policy | None:
    """The ``pakv.release_policy`` of a canonical launch configuration, or ``None``."""
    try:
        document: Any = json.loads(launch_config)
    except (ValueError, UnicodeDecodeError):
        raise ConfigError("the launch configuration is not JSON") from None
    section = document.get(LAUNCH_SECTION) if isinstance(document, Mapping) else None
    if section is None:
        return None
    if not isinstance(section, Mapping) or set(section) - {RELEASE_POLICY_FIELD}:
        raise ConfigError(
            f"launch configuration: {LAUNCH_SECTION} is an object with the one field "
            f"{RELEASE_POLICY_FIELD!r}"
        )
    raw = section.get(RELEASE_POLICY_FIELD)
    if raw is None:
        return None
    try:
        policy = Policy.from_mapping(dict(raw) if isinstance(raw, Mapping) else raw)
    except InvalidPolicy as exc:
        raise ConfigError(f"launch configuration: pakv.release_policy: {exc}") from None
    if not policy.measurements:
        raise ConfigError(
            "launch configuration: pakv.release_policy names no measurement, so it would "
            "release keys to any image: list the K/V server measurements"
        )
    return policy


def trust_roots(config: EnclaveConfig, platform: Platform) -> TrustRoots:
    """The roots K/V servers' evidence must chain to (see the module docstring)."""
    if config.attestation == "hardware":
        return TrustRoots.production()
    from enclave.attestation.providers import simulated_device

    pem = simulated_device(platform, config.hardware_dir).roots_pem()
    return TrustRoots.from_pem(
        {platform: pem}, simulated=True, label=f"simulated:{config.hardware_dir}"
    )


async def open_wrapping_key(runtime: KmsRuntime) -> bytes:
    """The key set's wrapping key: made by the hierarchy on first use, unwrapped after."""
    record = await runtime.store.get(META_KIND, WRAPPING_KEY_ID)
    if record is None:
        metadata, _ = await runtime.hierarchy.create_key(
            Purpose.ENCRYPT,
            Algorithm.AES_256_GCM,
            kek=(await runtime.current_kek()).primary or runtime.kek_version,
            owner=WRAPPING_KEY_OWNER,
            description="wraps the K/V request keys' private halves (pakv)",
        )
        try:
            await runtime.store.put(
                META_KIND, WRAPPING_KEY_ID, encode_key(metadata), expected_version=0
            )
            log.info("pakv wrapping key created: %s", metadata.key_id)
        except VersionConflict:
            pass  # made meanwhile by another start of this feature: use that one
        record = await runtime.store.get(META_KIND, WRAPPING_KEY_ID)
        if record is None:
            raise ConfigError("the pakv wrapping key record vanished")
    metadata = KeyMetadata.from_dict(json.loads(record.value))
    version = metadata.primary
    if version is None:
        raise ConfigError(f"the pakv wrapping key {metadata.key_id} has no active version")
    kek = await runtime.kek_for(version)
    key = await runtime.hierarchy.unwrap_for_use(version, kek)
    if not isinstance(key, SymmetricKey):
        raise ConfigError("the pakv wrapping key is not an AES-256 key")
    return HKDF(SHA256(), WRAPPING_KEY_BYTES, salt=None, info=_WRAPPING_INFO).derive(key.secret)
