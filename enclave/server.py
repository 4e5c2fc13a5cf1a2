"""``kms-enclave serve``: bootstrap the KMS, then serve it on a unix socket, vsock or TCP.

This module owns the process edge: argument parsing, logging set-up, running the bootstrap
(``enclave.bootstrap``, inside the app's start-up), binding the listen socket, serving TLS
with the in-enclave key, and a clean stop on SIGTERM/SIGINT (audit log flushed, store and
HSM closed, the unix socket removed). Once serving it prints one line, ``serving <address>
<sha256 of the TLS certificate>``, on stdout for the launcher; a start that fails (the
state cannot be unsealed by this launch, the database was rolled back, ...) prints
``kms-enclave: cannot start: <why>`` on stderr and exits 3. It never writes the TLS key
anywhere.

State directory layout (``--state DIR``; ``--data DIR`` moves the KMS's own files, marked
*, elsewhere). Everything here is on the untrusted host's disk: what is secret is sealed
to the launch (platform, measurement, launch-configuration hash) or encrypted under keys
that are, and what must not roll back is bound to the HSM's monotonic counter::

    launch.json             launch configuration (admins, quorum, policy), from the host;
                            attested (SNP HOST_DATA / TDX MRCONFIGID / Nitro PCR16)
    hw/, sim-hw/            simulation only: the fake hardware (vendor keys, chip secret)
    hsm/softhsm2.conf    *  SoftHSM2 configuration (no secrets)
    hsm/tokens/          *  the SoftHSM2 token: master key (AES-256, non-extractable) and
                            the monotonic counter, encrypted by SoftHSM under the user PIN
    hsm/pin.sealed       *  the token's user PIN, sealed (random, made on first boot)
    hsm/so-pin.sealed    *  the token's SO PIN, sealed
    storage.key.sealed   *  the 32-byte storage key, sealed
    kms.db               *  SQLite store (WAL): AEAD records, head MAC'd and bound to the
                            HSM counter; keks/, keys/, system/, system_keys/, kms_config/ ...
    audit/audit.log      *  hash-chained audit records, checkpoints signed by the audit key
    restore/             *  the restore recipient key (sealed), for restores into this launch
    backups/             *  backup bundles, each bundle's backup key sealed
    quorum-shares/       *  TDX/Nitro hardware only: custodians' decrypted seal-key shares
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from enclave.api.routes import FAST_PATH_ROUTES
from enclave.app import TLS_IDENTITY, create_app
from enclave.attestation.providers import ProviderError
from enclave.bootstrap import BootstrapError
from enclave.config import ConfigError, EnclaveConfig, ListenAddress
from enclave.fastpath.delegation import FastPathRunner
from enclave.fastpath.routes import FastRoutes
from enclave.fastpath.site import FastPathSite
from enclave.hsm.errors import HsmError
from enclave.sealing.errors import SealingError
from enclave.storage.errors import StorageError
from enclave.unhandled import log_unhandled

log = logging.getLogger("enclave.server")

EXIT_USAGE = 2
EXIT_START_FAILED = 3
UNIX_SOCKET_MODE = 0o660
LISTEN_BACKLOG = 128
# The cyclic collector's young-generation threshold while serving (CPython's default: 700).
# A request allocates a few hundred container objects, so at 700 a collection ran every
# couple of requests on the loop thread; nearly all of them die young by reference
# counting anyway. The older generations' ratios stay CPython's (10, 10).
SERVING_GC_THRESHOLD = 10_000


def _remove_stale_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
        else:
            raise ConfigError(f"{path} exists and is not a socket")


def vsock_socket(cid: int, port: int) -> socket.socket:
    """A listening AF_VSOCK socket (Linux; Nitro enclaves and confidential VMs)."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise ConfigError("this system has no AF_VSOCK support")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((cid, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def make_site(
    runner: FastPathRunner,
    address: ListenAddress,
    ssl_context: ssl.SSLContext,
    routes: FastRoutes,
    shutdown_timeout: float,
) -> web.BaseSite:
    """The listening site: connections start on the fast path (``enclave.fastpath``) for
    ``routes`` and go to aiohttp for everything else."""
    where: dict[str, Any]
    if address.kind == "unix":
        assert address.path is not None
        _remove_stale_socket(address.path)
        where = {"path": str(address.path)}
    elif address.kind == "vsock":
        assert address.cid is not None and address.port is not None
        where = {"sock": vsock_socket(address.cid, address.port)}
    else:
        assert address.host is not None and address.port is not None
        where = {"host": address.host, "port": address.port}
    return FastPathSite(runner, routes, ssl_context=ssl_context,
                        shutdown_timeout=shutdown_timeout, **where)  # fmt: skip


