"""``KmsRuntime``: the services a bootstrapped KMS runs on, in one object.

``enclave.bootstrap.bootstrap`` builds it (and only it does); the application keeps it under
``enclave.app.RUNTIME`` for the life of the app. A request handler reaches every service
from it::

    runtime = request.app[RUNTIME]
    metadata, version = await runtime.hierarchy.create_key(
        Purpose.ENCRYPT, Algorithm.AES_256_GCM, kek=runtime.kek_version, owner="svc-a")
    await runtime.save_key(metadata)
    ...
    metadata = await runtime.load_key(key_id)
    version = metadata.primary
    kek = await runtime.kek_for(version)
    blob = await runtime.hierarchy.encrypt(version, kek, b"data", b"context")
    await runtime.audit.record(principal=..., operation=..., outcome="allowed")

Store layout (kinds shared with ``enclave.kms.persist``; values are JSON): service keys
under ``keys`` and KEKs under ``keks`` (id = key id, value = ``KeyMetadata.to_dict``), the
current KEK's id under ``kms_config/current-kek``; bootstrap's own records under
``system`` (``kek``, ``identity``, ``policy``) and the system identity's keys under
``system_keys``, so they never appear in a listing of service keys.

Must never: hold a secret in a field that prints (every key object here keeps its secret
out of ``repr``), or close a backend it was lent (``owns_hsm``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from enclave.attestation.evidence import EvidenceProvider
from enclave.attestation.launch import LaunchIdentity
from enclave.attestation.providers import Launch
from enclave.audit.log import AuditLog
from enclave.config import EnclaveConfig
from enclave.hsm.backend import HsmBackend
from enclave.hsm.counter import HsmMonotonicCounter
from enclave.identity import SystemIdentity
from enclave.keys.entropy import EntropySource
from enclave.keys.errors import KeyMetadataError, WrongWrappingKey
from enclave.keys.hierarchy import KeyHierarchy
from enclave.keys.metadata import KeyMetadata, KeyVersion
from enclave.sealing.format import Binding
from enclave.sealing.sealer import Sealer, SealKeyProvider
from enclave.storage.aio import AsyncStore

log = logging.getLogger("enclave.runtime")

KEYS_KIND = "keys"
KEKS_KIND = "keks"
KMS_CONFIG_KIND = "kms_config"
CURRENT_KEK_ID = "current-kek"
SYSTEM_KIND = "system"
SYSTEM_KEYS_KIND = "system_keys"


def encode_key(metadata: KeyMetadata) -> bytes:
    """The stored form of key metadata (canonical JSON, as ``enclave.kms.persist``)."""
    return json.dumps(metadata.to_dict(), sort_keys=True, separators=(",", ":")).encode()


class KeyNotFound(LookupError):
    """No key with this id is in the store."""


@dataclass(frozen=True)
class ActivePolicy:
    """The launch configuration activated at the first boot (bootstrap step 6).

    ``launch_config`` is the canonical JSON the platform attests (SNP HOST_DATA, TDX
    MRCONFIGID, Nitro PCR16); ``admins``, ``quorum_threshold`` and ``reference_policy``
    are read from it.
    """

    launch_config: bytes
    config_sha256: str
    admins: tuple[Any, ...]
    quorum_threshold: int
    reference_policy: Any
    activated_at: str


@dataclass(frozen=True)
class KmsRuntime:
    """Everything the KMS runs on once bootstrap has completed (see the module docstring).

    ``provider`` is the seal-key provider behind ``sealer``; the evidence provider is
    ``launch.provider`` (also ``evidence_provider``). ``kek`` is the KEK current at boot
    (the initial one on a first boot) and ``kek_version`` its active version; after a KEK
    rotation ask ``current_kek()``. ``first_boot``: this start created the KMS's identity.
    """

    config: EnclaveConfig
    launch: Launch
    launch_identity: LaunchIdentity
    binding: Binding
    provider: SealKeyProvider = field(repr=False)
    sealer: Sealer = field(repr=False)
    hsm: HsmBackend = field(repr=False)
    counter: HsmMonotonicCounter = field(repr=False)
    hierarchy: KeyHierarchy = field(repr=False)
    store: AsyncStore = field(repr=False)
    audit: AuditLog = field(repr=False)
    identity: SystemIdentity = field(repr=False)
    kek: KeyMetadata = field(repr=False)
    policy: ActivePolicy = field(repr=False)
    entropy: EntropySource = field(repr=False)
    clock: Callable[[], datetime] = field(repr=False)
    first_boot: bool = False
    owns_hsm: bool = True
    _closed: list[bool] = field(default_factory=lambda: [False], repr=False, compare=False)

    @property
    def kms_id(self) -> str:
        return self.identity.kms_id

    @property
    def evidence_provider(self) -> EvidenceProvider:
        return self.launch.provider

    @property
    def kek_version(self) -> KeyVersion:
        primary = self.kek.primary
        if primary is None:
            raise KeyMetadataError(f"the KEK {self.kek.key_id} has no active version")
        return primary

    # -- key records ----------------------------------------------------------------------

    async def save_key(self, metadata: KeyMetadata, *, expected_version: int | None = None) -> int:
        """Store ``metadata`` under ``keys/<key_id>`` (``keks/`` for a KEK); returns the
        record's new version. ``expected_version=0``: only if it does not exist yet."""
        kind = KEKS_KIND if metadata.is_kek else KEYS_KIND
        return await self.store.put(
            kind, metadata.key_id, encode_key(metadata), expected_version=expected_version
        )

    async def load_key(self, key_id: str, *, kind: str = KEYS_KIND) -> KeyMetadata:
        record = await self.store.get(kind, key_id)
        if record is None:
            raise KeyNotFound(f"no key {key_id} ({kind})")
        return KeyMetadata.from_dict(json.loads(record.value))

    async def list_key_ids(self) -> list[str]:
        return [ref.id for ref in await self.store.list(KEYS_KIND)]

    async def current_kek(self) -> KeyMetadata:
        """The KEK that ``kms_config/current-kek`` names now (it moves on KEK rotation)."""
        record = await self.store.get(KMS_CONFIG_KIND, CURRENT_KEK_ID)
        if record is None:
            return self.kek
        return await self.load_key(str(json.loads(record.value)["key_id"]), kind=KEKS_KIND)

    async def kek_for(self, version: KeyVersion) -> KeyVersion:
        """The KEK version that wrapped ``version`` (looked up by ``wrapped_by``)."""
        ref = version.wrapped_by
        if ref.is_master:
            raise WrongWrappingKey(f"{version.cache_id} is a KEK (wrapped by the master key)")
        return (await self.load_key(ref.key_id, kind=KEKS_KIND)).version(ref.version)

    # -- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the audit writer, close the store, then the HSM backend (if owned)."""
        if self._closed[0]:
            return
        self._closed[0] = True
        try:
            await asyncio.to_thread(self.audit.stop)
        finally:
            try:
                await self.store.close()
            finally:
                if self.owns_hsm:
                    await self.hsm.close()
        log.info("runtime closed: kms_id=%s", self.kms_id)
