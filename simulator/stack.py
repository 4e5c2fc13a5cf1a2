"""The simulated stack: fake hardware, verifier endpoint, enclave process and host proxy.

``SimStack`` owns a state directory and the processes it starts:

* the fake hardware (``enclave.attestation.simulated``) in ``STATE/hw`` and its fake vendor
  roots in ``STATE/sim-roots/<platform>-roots.pem``;
* the launch configuration ``STATE/launch.json`` (``measurements.compute`` defaults, with
  the platform set) and the simulated measurement of the tree it runs, computed exactly as
  the enclave's fake hardware computes it at launch;
* ``kms-verifier serve`` on a free loopback port (token key ``STATE/verifier/signing-key.pem``);
* ``kms-enclave serve`` on ``unix:STATE/enclave.sock`` (its log: ``STATE/enclave.log``),
  which bootstraps the KMS's own sealed state in ``STATE`` (HSM token, sealed PIN and
  storage key, ``kms.db``, audit log; layout in ``enclave.server``). That state is sealed
  to the measured tree: after a code change it no longer unseals and the enclave refuses to
  start; ``reset_kms=True`` (``kms-sim up --reset``) discards it first;
* the untrusted host proxy (``host.HostProxy``) on the requested TCP address;
* the client profiles ``STATE/client.toml`` (local verification) and
  ``STATE/client-remote.toml`` (through the verifier endpoint), whose ``[credentials]``
  are the administrator's: an Ed25519 key made on the first start (``STATE/admin.key``,
  mode 0600) whose public key is in the launch configuration's ``quorum.admins`` (so it
  is attested), and which the KMS registers at boot as a level-4 principal under
  ``enclave.features.kms_api.admin_principal_id(public key)``.

It never trusts its own children: readiness is proven by a full client attestation through
the proxy. ``stop()`` terminates the children, waits, kills stragglers, removes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave.attestation.launch import nitro_config_pcr, snp_host_data, tdx_mr_config_id
from enclave.attestation.providers import RUNNING_TREE, simulated_device
from kms.pakv.simulated import release_policy_document as pakv_release_policy
from measurements.compute import canonical_launch_config, launch_config_for, simulated_measurement
from verifier.claims import Platform, parse_platform
from verifier.roots import SIMULATED_FILES

log = logging.getLogger("simulator")

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
CLIENT_PROFILE = "client.toml"
ADMIN_KEY_FILE = "admin.key"  # the administrator's private key, beside the profiles
ADMIN_NAME = "admin"
REMOTE_PROFILE = "client-remote.toml"
PAKV_FILE = "pakv.json"  # where the K/V key service's URLs are recorded (docs/pakv.md)


class SimError(RuntimeError):
    """The stack could not be started."""


def reference_policy(
    platform: Platform, measurement: bytes, launch_config: bytes
) -> dict[str, Any]:
    """The profile's reference policy for a simulated launch of this tree and config."""
    policy: dict[str, Any] = {
        "allow_debug": False,
        "measurements": [{"name": f"kms-sim-{platform}", "value": measurement.hex()}],
    }
    if platform == "sev-snp":
        policy["host_data"] = snp_host_data(launch_config).hex()
    elif platform == "tdx":
        policy["mr_config_id"] = tdx_mr_config_id(launch_config).hex()
    else:
        policy["pcrs"] = {"16": nitro_config_pcr(launch_config).hex()}
    return policy