def bound_address(site: web.BaseSite, address: ListenAddress) -> str:
    if address.kind == "tcp":
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            host, port = sockets[0].getsockname()[:2]
            return f"tcp:{host}:{port}"
    return str(address)


async def serve(
    config: EnclaveConfig, stop: asyncio.Event | None = None, *, fast_path: bool = True
) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is not given).
    ``fast_path``: serve the KMS API's hot routes on ``enclave.fastpath`` (else aiohttp
    serves every request; the answers are the same, the CPU per request is not)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(log_unhandled)
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    app = create_app(config)
    runner = FastPathRunner(
        app, handle_signals=False, shutdown_timeout=config.limits.shutdown_grace_seconds
    )
    await runner.setup()
    try:
        identity = app[TLS_IDENTITY]
        wanted = FAST_PATH_ROUTES if fast_path else ()
        routes = FastRoutes.of(app, wanted, config.limits.max_request_body_bytes)
        site = make_site(runner, config.listen, identity.server_context(), routes,
                         config.limits.shutdown_grace_seconds)  # fmt: skip
        await site.start()
        _settle_heap()
        if config.listen.kind == "unix" and config.listen.path is not None:
            os.chmod(config.listen.path, UNIX_SOCKET_MODE)
        print(f"serving {bound_address(site, config.listen)} {identity.certificate_sha256.hex()}",
              flush=True)  # fmt: skip
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
        if config.listen.kind == "unix" and config.listen.path is not None:
            with contextlib.suppress(FileNotFoundError):
                config.listen.path.unlink()


def _settle_heap() -> None:
    """Once started: collect bootstrap's garbage, move what survives (runtime, app, caches,
    imported modules) out of the collector's sight (``gc.freeze``: it is never garbage, and
    every full collection would otherwise walk it again) and collect the young generation
    less often. Memory is still freed by reference counting at once; only cycles wait
    longer. Measured in-process: 5-10% less loop CPU per KMS API request."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(SERVING_GC_THRESHOLD, middle, old)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kms-enclave", description="The Enclave KMS service.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve attested TLS")
    run.add_argument(
        "--state",
        type=Path,
        required=True,
        help="state directory (launch.json, hw/, and the KMS's sealed state)",
    )
    run.add_argument(
        "--data",
        type=Path,
        default=None,
        help="where the KMS keeps its own state (default: --state)",
    )
    run.add_argument("--listen", required=True, help="unix:PATH, vsock:CID:PORT or tcp:HOST:PORT")
    run.add_argument("--platform", required=True, choices=("sev-snp", "tdx", "nitro"))
    run.add_argument("--attestation", default="simulated", choices=("simulated", "hardware"))
    run.add_argument(
        "--measure-root", type=Path, default=None,
        help="simulation only: the tree the fake hardware measures (default: this code's tree)",
    )  # fmt: skip
    run.add_argument(
        "--pakv-h2", default=None, metavar="ADDRESS",
        help="K/V key service over HTTP/2 with TLS (h2): unix:PATH or tcp:HOST:PORT",
    )  # fmt: skip
    run.add_argument(
        "--pakv-h2c", default=None, metavar="ADDRESS",
        help="K/V key service over cleartext HTTP/2 (h2c): unix:PATH or tcp:HOST:PORT",
    )  # fmt: skip
    run.add_argument(
        "--unsafe-pakv-test-keys", action="store_true",
        help="UNSAFE, simulated attestation only: the K/V key service serves and releases "
        "ONLY the PUBLICLY KNOWN K/V test key pair (id 64), for local interop tests; anyone "
        "can decrypt what is encrypted to it",
    )  # fmt: skip
    run.add_argument(
        "--no-fast-path", action="store_true",
        help="let aiohttp serve every request (the KMS API's hot routes included)",
    )  # fmt: skip
    run.add_argument("--log-level", default="INFO")
    return parser


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (a dependency on Linux): its TLS and socket paths cost
    5-15% less CPU per request here (measured A/B in bench_kms_api); else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = EnclaveConfig.create(
            platform=args.platform, state_dir=args.state, listen=args.listen,
            attestation=args.attestation, measure_root=args.measure_root, data_dir=args.data,
            pakv_h2=args.pakv_h2, pakv_h2c=args.pakv_h2c,
            unsafe_pakv_test_keys=args.unsafe_pakv_test_keys,
        )  # fmt: skip
    except ConfigError as exc:
        print(f"kms-enclave: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(config, fast_path=not args.no_fast_path))
    except (
        BootstrapError, ProviderError, ConfigError, HsmError, SealingError, StorageError, OSError,
    ) as exc:  # fmt: skip
        log.error("cannot start: %s", exc)
        print(f"kms-enclave: cannot start: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
