"""A further simulated KMS instance: its own ``kms-enclave serve`` process, HSM token and
state, behind its own host proxy (a secondary region, or the fresh instance of a disaster
recovery drill).

Unlike ``SimStack`` it runs no verifier endpoint and does not rewrite ``launch.json``: the
caller prepares the state directory (``SimulatedLaunch.prepare``, then its own launch
configuration) so that two instances can share one fake vendor (copy ``hw/`` and
``sim-roots/``) and differ exactly where a test wants them to. ``profile()`` writes a client
profile that trusts the fake vendor's roots and this instance's measurement, optionally
with an administrator's ``[credentials]``. Test and drill tooling only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave.attestation.providers import RUNNING_TREE
from measurements.compute import canonical_launch_config, simulated_measurement
from simulator.stack import reference_policy
from verifier.claims import Platform
from verifier.roots import SIMULATED_FILES

START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0


class InstanceError(RuntimeError):
    """The instance could not be started."""


@dataclass
class EnclaveInstance:
    """One ``kms-enclave serve`` process on ``unix:STATE/enclave.sock`` plus a host proxy."""

    state: Path
    platform: Platform = "sev-snp"
    url: str = ""
    measurement: bytes = b""
    launch_config: bytes = b""
    _process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _proxy: Any = field(default=None, repr=False)
    _drain: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def socket_path(self) -> Path:
        return self.state / "enclave.sock"

    @property
    def roots_pem(self) -> bytes:
        return (self.state / "sim-roots" / SIMULATED_FILES[self.platform]).read_bytes()

    async def start(self) -> EnclaveInstance:
        config = json.loads((self.state / "launch.json").read_text())
        self.launch_config = canonical_launch_config(config)
        self.measurement = await asyncio.to_thread(
            simulated_measurement, RUNNING_TREE, self.launch_config
        )
        log_file = (self.state / "enclave.log").open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "enclave.server", "serve", "--state", str(self.state),
                "--listen", f"unix:{self.socket_path}", "--platform", self.platform,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=log_file, start_new_session=True,
            )  # fmt: skip
        finally:
            log_file.close()
        assert self._process.stdout is not None
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        if not line.startswith(b"serving "):
            await self.stop()
            tail = (self.state / "enclave.log").read_text(errors="replace")[-3000:]
            raise InstanceError(f"the enclave did not start:\n{tail}")
        self._drain = asyncio.create_task(_drain(self._process.stdout))
        from host.config import EnclaveAddress, ListenAddress, ProxyConfig
        from host.proxy import HostProxy

        self._proxy = HostProxy(
            ProxyConfig(
                listen=ListenAddress.parse("127.0.0.1:0"),
                enclave=EnclaveAddress.parse(f"unix:{self.socket_path}"),
            )
        )
        await self._proxy.start()
        self.url = f"https://127.0.0.1:{self._proxy.port}"
        return self

    def profile(self, *, principal: str | None = None, key_file: Path | None = None) -> Any:
        """A client profile for this instance (credentials optional)."""
        from kms.profile import Profile, TrustConfig

        profile = Profile(
            platform=self.platform,
            endpoints=(self.url,),
            trust=TrustConfig("simulated", self.roots_pem),
            policy_document=reference_policy(self.platform, self.measurement, self.launch_config),
            directory=self.state,
        )
        if principal is not None and key_file is not None:
            from kms.credentials import with_credentials

            profile = with_credentials(profile, principal, str(key_file))
        return profile

    async def stop(self) -> None:
        if self._proxy is not None:
            with contextlib.suppress(Exception):
                await self._proxy.stop(grace=0.5)
            self._proxy = None
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.read(4096):
            pass
