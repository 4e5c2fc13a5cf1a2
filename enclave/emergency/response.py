"""The key compromise response, the seed's Emergency Procedures, as code.

``respond_to_compromise(key_id)`` runs the steps in order, each one durable before the next:

1. **mark compromised**: every version of the key that still has material is flagged
   ``compromised`` (``KeyHierarchy.mark_compromised``): a compromised version never
   encrypts, signs or wraps again; it still decrypts and unwraps, so data can migrate;
2. **emergency rotation**: a new active version (the old active one becomes decrypt-only),
   through the KMS's own rotation (``RotationService``), so the rotation event, the
   consumer switch tracking and the webhook are the usual ones;
3. **rewrap**: for a KEK, every key (service keys and system keys) with a version wrapped
   by a compromised KEK version is rewrapped in the HSM under the new KEK version
   (AES keys with ``rewrap_data_key``, never leaving the HSM; Ed25519/X25519 private halves
   with ``unwrap_bytes``/``wrap_bytes``); for a data key, the ciphertexts belong to the
   dependents, who re-encrypt them with ``keys.re_encrypt`` (decrypt under the compromised
   version, encrypt under the new one) when notified;
4. **notification**: a ``compromised`` rotation event (kind ``rotation_events``, read by
   ``wait_for_events`` long polls, and sent to the rotation webhook) names the compromised
   versions and the new one.

``isolate_principal`` sets a principal's ``isolated`` flag (no level at all until an
administrator enables it again); ``isolate_key`` disables every usable version of a key
(neither encrypts nor decrypts until enabled).

Must never: skip a step silently (what could not be done, such as an RSA private half that
is not rewrapped, is returned in the report), or put key material into a report or event.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from enclave.hsm.backend import HsmBackend, KekRef
from enclave.keys.hierarchy import KeyHierarchy
from enclave.keys.metadata import Algorithm, KeyMetadata, KeyVersion, VersionState
from enclave.kms import persist
from enclave.kms.errors import NotFound
from enclave.kms.keys import KeyRepository
from enclave.kms.rotation import RotationEvent, RotationService, _append_event
from enclave.kms.service import KmsService
from enclave.runtime import SYSTEM_KEYS_KIND

log = logging.getLogger("enclave.emergency")

AuditFn = Callable[..., Awaitable[object]]


class EmergencyError(Exception):
    type = "emergency-error"


@dataclass(frozen=True)
class CompromiseReport:
    key_id: str
    kind: str
    compromised_versions: tuple[int, ...]
    new_version: int
    rewrapped: tuple[str, ...] = ()
    not_rewrapped: tuple[str, ...] = ()
    events: tuple[int, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "kind": self.kind,
            "compromised_versions": list(self.compromised_versions),
            "new_version": self.new_version,
            "rewrapped": list(self.rewrapped),
            "not_rewrapped": list(self.not_rewrapped),
            "events": list(self.events),
        }


class EmergencyService:
    """The emergency procedures over one KMS service (its repository, rotation, HSM)."""

    def __init__(
        self,
        kms: KmsService,
        hierarchy: KeyHierarchy,
        hsm: HsmBackend,
        clock: Callable[[], datetime],
    ) -> None:
        self._kms = kms
        self._repo: KeyRepository = kms.repository
        self._rotation: RotationService = kms.rotation
        self._hierarchy = hierarchy
        self._hsm = hsm
        self._clock = clock

    # -- compromise ------------------------------------------------------------------------

    async def respond_to_compromise(self, key_id: str, *, reason: str = "") -> CompromiseReport:
        kind = self._kind_of(key_id)

        async def mark(m: KeyMetadata) -> KeyMetadata:
            for version in m.versions:
                if version.wrapped and not version.compromised:
                    m = await self._hierarchy.mark_compromised(m, version.version)
            return m

        marked = await self._repo.update(key_id, mark, kind=kind)
        compromised = tuple(v.version for v in marked.versions if v.compromised)
        log.warning("key %s marked compromised (versions %s)", key_id, compromised)
        if kind == KeyRepository.KEK_KIND:
            rotated = await self._repo.update(
                key_id, lambda m: self._hierarchy.rotate(m, None), kind=kind
            )
            rewrapped, skipped = await self._rewrap_under(rotated, set(compromised))
        else:
            rotated = await self._rotation_of(key_id)
            rewrapped, skipped = (), ()
        new = rotated.latest.version
        event = await self._notify(key_id, "compromised", new, compromised, reason)
        return CompromiseReport(key_id, kind, compromised, new, rewrapped, skipped, (event.seq,))

    async def rotate(self, key_id: str) -> dict[str, Any]:
        """An emergency rotation without a compromise (the usual events follow)."""
        kind = self._kind_of(key_id)
        if kind == KeyRepository.KEK_KIND:
            rotated = await self._repo.update(
                key_id, lambda m: self._hierarchy.rotate(m, None), kind=kind
            )
        else:
            rotated = await self._rotation_of(key_id)
        return {"key_id": key_id, "new_version": rotated.latest.version}

    async def _rotation_of(self, key_id: str) -> KeyMetadata:
        # RotationService's own rotation: the "rotated" event, the consumers' pending switch
        # and the webhook are exactly those of a scheduled rotation.
        metadata, _event = await self._rotation._rotate(key_id)
        return metadata

    async def _rewrap_under(
        self, kek: KeyMetadata, compromised: set[int]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        target = kek.primary
        assert target is not None  # a KEK has an active version right after rotation
        rewrapped: list[str] = []
        skipped: list[str] = []
        for kind in (KeyRepository.KIND, SYSTEM_KEYS_KIND):
            for ref in self._repo.store.list(kind):
                value, _ = persist.read(self._repo.store, kind, ref.id)
                metadata = KeyMetadata.from_dict(value)
                affected = [
                    v
                    for v in metadata.versions
                    if v.wrapped
                    and v.wrapped_by.key_id == kek.key_id
                    and v.wrapped_by.version in compromised
                ]
                if not affected:
                    continue
                if metadata.algorithm is Algorithm.RSA_4096_PSS_SHA256:
                    skipped.append(metadata.key_id)
                    continue

                async def change(m: KeyMetadata, kek: KeyMetadata = kek) -> KeyMetadata:
                    for version in m.versions:
                        if (
                            version.wrapped
                            and version.wrapped_by.key_id == kek.key_id
                            and version.wrapped_by.version in compromised
                        ):
                            m = m.with_version(await self._rewrap(version, kek, target))
                    return m

                await self._repo.update(ref.id, change, kind=kind)
                rewrapped.append(metadata.key_id)
        return tuple(rewrapped), tuple(skipped)

    async def _rewrap(
        self, version: KeyVersion, kek: KeyMetadata, target: KeyVersion
    ) -> KeyVersion:
        old = kek.version(version.wrapped_by.version)
        old_ref = KekRef(old.cache_id, old.wrapped)
        new_ref = KekRef(target.cache_id, target.wrapped)
        if version.algorithm is Algorithm.AES_256_GCM:
            wrapped = await self._hsm.rewrap_data_key(old_ref, new_ref, version.wrapped)
        else:
            secret = await self._hsm.unwrap_bytes(old_ref, version.wrapped)
            wrapped = await self._hsm.wrap_bytes(new_ref, secret)
            del secret
        await self._hierarchy.forget(version)
        return replace(version, wrapped=wrapped, wrapped_by=target.ref)

    async def _notify(
        self, key_id: str, kind: str, new: int, old: tuple[int, ...], reason: str
    ) -> RotationEvent:
        created: list[RotationEvent] = []
        event = {
            "key_id": key_id,
            "type": kind,
            "new_version": new,
            "old_version": max(old) if old else None,
            "at": self._clock().isoformat(),
            "grace_until": None,
            "missing": [],
        }
        with self._repo.store.transaction() as tx:
            created.append(_append_event(tx, event))
        await self._rotation._published(created)
        log.warning("dependents of %s notified (%s, reason: %s)", key_id, kind, reason[:64])
        return created[0]

    # -- isolation -------------------------------------------------------------------------

    async def isolate_principal(self, principal_id: str) -> dict[str, Any]:
        principal = self._kms.principal_directory.update(
            principal_id, lambda p: p.with_changes(isolated=True)
        )
        return {"principal_id": principal.id, "isolated": principal.isolated}

    async def isolate_key(self, key_id: str) -> dict[str, Any]:
        kind = self._kind_of(key_id)

        async def change(m: KeyMetadata) -> KeyMetadata:
            for version in m.versions:
                if version.state in (VersionState.ACTIVE, VersionState.DECRYPT_ONLY):
                    m = await self._hierarchy.transition(m, version.version, VersionState.DISABLED)
            return m

        metadata = await self._repo.update(key_id, change, kind=kind)
        disabled = [v.version for v in metadata.versions if v.state is VersionState.DISABLED]
        return {"key_id": key_id, "disabled_versions": disabled}

    def _kind_of(self, key_id: str) -> str:
        for kind in (KeyRepository.KIND, KeyRepository.KEK_KIND):
            _, version = persist.read(self._repo.store, kind, key_id)
            if version:
                return kind
        raise NotFound(f"no key {key_id}")
