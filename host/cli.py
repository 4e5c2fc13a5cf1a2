"""``kms-host``: run the untrusted L4 proxy from the command line.

Owns argument parsing, signal handling and the ``ready tcp://HOST:PORT`` line that tells a
supervisor (``kms-sim``, a test) the proxy is listening. Must never touch the bytes it
forwards or import enclave code.

Event loop: uvloop when it is installed (a dependency on Linux), else asyncio's own;
``--loop`` picks one. The relay's latency is mostly the proxy process waking up twice per
request (request in, response out); uvloop's loop costs about a fifth less CPU per wakeup
than asyncio's selector loop, which is most of what a relay written in Python can save
(``bench/bench_proxy.py``).

SIGINT/SIGTERM: stop accepting, let in-flight connections finish for ``--shutdown-grace``
seconds, then close them and exit 0. A second signal closes everything at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields

from host.config import EnclaveAddress, ListenAddress, ProxyConfig
from host.errors import ConfigError
from host.proxy import HostProxy

log = logging.getLogger("host.cli")

DEFAULTS = {f.name: f.default for f in fields(ProxyConfig)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kms-host",
        description="Untrusted L4 proxy: forwards TCP clients to the enclave, never opens TLS.",
    )
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept clients on")
    parser.add_argument(
        "--enclave", required=True, help="unix:PATH | vsock:CID:PORT | tcp:HOST:PORT"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULTS["max_connections"],
        help="connections over this are closed at once (default %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULTS["idle_timeout"],
        help="close a connection after this many seconds with no bytes (default %(default)s)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULTS["connect_timeout"],
        help="seconds to reach the enclave (default %(default)s)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=DEFAULTS["shutdown_grace"],
        help="seconds in-flight connections may finish on SIGTERM (default %(default)s)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop: uvloop if installed (auto), or asyncio's own (default %(default)s)",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return parser


def config_from_args(args: argparse.Namespace) -> ProxyConfig:
    return ProxyConfig(
        listen=ListenAddress.parse(args.listen),
        enclave=EnclaveAddress.parse(args.enclave),
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        connect_timeout=args.connect_timeout,
        shutdown_grace=args.shutdown_grace,
    )


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``--loop NAME``; ``None`` is asyncio's default loop."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise ConfigError("--loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


async def serve(config: ProxyConfig) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals_seen = 0
    proxy = HostProxy(config)

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        stop_requested.set()
        if signals_seen > 1:
            for task in asyncio.all_tasks(loop):
                if task.get_name() == "kms-host-stop":
                    task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    await proxy.start()
    print(f"ready {proxy.url}", flush=True)
    await stop_requested.wait()
    stopping = asyncio.create_task(proxy.stop(), name="kms-host-stop")
    try:
        await stopping
    except asyncio.CancelledError:
        await proxy.stop(grace=0)  # second signal: close everything now


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="kms-host %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
        factory = loop_factory(args.loop)
    except ConfigError as exc:
        print(f"kms-host: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            log.info("event loop: %s", type(runner.get_loop()).__module__)
            runner.run(serve(config))
    except OSError as exc:  # cannot listen: address in use, permission, ...
        print(f"kms-host: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