@dataclass
class SimStack:
    state: Path
    listen: str = "127.0.0.1:8443"
    platform: Platform = "sev-snp"
    enclave_args: tuple[str, ...] = ()
    reset_kms: bool = False
    # UNSAFE: the enclave's K/V service serves only the publicly known K/V test key pair
    # (kms-enclave serve --unsafe-pakv-test-keys; docs/pakv.md).
    unsafe_pakv_test_keys: bool = False
    url: str = ""
    measurement: bytes = b""
    launch_config: bytes = b""
    roots_pem: bytes = b""
    _verifier: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _enclave: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _proxy: Any = field(default=None, repr=False)
    _drains: list[asyncio.Task[None]] = field(default_factory=list, repr=False)
    verifier_url: str = ""
    admin_public_key: bytes = b""
    _pakv_proxies: list[Any] = field(default_factory=list, repr=False)
    pakv_urls: dict[str, str] = field(default_factory=dict)

    @property
    def socket_path(self) -> Path:
        return self.state / "enclave.sock"

    @property
    def profile_path(self) -> Path:
        return self.state / CLIENT_PROFILE

    @property
    def remote_profile_path(self) -> Path:
        return self.state / REMOTE_PROFILE

    @property
    def pakv_sockets(self) -> dict[str, Path]:
        """The enclave's HTTP/2 listeners for the K/V key service: h2 (TLS) and h2c."""
        return {"h2": self.state / "pakv-h2.sock", "h2c": self.state / "pakv-h2c.sock"}

    @property
    def credentials(self) -> dict[str, str]:
        """The profiles' ``[credentials]``: the launch configuration's administrator."""
        from enclave.features.kms_api import admin_principal_id

        return {
            "principal": admin_principal_id(self.admin_public_key),
            "private_key_file": ADMIN_KEY_FILE,
        }

    @property
    def enclave_pid(self) -> int | None:
        return self._enclave.pid if self._enclave else None

    # -- preparation (no processes) -----------------------------------------------------

    def prepare(self) -> None:
        self.state = self.state.resolve()
        self.state.mkdir(parents=True, exist_ok=True)
        if self.reset_kms:
            reset_kms_state(self.state)
        device = simulated_device(self.platform, self.state / "hw")
        self.roots_pem = device.roots_pem()
        roots_dir = self.state / "sim-roots"
        roots_dir.mkdir(exist_ok=True)
        (roots_dir / SIMULATED_FILES[self.platform]).write_bytes(self.roots_pem)
        config = launch_config_for(self.platform)
        config["pakv"] = {"release_policy": pakv_release_policy(self.platform)}
        # The administrator: its public key is attested (in the launch configuration).
        self.admin_public_key = ensure_admin_key(self.state / ADMIN_KEY_FILE)
        config["quorum"]["admins"] = [
            {"name": ADMIN_NAME, "public_key": self.admin_public_key.hex()}
        ]
        (self.state / "launch.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        self.launch_config = canonical_launch_config(config)
        key_dir = self.state / "verifier"
        key_dir.mkdir(exist_ok=True)
        key_path = key_dir / "signing-key.pem"
        if not key_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)

    def write_profiles(self) -> None:
        from kms.profile import Profile, RemoteVerifier, TrustConfig
        from verifier.token import TokenIssuer

        policy = reference_policy(self.platform, self.measurement, self.launch_config)
        local = Profile(
            platform=self.platform,
            endpoints=(self.url,),
            trust=TrustConfig("simulated", self.roots_pem),
            policy_document=policy,
            directory=self.state,
            credentials=self.credentials,
        )
        local.write(self.profile_path)
        issuer = TokenIssuer.from_pem(
            (self.state / "verifier" / "signing-key.pem").read_bytes(), "kms-verifier"
        )
        remote = Profile(
            platform=self.platform,
            endpoints=(self.url,),
            trust=TrustConfig("simulated", self.roots_pem),
            policy_document=policy,
            verifier=RemoteVerifier(self.verifier_url, issuer.jwks(), "kms-verifier"),
            directory=self.state,
            credentials=self.credentials,
        )
        remote.write(self.remote_profile_path)

    # -- processes ----------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.prepare)
            await self._start_verifier()
            await self._start_enclave()
            await self._start_proxy()
            self.write_profiles()
            self.write_pakv()
            await self._prove_ready()
        except BaseException:
            await self.stop()
            raise

    async def _spawn(
        self, args: list[str], log_name: str
    ) -> tuple[asyncio.subprocess.Process, str]:
        log_file = (self.state / log_name).open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=log_file, start_new_session=True,
            )  # fmt: skip
        finally:
            log_file.close()
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        if not line:
            await self._terminate(process)
            tail = (self.state / log_name).read_text(errors="replace")[-2000:]
            hint = ""
            if "code changed" in tail or "configuration changed" in tail:
                hint = (
                    "\nthe KMS state here was sealed by another build or launch configuration; "
                    "start over with `kms-sim up --reset` (discards its keys)"
                )
            raise SimError(f"{args[1]} did not start; {log_name}:\n{tail}{hint}")
        self._drains.append(asyncio.create_task(_drain(process.stdout)))
        return process, line.decode().strip()

    async def _start_verifier(self) -> None:
        self._verifier, line = await self._spawn(
            [
                "-m", "verifier", "serve", "--listen", "127.0.0.1:0",
                "--roots", f"simulated:{self.state / 'sim-roots'}",
                "--signing-key", str(self.state / "verifier" / "signing-key.pem"),
                "--issuer", "kms-verifier",
            ],
            "verifier.log",
        )  # fmt: skip
        if not line.startswith("ready "):
            raise SimError(f"unexpected verifier output: {line!r}")
        self.verifier_url = line.removeprefix("ready ").strip()

    async def _start_enclave(self) -> None:
        # Measured just before launch, as the enclave's fake hardware measures at its start:
        # the reference is the code that is launched (a tree edited in between is refused).
        self.measurement = await asyncio.to_thread(
            simulated_measurement, RUNNING_TREE, self.launch_config
        )
        self._enclave, line = await self._spawn(
            [
                "-m", "enclave.server", "serve", "--state", str(self.state),
                "--listen", f"unix:{self.socket_path}", "--platform", self.platform,
                "--pakv-h2", f"unix:{self.pakv_sockets['h2']}",
                "--pakv-h2c", f"unix:{self.pakv_sockets['h2c']}",
                *(("--unsafe-pakv-test-keys",) if self.unsafe_pakv_test_keys else ()),
                *self.enclave_args,
            ],
            "enclave.log",
        )  # fmt: skip
        if not line.startswith("serving "):
            raise SimError(f"unexpected enclave output: {line!r}")

    async def _start_proxy(self) -> None:
        from host.config import EnclaveAddress, ListenAddress, ProxyConfig
        from host.proxy import HostProxy

        config = ProxyConfig(
            listen=ListenAddress.parse(self.listen),
            enclave=EnclaveAddress.parse(f"unix:{self.socket_path}"),
        )
        self._proxy = HostProxy(config)
        await self._proxy.start()
        host = self._proxy.host
        shown = f"[{host}]" if ":" in host else host
        self.url = f"https://{shown}:{self._proxy.port}"
        # The K/V key service's HTTP/2 listeners, each behind a proxy of its own (a free
        # port on the same host); the public documents are on self.url (HTTP/1.1).
        for name, path in self.pakv_sockets.items():
            proxy = HostProxy(
                ProxyConfig(
                    listen=ListenAddress.parse(f"{self.listen.rpartition(':')[0]}:0"),
                    enclave=EnclaveAddress.parse(f"unix:{path}"),
                )
            )
            await proxy.start()
            self._pakv_proxies.append(proxy)
            scheme = "https" if name == "h2" else "http"
            self.pakv_urls[name] = f"{scheme}://{shown}:{proxy.port}"

    def write_pakv(self) -> None:
        """``STATE/pakv.json``: where the K/V key service answers (docs/pakv.md)."""
        document = {
            "public_keys": self.url + "/.well-known/protected-auction/v1/public-keys",
            "public_keys_alias": self.url + "/v1alpha/publicKeys",
            "public_keys_signed": self.url + "/.well-known/protected-auction/v1/public-keys.signed",
            "h2": self.pakv_urls.get("h2", ""),
            "h2c": self.pakv_urls.get("h2c", ""),
            "release_policy": pakv_release_policy(self.platform),
        }
        if self.unsafe_pakv_test_keys:
            document["unsafe_test_keys"] = "UNSAFE-TEST-KEYS: the publicly known K/V test key"
        (self.state / PAKV_FILE).write_text(json.dumps(document, indent=2) + "\n")

    async def _prove_ready(self) -> None:
        from kms.client import AsyncKmsClient
        from kms.profile import Profile

        async with AsyncKmsClient(Profile.load(self.profile_path)) as client:
            result = await client.attest()
        if result.measurement != self.measurement.hex():
            raise SimError("the enclave attests a measurement other than the one computed")

    async def stop(self) -> None:
        if self._proxy is not None:
            with contextlib.suppress(Exception):
                await self._proxy.stop(grace=1.0)
            self._proxy = None
        for pakv_proxy in self._pakv_proxies:
            with contextlib.suppress(Exception):
                await pakv_proxy.stop(grace=1.0)
        self._pakv_proxies.clear()
        for process in (self._enclave, self._verifier):
            if process is not None:
                await self._terminate(process)
        self._enclave = self._verifier = None
        for task in self._drains:
            task.cancel()
        self._drains.clear()
        for path in (self.socket_path, *self.pakv_sockets.values()):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @staticmethod
    async def _terminate(process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    async def __aenter__(self) -> SimStack:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.read(4096):
            pass


def ensure_admin_key(path: Path) -> bytes:
    """The administrator's Ed25519 key (PKCS#8 PEM, mode 0600), made on the first start;
    its raw public key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    os.chmod(path, 0o600)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SimError(f"{path} is not an Ed25519 private key")
    return loaded.public_key().public_bytes_raw()


# Everything the enclave seals to its launch or binds to its HSM token (enclave.server has
# the layout): after a code change none of it opens, so a reset must take all of it.
KMS_STATE_ENTRIES = (
    "hsm", "kms.db", "kms.db-wal", "kms.db-shm", "storage.key.sealed", "audit", "restore",
    "quorum-shares",
)  # fmt: skip


def reset_kms_state(state: Path) -> None:
    """Discard the KMS's own state under ``state`` (keys included); keep the fake hardware,
    the administrator's key, the verifier's key and the backup shelf (``backups/``: bundles
    are recovery material; their keys stay sealed to the build that made them)."""
    for name in KMS_STATE_ENTRIES:
        path = state / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def make_stack(state: Path, listen: str, platform: str, **kwargs: Any) -> SimStack:
    return SimStack(state=state, listen=listen, platform=parse_platform(platform), **kwargs)
