"""``kms-sim up``: run the whole simulated stack until SIGINT/SIGTERM.

Prints exactly one ``ready https://HOST:PORT`` line once a client has attested the enclave
through the host proxy, then what to try next. Exit codes: 0 clean stop, 1 start failure,
2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from simulator.stack import SimError, make_stack

EXIT_START_FAILED = 1
EXIT_USAGE = 2
UNSAFE_BANNER = (
    "  UNSAFE:      K/V serves ONLY the PUBLICLY KNOWN test key pair (id 64); "
    "anyone can decrypt what is encrypted to it\n"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kms-sim", description="The simulated Enclave KMS stack.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start fake hardware, verifier, enclave and host proxy")
    up.add_argument("--state", type=Path, required=True, help="state directory (created)")
    up.add_argument("--listen", default="127.0.0.1:8443", help="HOST:PORT for the host proxy")
    up.add_argument("--platform", default="sev-snp", choices=("sev-snp", "tdx", "nitro"))
    up.add_argument(
        "--reset", action="store_true",
        help="discard the KMS state (keys, HSM token, database) in --state before starting",
    )  # fmt: skip
    up.add_argument(
        "--unsafe-pakv-test-keys", action="store_true",
        help="UNSAFE: the K/V key service serves ONLY the PUBLICLY KNOWN K/V test key pair "
        "(id 64) for local interop tests; anyone can decrypt what is encrypted to it",
    )  # fmt: skip
    up.add_argument("--log-level", default="WARNING")
    return parser


def _relative(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return os.path.relpath(path)
    return str(path)


async def up(
    state: Path,
    listen: str,
    platform: str,
    *,
    reset: bool = False,
    unsafe_pakv_test_keys: bool = False,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stack = make_stack(
        state, listen, platform, reset_kms=reset, unsafe_pakv_test_keys=unsafe_pakv_test_keys
    )
    starting = asyncio.create_task(stack.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        await stack.stop()
        return 0
    stopping.cancel()
    error = starting.exception()
    if error is not None:
        print(f"kms-sim: cannot start: {error}", file=sys.stderr, flush=True)
        return EXIT_START_FAILED
    kms = Path(sys.executable).parent / "kms"
    profile = _relative(stack.profile_path)
    print(f"ready {stack.url}", flush=True)
    print(
        f"  measurement  {stack.measurement.hex()}\n"
        f"  try:         {_relative(kms)} --profile {profile} attest --json\n"
        f"  remote:      {_relative(kms)} --profile {_relative(stack.remote_profile_path)} "
        "attest --json   (through the kms-verifier endpoint)\n"
        f"  K/V keys:    {stack.url}/.well-known/protected-auction/v1/public-keys\n"
        f"  K/V HTTP/2:  h2 {stack.pakv_urls.get('h2', '-')}  h2c {stack.pakv_urls.get('h2c', '-')}"
        f"  ({_relative(stack.state)}/pakv.json)\n"
        f"  keys:        {_relative(kms)} --profile {profile} keys create --purpose encrypt --json"
        "   (as the administrator: admin.key)\n"
        f"{UNSAFE_BANNER if unsafe_pakv_test_keys else ''}"
        f"  logs:        {_relative(stack.state)}/enclave.log, verifier.log\n"
        "  stop:        Ctrl-C",
        flush=True,
    )
    await stop.wait()
    await stack.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        return asyncio.run(
            up(
                args.state,
                args.listen,
                args.platform,
                reset=args.reset,
                unsafe_pakv_test_keys=args.unsafe_pakv_test_keys,
            )
        )
    except (SimError, OSError) as exc:
        print(f"kms-sim: {exc}", file=sys.stderr)
        return EXIT_START_FAILED


if __name__ == "__main__":
    sys.exit(main())
