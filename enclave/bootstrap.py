"""The KMS bootstrap: the seed's Initial Setup Flow, each step idempotent and crash-safe.

Steps (``BOOTSTRAP_STEPS``), run at every start; on a first boot they create, on later
boots they find and check:

1. ``tee``: the launch identity (measured by the fake hardware in simulation; read from
   the platform's own evidence on hardware) and the seal-key provider (simulated; SNP
   derived key on SEV-SNP hardware; custodians' quorum shares on TDX/Nitro hardware),
   giving the ``Sealer`` bound to (platform, measurement, launch-config hash).
2. ``hsm``: the SoftHSM2 token in ``DATA/hsm`` (label ``TOKEN_LABEL``), provisioned on the
   first boot with random PINs that are sealed (``hsm/pin.sealed``, ``hsm/so-pin.sealed``)
   *before* the token exists, so no crash leaves a token whose PIN is lost; the backend is
   opened and the master key ensured (AES-256, generated in the HSM, non-extractable).
3. ``storage``: a random 32-byte storage key sealed to ``storage.key.sealed`` (again before
   the database exists), and ``SqliteStore`` at ``kms.db`` bound to the HSM monotonic
   counter (an older or edited database is refused here).
4. ``kek``: the initial KEK, wrapped by the master key, stored under ``keks/<id>`` and
   named by ``system/kek`` and by the service's ``kms_config/current-kek`` pointer.
5. ``identity``: the service's Ed25519 identity key, its certificate and ``kms_id``, the
   audit signing key and the audit HMAC key, all wrapped by the KEK, recorded under
   ``system/identity`` (``enclave.identity``).
6. ``policy``: the attested launch configuration (admins, quorum threshold, reference
   policy) recorded under ``system/policy`` on the first boot and compared on later ones.

Then the audit log is opened (``DATA/audit/audit.log``) and the start is recorded.

Crash safety: every secret is sealed to disk before anything depends on it; every step
that creates keys writes them and the ``system/<step>`` record that names them in one
store transaction (``expected_version=0``), so a crash before the commit leaves nothing
(wrapped key material not committed is simply lost, no HSM object is left behind) and a
crash after it leaves the step done. Re-running a step never creates a second copy.

Test seam: ``KMS_BOOTSTRAP_PAUSE_AFTER=<step>`` (``PAUSE_ENV``) makes the process print
``bootstrap paused after <step>`` on stdout and stop there forever, so a test can SIGKILL
it at that point. It is honoured only with simulated attestation; on hardware it is
ignored with a warning.

Must never: write a PIN or key in clear, log one, or start on a state it cannot prove is
the latest one of this launch (every such refusal is a ``BootstrapError`` with a message
an operator can act on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enclave.attestation.launch import LaunchIdentity
from enclave.attestation.providers import Launch, ProviderError, read_launch_config
from enclave.audit.log import AuditConfig, AuditLog, AuditUnavailable
from enclave.audit.sink import FileAuditSink
from enclave.config import ConfigError, EnclaveConfig
from enclave.hsm.backend import HsmBackend
from enclave.hsm.config import HsmPin
from enclave.hsm.counter import HsmMonotonicCounter
from enclave.hsm.errors import HsmAuthenticationError, HsmError
from enclave.hsm.token import SoftHsmToken
from enclave.identity import (
    IdentityRecord,
    SystemIdentity,
    audit_hmac_key,
    kms_id_for,
    self_signed_certificate,
)
from enclave.keys.entropy import EntropySource
from enclave.keys.hierarchy import KeyHierarchy
from enclave.keys.material import Ed25519Signer, SymmetricKey
from enclave.keys.metadata import Algorithm, KeyMetadata, KeyVersion, Purpose, SecurityLevel
from enclave.runtime import (
    CURRENT_KEK_ID,
    KEKS_KIND,
    KEYS_KIND,
    KMS_CONFIG_KIND,
    SYSTEM_KEYS_KIND,
    SYSTEM_KIND,
    ActivePolicy,
    KmsRuntime,
    encode_key,
)
from enclave.sealing.errors import SealingError, UnsealError
from enclave.sealing.format import Binding, MalformedBlob, SealedBlob
from enclave.sealing.sealer import Sealer, SealKeyProvider
from enclave.storage.aio import AsyncStore
from enclave.storage.errors import RollbackDetected, StateTampered, StorageError

log = logging.getLogger("enclave.bootstrap")

BOOTSTRAP_STEPS: tuple[str, ...] = ("tee", "hsm", "storage", "kek", "identity", "policy")
PAUSE_ENV = "KMS_BOOTSTRAP_PAUSE_AFTER"
TOKEN_LABEL = "enclave-kms"  # noqa: S105 - a token label, not a secret
STORAGE_KEY_BYTES = 32
MAX_SEALED_FILE_BYTES = 64 * 1024
SYSTEM_OWNER = "kms"
POLICY_RECORD_VERSION = 1

PIN_FILE = Path("hsm") / "pin.sealed"
SO_PIN_FILE = Path("hsm") / "so-pin.sealed"
TOKEN_DIR = Path("hsm") / "tokens"
STORAGE_KEY_FILE = Path("storage.key.sealed")
DATABASE_FILE = Path("kms.db")
AUDIT_LOG_FILE = Path("audit") / "audit.log"
QUORUM_SHARES_DIR = Path("quorum-shares")


# -- errors -----------------------------------------------------------------------------------


class BootstrapError(RuntimeError):
    """The KMS cannot start on this state; the message says why and what to do."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"bootstrap step {step!r}: {message}")
        self.step = step


