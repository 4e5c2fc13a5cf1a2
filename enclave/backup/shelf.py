"""Where bundles live on a KMS: the primary's shelf and the secondary's replicas.

``BackupShelf`` (``DATA/backups``) keeps each bundle this KMS exported
(``<backup_id>.bundle``, signed and encrypted: safe on the host's disk) with its backup key
sealed to this launch (``<backup_id>.key.sealed``): only this enclave can unseal it, to
release it to an attested secondary. ``ReplicaPuller`` is the secondary's replication
loop: it fetches the primary's newest bundle through the untrusted hosts, verifies it under
the primary's pinned identity key, obtains the backup key by attestation
(``enclave.backup.replication``), checks that the bundle opens with it, and keeps the
bundle with the key sealed to *its own* launch (``DATA/replicas``), ready for a
quorum-approved restore with ``key_source = "replica"``.

Must never: store a backup key unsealed, or keep a replica whose bundle does not verify
and open with the released key.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from enclave.attestation.evidence import EvidenceProvider
from enclave.backup.bundle import BackupKey, CreatedBackup, decrypt_bundle, verify_bundle
from enclave.backup.errors import BackupError, ReplicationRefused
from enclave.backup.manifest import BACKUP_ID_RE
from enclave.backup.replication import KeyRelease, ReplicationSecondary
from enclave.backup.state import bundle_digest
from enclave.sealing.sealer import Sealer

log = logging.getLogger("enclave.backup.shelf")

Transport = Callable[[str, str, bytes | None], Awaitable[tuple[int, bytes]]]


def _check_id(backup_id: str) -> str:
    if not isinstance(backup_id, str) or not BACKUP_ID_RE.fullmatch(backup_id):
        raise BackupError("a backup id is bak_ + 32 hex digits")
    return backup_id


class BackupShelf:
    def __init__(self, directory: Path, sealer: Sealer, *, subdir: str = "backups") -> None:
        self._dir = directory / subdir
        self._sealer = sealer

    def save(self, created: CreatedBackup) -> str:
        return self.put(
            created.manifest.backup_id,
            created.bundle,
            created.backup_key,
            created.manifest.created_at.isoformat(),
        )

    def put(self, backup_id: str, bundle: bytes, key: BackupKey, created_at: str) -> str:
        from enclave.bootstrap import write_atomically

        _check_id(backup_id)
        digest = bundle_digest(bundle)
        write_atomically(self._dir / f"{backup_id}.key.sealed", self._sealer.seal(key.secret))
        write_atomically(self._dir / f"{backup_id}.bundle", bundle)
        summary = {"backup_id": backup_id, "created_at": created_at, "sha256": digest,
                   "bytes": len(bundle)}  # fmt: skip
        write_atomically(self._dir / f"{backup_id}.json", json.dumps(summary).encode())
        return digest

    def describe(self) -> list[dict[str, Any]]:
        if not self._dir.is_dir():
            return []
        out = []
        for path in self._dir.glob("bak_*.json"):
            try:
                out.append(json.loads(path.read_bytes()))
            except ValueError:
                continue
        return sorted(out, key=lambda s: (str(s.get("created_at")), str(s.get("backup_id"))))

    def latest(self) -> str | None:
        described = self.describe()
        return str(described[-1]["backup_id"]) if described else None

    def has(self, backup_id: str) -> bool:
        return (self._dir / f"{_check_id(backup_id)}.bundle").exists()

    def bundle(self, backup_id: str) -> bytes:
        path = self._dir / f"{_check_id(backup_id)}.bundle"
        if not path.exists():
            raise BackupError(f"no bundle {backup_id} here")
        return path.read_bytes()

    def backup_key(self, backup_id: str) -> BackupKey:
        from enclave.bootstrap import unseal_file

        path = self._dir / f"{_check_id(backup_id)}.key.sealed"
        if not path.exists():
            raise BackupError(f"no key for bundle {backup_id} here")
        return BackupKey(backup_id, unseal_file(self._sealer, path, "a backup key", "backup"))


class ReplicaPuller:
    """The secondary's side of replication (see the module docstring)."""

    def __init__(
        self,
        *,
        transport: Transport,
        provider: EvidenceProvider,
        primary_identity_key: bytes,
        directory: Path,
        sealer: Sealer,
        interval: timedelta = timedelta(hours=1),
    ) -> None:
        self._send = transport
        self._provider = provider
        self._identity = primary_identity_key
        self.shelf = BackupShelf(directory, sealer, subdir=".")
        self.interval = interval

    async def pull_once(self) -> Mapping[str, Any]:
        status, bundle = await self._send("GET", "/v1/replication/bundles/latest", None)
        if status == 404:
            return {"pulled": None}
        if status != 200:
            raise ReplicationRefused(f"the primary answered {status} for its newest bundle")
        manifest = verify_bundle(bundle, self._identity)
        if self.shelf.has(manifest.backup_id):
            return {"pulled": None, "latest": manifest.backup_id}
        secondary = ReplicationSecondary(self._provider)
        status, body = await self._send("POST", "/v1/replication/challenge", b"{}")
        if status != 200:
            raise ReplicationRefused(f"the primary answered {status} for a challenge")
        challenge = base64.b64decode(json.loads(body)["challenge"])
        request = secondary.request(challenge)
        payload = json.dumps({"backup_id": manifest.backup_id, "request": request.to_dict()})
        status, body = await self._send("POST", "/v1/replication/release", payload.encode())
        if status != 200:
            raise ReplicationRefused(f"the primary refused to release the key ({status}): "
                                     f"{body[:200].decode(errors='replace')}")  # fmt: skip
        answer = json.loads(body)
        release = KeyRelease(
            str(answer["primary"]), str(answer["backup_id"]), base64.b64decode(answer["wrapped"])
        )
        key = secondary.unwrap(release)
        records = decrypt_bundle(bundle, key, self._identity)  # it opens, or raises
        self.shelf.put(manifest.backup_id, bundle, key, manifest.created_at.isoformat())
        log.info("replicated backup %s (%d records)", manifest.backup_id, len(records))
        return {"pulled": manifest.backup_id, "records": len(records)}

    def replica_key(self, backup_id: str) -> BackupKey | None:
        try:
            return self.shelf.backup_key(backup_id)
        except BackupError:
            return None
