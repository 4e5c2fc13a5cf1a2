"""Helpers for tests that run the enclave in-process on the simulated platform.

``SimulatedLaunch`` prepares a state directory like ``kms-sim`` does (fake hardware, roots,
launch configuration, measurement); ``InProcessEnclave`` serves the real enclave
application with its attested TLS on a unix socket, optionally behind the real host proxy,
so a test can read the enclave's request log (``app[REQUEST_LOG]``) and prove what reached
it. Test-only: nothing in the service imports this module.

The enclave bootstraps the KMS as ``kms-enclave serve`` does, with its own state in
``<socket dir>/<socket stem>.kms`` (so enclaves of one launch, even with other measurements,
never share sealed state; a restart on the same socket path finds its state again). One
PKCS#11 backend per process: when the test session already holds the shared test token
(``tests.hsm.support``), the enclave borrows it, with a counter of its own; otherwise it
provisions and opens its own token under its state directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from enclave.app import REQUEST_LOG, RUNTIME, TLS_IDENTITY, RequestLog, create_app
from enclave.attestation.providers import RUNNING_TREE, simulated_device
from enclave.bootstrap import BootstrapOptions
from enclave.config import EnclaveConfig
from enclave.runtime import KmsRuntime
from measurements.compute import canonical_launch_config, launch_config_for, simulated_measurement
from simulator.stack import reference_policy
from verifier.claims import Platform
from verifier.roots import SIMULATED_FILES


@dataclass(frozen=True)
class SimulatedLaunch:
    state: Path
    platform: Platform
    roots_pem: bytes
    launch_config: bytes
    measurement: bytes

    @classmethod
    def prepare(cls, state: Path, platform: Platform = "sev-snp") -> SimulatedLaunch:
        state.mkdir(parents=True, exist_ok=True)
        device = simulated_device(platform, state / "hw")
        roots = device.roots_pem()
        (state / "sim-roots").mkdir(exist_ok=True)
        (state / "sim-roots" / SIMULATED_FILES[platform]).write_bytes(roots)
        config = launch_config_for(platform)
        (state / "launch.json").write_text(json.dumps(config))
        canonical = canonical_launch_config(config)
        return cls(
            state, platform, roots, canonical, simulated_measurement(RUNNING_TREE, canonical)
        )

    def policy(self) -> dict[str, Any]:
        return reference_policy(self.platform, self.measurement, self.launch_config)

    def profile(self, endpoints: list[str], **overrides: Any) -> Any:
        from kms.profile import Profile, TrustConfig

        arguments: dict[str, Any] = {
            "platform": self.platform,
            "endpoints": tuple(endpoints),
            "trust": TrustConfig("simulated", self.roots_pem),
            "policy_document": self.policy(),
            "directory": self.state,
        }
        arguments.update(overrides)
        return Profile(**arguments)


@dataclass
class InProcessEnclave:
    """The enclave app on ``unix:<socket>`` (and, with ``proxy=True``, the host proxy)."""

    launch: SimulatedLaunch
    socket_path: Path
    measure_root: Path | None = None
    proxy: bool = True
    extra_routes: list[web.RouteDef] = field(default_factory=list)
    data_dir: Path | None = None
    hsm: Any = None  # an open HsmBackend to use (else: see the module docstring)
    app: web.Application | None = None
    url: str = ""
    _runner: web.AppRunner | None = None
    _proxy: Any = None
    _borrowed: bool = False

    @property
    def request_log(self) -> RequestLog:
        assert self.app is not None
        return self.app[REQUEST_LOG]

    @property
    def runtime(self) -> KmsRuntime:
        assert self.app is not None
        return self.app[RUNTIME]

    @property
    def kms_dir(self) -> Path:
        return self.data_dir or self.socket_path.parent / f"{self.socket_path.stem}.kms"

    def _bootstrap_options(self) -> BootstrapOptions:
        backend = self.hsm
        if backend is None and _shared_test_hsm_open():
            from tests.hsm import support

            backend = support.acquire().backend
            self._borrowed = True
        if backend is None:
            return BootstrapOptions()
        label = "kms-test-counter/" + hashlib.sha256(str(self.kms_dir).encode()).hexdigest()[:24]
        return BootstrapOptions(hsm=backend, counter_label=label)

    @property
    def certificate_der(self) -> bytes:
        assert self.app is not None
        return self.app[TLS_IDENTITY].certificate_der

    async def start(self) -> InProcessEnclave:
        config = EnclaveConfig.create(
            platform=self.launch.platform,
            state_dir=self.launch.state,
            listen=f"unix:{self.socket_path}",
            measure_root=self.measure_root,
            data_dir=self.kms_dir,
        )
        self.app = create_app(config, bootstrap_options=self._bootstrap_options())
        self.app.router.add_routes(self.extra_routes)
        self._runner = web.AppRunner(self.app, access_log=None)
        try:
            await self._runner.setup()
        except BaseException:
            self._runner = None
            self._release()
            raise
        site = web.UnixSite(
            self._runner, str(self.socket_path), ssl_context=self.app[TLS_IDENTITY].server_context()
        )
        await site.start()
        if self.proxy:
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

    async def stop(self) -> None:
        if self._proxy is not None:
            await self._proxy.stop(grace=0.5)
            self._proxy = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._release()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def _release(self) -> None:
        if self._borrowed:
            from tests.hsm import support

            self._borrowed = False
            support.release()

    async def __aenter__(self) -> InProcessEnclave:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _shared_test_hsm_open() -> bool:
    """Whether this (pytest) process holds the shared test token of ``tests.hsm.support``."""
    try:
        from tests.hsm import support
    except ImportError:
        return False
    return support._registry.shared is not None