class LaunchChanged(BootstrapError):
    """The state is sealed to another launch (changed code or configuration)."""


class StateInconsistent(BootstrapError):
    """Files of the state are missing, altered, or do not belong together."""


class StateRolledBack(BootstrapError):
    """The database is older than the HSM counter says, or was edited."""


class PolicyMismatch(BootstrapError):
    """The attested launch configuration differs from the one activated at first boot."""


# -- options ----------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class BootstrapOptions:
    """How to bootstrap. The defaults are production's; the rest are seams.

    ``hsm``: an already open backend to use instead of the token in ``DATA/hsm`` (one
    backend per process: in-process tests share one). The runtime does not close it.
    ``counter_label``: the HSM counter's label (give each state its own when several
    states share one token, as tests do). ``pause_after``: see ``PAUSE_ENV``.
    """

    hsm: HsmBackend | None = None
    counter_label: str | None = None
    token_label: str = TOKEN_LABEL
    seal_provider: SealKeyProvider | None = None
    entropy: EntropySource | None = None
    clock: Callable[[], datetime] = _utc_now
    audit_config: AuditConfig | None = None
    pause_after: str | None = None

    def __post_init__(self) -> None:
        if self.pause_after is not None and self.pause_after not in BOOTSTRAP_STEPS:
            raise ConfigError(
                f"{PAUSE_ENV}={self.pause_after!r}: expected one of {', '.join(BOOTSTRAP_STEPS)}"
            )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> BootstrapOptions:
        env = os.environ if environ is None else environ
        return cls(pause_after=env.get(PAUSE_ENV) or None)


# -- the flow ----------------------------------------------------------------------------------


async def bootstrap(
    config: EnclaveConfig, launch: Launch, options: BootstrapOptions | None = None
) -> KmsRuntime:
    """Run every step and return the runtime (the caller closes it)."""
    options = options or BootstrapOptions()
    flow = _Flow(config, launch, options)
    async with contextlib.AsyncExitStack() as cleanup:
        runtime = await flow.run(cleanup)
        cleanup.pop_all()
        return runtime
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.asynccontextmanager
async def running(
    config: EnclaveConfig, launch: Launch, options: BootstrapOptions | None = None
) -> AsyncIterator[KmsRuntime]:
    """``async with running(config, launch) as runtime:`` bootstrap, then close."""
    runtime = await bootstrap(config, launch, options)
    try:
        yield runtime
    finally:
        await runtime.close()


class _Flow:
    def __init__(self, config: EnclaveConfig, launch: Launch, options: BootstrapOptions) -> None:
        self.config = config
        self.launch = launch
        self.options = options
        self.dir = config.kms_dir
        self.entropy = options.entropy or EntropySource()
        self.clock = options.clock
        self.identity_created = False

    def path(self, relative: Path) -> Path:
        return self.dir / relative

    async def run(self, cleanup: contextlib.AsyncExitStack) -> KmsRuntime:
        started = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

        identity, binding, provider, sealer = await asyncio.to_thread(self._tee)
        self._pause("tee")

        hsm, owns_hsm = await self._hsm(sealer)
        if owns_hsm:
            cleanup.push_async_callback(hsm.close)
        self._pause("hsm")

        counter = HsmMonotonicCounter(hsm, label=self.options.counter_label)
        store = await self._storage(sealer, counter)
        cleanup.push_async_callback(store.close)
        self._pause("storage")

        hierarchy = KeyHierarchy(hsm, self.entropy, self.clock)
        kek = await self._kek(store, hierarchy)
        self._pause("kek")

        system_identity = await self._identity(store, hierarchy, kek)
        self._pause("identity")

        policy = await self._policy(store, identity)
        self._pause("policy")

        audit = await self._audit(system_identity)
        cleanup.push_async_callback(asyncio.to_thread, audit.stop)
        first_boot = self.identity_created
        runtime = KmsRuntime(
            config=self.config,
            launch=self.launch,
            launch_identity=identity,
            binding=binding,
            provider=provider,
            sealer=sealer,
            hsm=hsm,
            counter=counter,
            hierarchy=hierarchy,
            store=store,
            audit=audit,
            identity=system_identity,
            kek=kek,
            policy=policy,
            entropy=self.entropy,
            clock=self.clock,
            first_boot=first_boot,
            owns_hsm=owns_hsm,
        )
        try:
            await audit.record(
                principal=SYSTEM_OWNER,
                operation="kms.start",
                outcome="event",
                details={
                    "first_boot": first_boot,
                    "platform": self.config.platform,
                    "measurement": identity.measurement.hex(),
                    "kek": kek.key_id,
                },
            )
        except AuditUnavailable as exc:
            raise StateInconsistent("audit", f"the audit log cannot be written: {exc}") from None
        log.info(
            "bootstrap complete: kms_id=%s first_boot=%s platform=%s measurement=%s (%.2fs)",
            system_identity.kms_id,
            first_boot,
            self.config.platform,
            identity.measurement.hex(),
            time.perf_counter() - started,
        )
        return runtime

    # -- step 1: TEE ----------------------------------------------------------------------------

    def _tee(self) -> tuple[LaunchIdentity, Binding, SealKeyProvider, Sealer]:
        identity = self.launch.identity
        if identity is None:
            identity = hardware_launch_identity(self.config, self.launch)
        binding = Binding.for_launch(self.config.platform, identity)
        try:
            provider = self.options.seal_provider or seal_key_provider(self.config)
            sealer = Sealer(provider, binding)
        except (SealingError, OSError, ValueError) as exc:
            raise BootstrapError("tee", f"no seal key for this launch: {exc}") from None
        return identity, binding, provider, sealer

    # -- step 2: HSM ----------------------------------------------------------------------------

    async def _hsm(self, sealer: Sealer) -> tuple[HsmBackend, bool]:
        if self.options.hsm is not None:
            backend, owned = self.options.hsm, False
        else:
            backend, owned = await self._open_own_token(sealer), True
        try:
            status = await backend.ensure_master_key()
        except HsmError as exc:
            if owned:
                await backend.close()
            raise StateInconsistent("hsm", f"the master key is not usable: {exc}") from None
        if status.created:
            log.info("master key generated in the HSM (%s)", status.label)
        return backend, owned

    async def _open_own_token(self, sealer: Sealer) -> HsmBackend:
        pin_path, so_path = self.path(PIN_FILE), self.path(SO_PIN_FILE)
        token_exists = _has_entries(self.path(TOKEN_DIR))
        so_pin: HsmPin | None = None
        if pin_path.exists():
            pin = HsmPin.of(unseal_file(sealer, pin_path, "the HSM PIN", "hsm"))
            if so_path.exists():
                so_pin = HsmPin.of(unseal_file(sealer, so_path, "the HSM SO PIN", "hsm"))
            if not token_exists and self.path(DATABASE_FILE).exists():
                raise StateInconsistent(
                    "hsm",
                    f"the HSM token under {self.path(TOKEN_DIR)} is missing but the KMS "
                    "database exists: the token (master key, rollback counter) was deleted; "
                    "restore it from backup",
                )
        else:
            if token_exists:
                raise StateInconsistent(
                    "hsm",
                    f"an HSM token exists under {self.path(TOKEN_DIR)} but its sealed PIN "
                    f"{pin_path} is missing: restore the file from backup",
                )
            # Seal both PINs before the token exists: a crash from here on finds them.
            so_pin, pin = HsmPin.generate(), HsmPin.generate()
            pin_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomically(so_path, sealer.seal(so_pin.value))
            write_atomically(pin_path, sealer.seal(pin.value))
        try:
            provisioned = await asyncio.to_thread(
                SoftHsmToken.provision, self.dir, self.options.token_label, so_pin, pin
            )
        except HsmAuthenticationError:
            raise StateInconsistent(
                "hsm", "the HSM token refuses the sealed PIN: the token or pin.sealed was replaced"
            ) from None
        except HsmError as exc:
            raise BootstrapError("hsm", f"cannot provision the HSM token: {exc}") from None
        if provisioned.created:
            log.info("HSM token %r provisioned", self.options.token_label)
            if provisioned.so_pin is not None and not so_path.exists():
                write_atomically(so_path, sealer.seal(provisioned.so_pin.value))
        try:
            return await HsmBackend.open(provisioned.token.config(), pin)
        except HsmError as exc:
            raise BootstrapError("hsm", f"cannot open the HSM token: {exc}") from None

    # -- step 3: storage ------------------------------------------------------------------------

    async def _storage(self, sealer: Sealer, counter: HsmMonotonicCounter) -> AsyncStore:
        key_path, db_path = self.path(STORAGE_KEY_FILE), self.path(DATABASE_FILE)
        if key_path.exists():
            key = unseal_file(sealer, key_path, "the storage key", "storage")
        else:
            if db_path.exists():
                raise StateInconsistent(
                    "storage",
                    f"the database {db_path} exists but its sealed storage key {key_path} "
                    "is missing: restore the file from backup",
                )
            key = self.entropy.random_bytes(STORAGE_KEY_BYTES)
            write_atomically(key_path, sealer.seal(key))
        try:
            return await AsyncStore.open(db_path, key, counter, create=True)
        except RollbackDetected as exc:
            raise StateRolledBack(
                "storage", f"refusing to start on a rolled-back database: {exc}"
            ) from None
        except StateTampered as exc:
            raise StateRolledBack(
                "storage", f"refusing to start on a tampered database: {exc}"
            ) from None
        except (StorageError, HsmError) as exc:
            raise BootstrapError("storage", f"cannot open the store: {exc}") from None

    # -- step 4: initial KEK --------------------------------------------------------------------

    async def _kek(self, store: AsyncStore, hierarchy: KeyHierarchy) -> KeyMetadata:
        record = await store.get(SYSTEM_KIND, "kek")
        if record is not None:
            key_id = _json_field(record.value, "key_id", "kek")
            return await _load_key(store, key_id, "kek", KEKS_KIND)
        kek = await hierarchy.create_kek(SYSTEM_OWNER, description="initial KEK")
        pointer = json.dumps({"key_id": kek.key_id}, sort_keys=True).encode()

        def commit(tx: Any) -> None:
            # The KEK, the service's current-KEK pointer (enclave.kms reads it) and the
            # bootstrap's own record: all three, or none.
            tx.put(KEKS_KIND, kek.key_id, encode_key(kek), expected_version=0)
            tx.put(KMS_CONFIG_KIND, CURRENT_KEK_ID, pointer, expected_version=0)
            tx.put(SYSTEM_KIND, "kek", pointer, expected_version=0)

        await store.transact(commit)
        log.info("initial KEK %s created", kek.key_id)
        return kek

    # -- step 5: system identity ----------------------------------------------------------------

    async def _identity(
        self, store: AsyncStore, hierarchy: KeyHierarchy, kek: KeyMetadata
    ) -> SystemIdentity:
        record = await store.get(SYSTEM_KIND, "identity")
        if record is not None:
            try:
                stored = IdentityRecord.from_json(record.value)
                keys = [
                    await _load_key(store, key_id, "identity", SYSTEM_KEYS_KIND)
                    for key_id in (
                        stored.signing_key_id,
                        stored.audit_signing_key_id,
                        stored.audit_hmac_key_id,
                    )
                ]
                return await _open_identity(store, hierarchy, kek, stored, keys)
            except ValueError as exc:
                raise StateInconsistent("identity", str(exc)) from None
        kek_version = _active(kek, "kek")
        made = [
            await hierarchy.create_key(
                purpose, algorithm, kek=kek_version, owner=SYSTEM_OWNER,
                security_level=SecurityLevel.L4, description=description,
            )
            for purpose, algorithm, description in (
                (Purpose.SIGN, Algorithm.ED25519, "system identity"),
                (Purpose.SIGN, Algorithm.ED25519, "audit checkpoint signing"),
                (Purpose.ENCRYPT, Algorithm.AES_256_GCM, "audit HMAC (HKDF input)"),
            )
        ]  # fmt: skip
        (signing, signing_v), (audit_sign, _), (audit_hmac, _) = made
        signer = await hierarchy.unwrap_for_use(signing_v, kek_version)
        assert isinstance(signer, Ed25519Signer)
        assert signing_v.public_key is not None
        kms_id = kms_id_for(signing_v.public_key)
        now = self.clock()
        stored = IdentityRecord(
            kms_id=kms_id,
            signing_key_id=signing.key_id,
            audit_signing_key_id=audit_sign.key_id,
            audit_hmac_key_id=audit_hmac.key_id,
            certificate_der=self_signed_certificate(signer, kms_id, self.config.platform, now),
            created_at=now,
        )

        def commit(tx: Any) -> None:
            for metadata, _version in made:
                tx.put(SYSTEM_KEYS_KIND, metadata.key_id, encode_key(metadata), expected_version=0)
            tx.put(SYSTEM_KIND, "identity", stored.to_json(), expected_version=0)

        await store.transact(commit)
        self.identity_created = True
        log.info("system identity %s created", kms_id)
        return await _open_identity(
            store, hierarchy, kek, stored, (signing, audit_sign, audit_hmac)
        )

    # -- step 6: policy activation --------------------------------------------------------------

    async def _policy(self, store: AsyncStore, identity: LaunchIdentity) -> ActivePolicy:
        current = policy_of(identity.config, self.clock())
        record = await store.get(SYSTEM_KIND, "policy")
        if record is None:
            await store.put(SYSTEM_KIND, "policy", encode_policy(current), expected_version=0)
            log.info("launch policy activated (config sha256 %s)", current.config_sha256)
            return current
        try:
            recorded = decode_policy(record.value)
        except ValueError as exc:
            raise StateInconsistent("policy", f"the recorded policy is malformed: {exc}") from None
        if recorded.config_sha256 != current.config_sha256:
            raise PolicyMismatch(
                "policy",
                "the attested launch configuration (sha256 "
                f"{current.config_sha256}) differs from the one activated on this state at "
                f"{recorded.activated_at} (sha256 {recorded.config_sha256}); admins, quorum "
                "threshold and reference policy cannot change by relaunching: refusing to start",
            )
        return recorded

    # -- audit ----------------------------------------------------------------------------------

    async def _audit(self, identity: SystemIdentity) -> AuditLog:
        try:
            audit = AuditLog(
                FileAuditSink(self.path(AUDIT_LOG_FILE)),
                sign=identity.sign_audit,
                public_key=identity.audit_public_key,
                hmac_key=identity.audit_hmac_key,
                kms_id=identity.kms_id,
                config=self.options.audit_config,
                on_failure=lambda reason: log.critical("audit log failing: %s", reason),
            )
        except (AuditUnavailable, OSError, ValueError) as exc:
            raise StateInconsistent("audit", f"the audit log cannot be opened: {exc}") from None
        audit.start()
        return audit

    # -- test seam ------------------------------------------------------------------------------

    def _pause(self, step: str) -> None:
        if self.options.pause_after != step:
            return
        if self.config.attestation != "simulated":
            log.warning("%s is a test seam, ignored with hardware attestation", PAUSE_ENV)
            return
        print(f"bootstrap paused after {step}", flush=True)
        while True:  # until killed: the test's SIGKILL lands exactly here
            time.sleep(3600)


# -- helpers ------------------------------------------------------------------------------------


async def _load_key(store: AsyncStore, key_id: str, step: str, kind: str) -> KeyMetadata:
    record = await store.get(kind, key_id)
    if record is None:
        raise StateInconsistent(step, f"the system record names key {key_id}, which is missing")
    try:
        return KeyMetadata.from_dict(json.loads(record.value))
    except ValueError as exc:
        raise StateInconsistent(step, f"key {key_id} is malformed: {exc}") from None


def _active(metadata: KeyMetadata, step: str) -> KeyVersion:
    primary = metadata.primary
    if primary is None:
        raise StateInconsistent(step, f"key {metadata.key_id} has no active version")
    return primary


async def _wrapping_kek(store: AsyncStore, kek: KeyMetadata, version: KeyVersion) -> KeyVersion:
    ref = version.wrapped_by
    if ref.key_id == kek.key_id:
        return kek.version(ref.version)
    return (await _load_key(store, ref.key_id, "identity", KEKS_KIND)).version(ref.version)


async def _open_identity(
    store: AsyncStore,
    hierarchy: KeyHierarchy,
    kek: KeyMetadata,
    stored: IdentityRecord,
    keys: Sequence[KeyMetadata],
) -> SystemIdentity:
    """Unwrap the identity's keys (signing, audit signing, audit HMAC, in that order)."""
    unwrapped = []
    for metadata in keys:
        version = _active(metadata, "identity")
        wrapping = await _wrapping_kek(store, kek, version)
        unwrapped.append((version, await hierarchy.unwrap_for_use(version, wrapping)))
    (signing_v, signer), (audit_v, audit_signer), (_hmac_v, hmac_key) = unwrapped
    if not (
        isinstance(signer, Ed25519Signer)
        and isinstance(audit_signer, Ed25519Signer)
        and isinstance(hmac_key, SymmetricKey)
        and signing_v.public_key is not None
        and audit_v.public_key is not None
    ):
        raise StateInconsistent("identity", "the identity keys have the wrong algorithms")
    return SystemIdentity(
        record=stored,
        public_key_der=signing_v.public_key,
        audit_public_key_der=audit_v.public_key,
        _signer=signer,
        _audit_signer=audit_signer,
        _audit_hmac_key=audit_hmac_key(hmac_key),
    )


def _json_field(value: bytes, name: str, step: str) -> str:
    try:
        document = json.loads(value)
        field_value = document[name]
        if not isinstance(field_value, str):
            raise TypeError(name)
        return field_value
    except (ValueError, TypeError, KeyError):
        raise StateInconsistent(step, f"the system/{step} record is malformed") from None


def policy_of(launch_config: bytes, now: datetime) -> ActivePolicy:
    """The policy a launch configuration (canonical JSON bytes) activates."""
    document: Any = json.loads(launch_config)
    quorum = document.get("quorum", {}) if isinstance(document, dict) else {}
    admins = quorum.get("admins", []) if isinstance(quorum, dict) else []
    threshold = quorum.get("threshold", 1) if isinstance(quorum, dict) else 1
    reference = None
    if isinstance(document, dict):
        reference = document.get("reference_policy", document.get("policy"))
    return ActivePolicy(
        launch_config=launch_config,
        config_sha256=hashlib.sha256(launch_config).hexdigest(),
        admins=tuple(admins) if isinstance(admins, list) else (),
        quorum_threshold=threshold if isinstance(threshold, int) else 1,
        reference_policy=reference,
        activated_at=now.isoformat(),
    )


def encode_policy(policy: ActivePolicy) -> bytes:
    return json.dumps(
        {
            "version": POLICY_RECORD_VERSION,
            "launch_config": policy.launch_config.decode(),
            "config_sha256": policy.config_sha256,
            "activated_at": policy.activated_at,
        },
        sort_keys=True,
    ).encode()


def decode_policy(value: bytes) -> ActivePolicy:
    try:
        document = json.loads(value)
        if document.get("version") != POLICY_RECORD_VERSION:
            raise ValueError("unknown policy record version")
        config = document["launch_config"].encode()
        policy = policy_of(config, datetime.fromisoformat(document["activated_at"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"missing or mistyped field {exc}") from None
    if policy.config_sha256 != document["config_sha256"]:
        raise ValueError("the recorded configuration does not match its hash")
    return policy


def _has_entries(directory: Path) -> bool:
    try:
        return any(directory.iterdir())
    except FileNotFoundError:
        return False


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600) so that a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def unseal_file(sealer: Sealer, path: Path, what: str, step: str) -> bytes:
    """Unseal ``path``; on failure, say whether the launch changed or the file did."""
    try:
        with path.open("rb") as handle:
            blob = handle.read(MAX_SEALED_FILE_BYTES + 1)
    except OSError as exc:
        raise StateInconsistent(step, f"cannot read {what} at {path}: {exc}") from None
    try:
        if len(blob) > MAX_SEALED_FILE_BYTES:
            raise UnsealError
        return sealer.unseal(blob)
    except UnsealError:
        pass
    raise _unseal_failure(sealer.binding, blob, path, what, step)


def _unseal_failure(
    running: Binding, blob: bytes, path: Path, what: str, step: str
) -> BootstrapError:
    # The header is not authenticated until the unseal succeeds: it serves the message only.
    try:
        sealed_to = SealedBlob.from_bytes(blob).binding
    except MalformedBlob:
        sealed_to = None
    if sealed_to is not None and sealed_to.platform != running.platform:
        return LaunchChanged(
            step,
            f"{what} ({path}) is sealed to platform {sealed_to.platform}, but this enclave "
            f"runs on {running.platform}: refusing to start",
        )
    if sealed_to is not None and sealed_to.measurement != running.measurement:
        return LaunchChanged(
            step,
            f"cannot unseal {what} ({path}): it is sealed to measurement "
            f"{sealed_to.measurement.hex()}, but this enclave's measurement is "
            f"{running.measurement.hex()}. The enclave code changed; the new code cannot "
            "unseal the old state (a migration is needed): refusing to start",
        )
    if sealed_to is not None and sealed_to.config_hash != running.config_hash:
        return LaunchChanged(
            step,
            f"cannot unseal {what} ({path}): it is sealed to launch configuration "
            f"sha256 {sealed_to.config_hash.hex()}, but this launch's configuration is "
            f"sha256 {running.config_hash.hex()}. The attested configuration (admins, "
            "quorum, policy) changed: refusing to start",
        )
    return StateInconsistent(
        step,
        f"cannot unseal {what} ({path}): the file was altered, or sealed by another "
        "machine's seal key: refusing to start",
    )


def seal_key_provider(config: EnclaveConfig) -> SealKeyProvider:
    """The seal-key provider for this launch (simulated, SNP derived key, or quorum)."""
    if config.attestation == "simulated":
        from enclave.sealing.providers.simulated import SimulatedSealKeyProvider

        return SimulatedSealKeyProvider.load_or_create(config.state_dir)
    if config.platform == "sev-snp":
        from enclave.sealing.providers.snp_derived import (
            LinuxSevGuestDevice,
            SnpDerivedSealKeyProvider,
        )

        return SnpDerivedSealKeyProvider(LinuxSevGuestDevice.open())
    from enclave.sealing.providers.quorum import CustodianShare, QuorumSealKeyProvider

    shares_dir = config.kms_dir / QUORUM_SHARES_DIR
    files = sorted(shares_dir.glob("*.share")) if shares_dir.is_dir() else []
    if not files:
        raise ProviderError(
            f"{config.platform} hardware seals with the custodians' quorum: put at least "
            f"threshold decrypted shares (*.share) in {shares_dir}"
        )
    return QuorumSealKeyProvider.from_shares(
        CustodianShare.from_bytes(f.read_bytes()[:MAX_SEALED_FILE_BYTES]) for f in files
    )


def hardware_launch_identity(config: EnclaveConfig, launch: Launch) -> LaunchIdentity:
    """On hardware the platform measured the launch: read it from our own evidence, and
    check that ``launch.json`` is the configuration the platform attests."""
    launch_config = read_launch_config(config.launch_config_path)
    evidence = launch.provider.evidence(b"\x00" * 64).evidence
    expected: bytes
    attested: bytes
    if config.platform == "sev-snp":
        from enclave.attestation.launch import snp_host_data
        from verifier.snp.abi import AttestationReport

        report = AttestationReport.from_bytes(evidence)
        measurement, attested, expected = (
            report.measurement, report.host_data, snp_host_data(launch_config),
        )  # fmt: skip
    elif config.platform == "tdx":
        from enclave.attestation.launch import tdx_mr_config_id
        from verifier.tdx.abi import Quote

        quote = Quote.from_bytes(evidence)
        measurement, attested, expected = (
            quote.report.mrtd, quote.report.mr_config_id, tdx_mr_config_id(launch_config),
        )  # fmt: skip
    else:
        from enclave.attestation.launch import NITRO_CONFIG_PCR, nitro_config_pcr
        from verifier.nitro.abi import NitroDocument

        document = NitroDocument.from_bytes(evidence)
        measurement = document.pcrs[0]
        attested = document.pcrs.get(NITRO_CONFIG_PCR, b"")
        expected = nitro_config_pcr(launch_config)
    if attested != expected:
        raise BootstrapError(
            "tee",
            f"{config.launch_config_path} is not the launch configuration this platform "
            "attests: refusing to start",
        )
    return LaunchIdentity(measurement=bytes(measurement), config=launch_config)


# -- command line: bootstrap (or check) a state and print what it holds ------------------------


async def describe(runtime: KmsRuntime) -> dict[str, Any]:
    """What a bootstrapped state holds (public facts only), for tests and operators."""
    store = runtime.store
    system = sorted(ref.id for ref in await store.list(SYSTEM_KIND))
    keks = sorted(ref.id for ref in await store.list(KEKS_KIND))
    system_keys = sorted(ref.id for ref in await store.list(SYSTEM_KEYS_KIND))
    keys = sorted(ref.id for ref in await store.list(KEYS_KIND))
    token_dir = runtime.config.kms_dir / TOKEN_DIR
    return {
        "kms_id": runtime.kms_id,
        "first_boot": runtime.first_boot,
        "kek": runtime.kek.key_id,
        "identity_keys": [
            runtime.identity.record.signing_key_id,
            runtime.identity.record.audit_signing_key_id,
            runtime.identity.record.audit_hmac_key_id,
        ],
        "keys": keys,
        "keks": keks,
        "system_keys": system_keys,
        "system": system,
        "counter": await runtime.counter.read_async(),
        "tokens": len(list(token_dir.iterdir())) if token_dir.is_dir() else 0,
        "policy_sha256": runtime.policy.config_sha256,
        "measurement": runtime.launch_identity.measurement.hex(),
    }


async def _check(config: EnclaveConfig, options: BootstrapOptions) -> dict[str, Any]:
    from enclave.attestation.providers import launch as open_launch

    launched = await asyncio.to_thread(open_launch, config)
    async with running(config, launched, options) as runtime:
        return await describe(runtime)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m enclave.bootstrap",
        description="Bootstrap (or re-open and check) a KMS state, print it as JSON, exit.",
    )
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--platform", required=True, choices=("sev-snp", "tdx", "nitro"))
    parser.add_argument("--attestation", default="simulated", choices=("simulated", "hardware"))
    parser.add_argument("--measure-root", type=Path, default=None)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        config = EnclaveConfig.create(
            platform=args.platform, state_dir=args.state, listen="tcp:127.0.0.1:0",
            attestation=args.attestation, measure_root=args.measure_root, data_dir=args.data,
        )  # fmt: skip
        options = BootstrapOptions.from_environment()
    except ConfigError as exc:
        print(f"kms-enclave: {exc}", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(_check(config, options))
    except (BootstrapError, ProviderError, HsmError, SealingError, StorageError) as exc:
        print(f"kms-enclave: cannot start: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
