"""``kms``: the command-line client.

``kms --profile FILE attest [--json]`` attests an endpoint of the profile and prints the
verified claims (``--json``: one JSON object; "measurement" is hex, exactly what
``python -m measurements`` prints). Exit codes: 0 success, 2 usage or profile error,
3 attestation refused, 4 unreachable, 5 the KMS answered with an error. On failure one
line goes to stderr and, with ``--json``, an RFC 9457 problem document to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO, NoReturn

from kms.client import KmsClient
from kms.commands import COMMAND_MODULES, CommandContext
from kms.credentials import discard_stdout
from kms.errors import (
    AttestationRefused,
    KmsError,
    ProfileError,
    ServerError,
    TransportError,
    UsageError,
)
from kms.profile import Profile

PROG = "kms"
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4
EXIT_SERVER_ERROR = 5
DEFAULT_PROFILE_ENV = "KMS_PROFILE"


class _CommandLineError(Exception):
    """The command line does not parse: ``main`` reports it like every other failure."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message


class _OneLineErrors(argparse.ArgumentParser):
    """A usage error is one line on stderr, like every other failure, and with ``--json``
    the problem document too (subcommands' parsers are made of this class as well)."""

    def error(self, message: str) -> NoReturn:
        raise _CommandLineError(self.prog, message)


def _asks_for_json(argv: Sequence[str]) -> bool:
    """``--json`` anywhere among the options (not after ``--``): an unparsable command line
    still gets the problem document the caller asked for."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog=PROG, description="Enclave KMS client.")
    parser.add_argument(
        "--profile",
        default=os.environ.get(DEFAULT_PROFILE_ENV),
        help=f"client profile (client.toml; default ${DEFAULT_PROFILE_ENV})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    parser.add_argument(
        "--json",
        dest="json_everywhere",
        action="store_true",
        help="JSON output (the problem document on failure), as the command's own --json",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    attest = commands.add_parser("attest", help="attest the KMS and print the verified claims")
    attest.add_argument("--json", action="store_true", help="print JSON")
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def _exit_code(error: KmsError) -> int:
    if isinstance(error, AttestationRefused):
        return EXIT_REFUSED
    if isinstance(error, ProfileError):
        return EXIT_USAGE
    if isinstance(error, TransportError):
        return EXIT_UNREACHABLE
    if isinstance(error, ServerError):
        return EXIT_SERVER_ERROR
    return 1


def _print_claims(claims: Mapping[str, object], out: IO[str]) -> None:
    order = ("endpoint", "platform", "measurement", "simulated", "debug", "verifier",
             "tls_certificate_sha256", "nonce", "verified_at")  # fmt: skip
    print("attestation verified", file=out)
    for key in order:
        if key in claims:
            print(f"  {key}: {claims[key]}", file=out)
    for key, value in claims.items():
        if key not in order and key not in ("report_data", "token"):
            print(
                f"  {key}: {json.dumps(value) if not isinstance(value, str) else value}", file=out
            )


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(arguments)
    except _CommandLineError as exc:
        print(f"{exc.prog}: {exc.message} (see {exc.prog} --help)", file=err)
        if _asks_for_json(arguments):
            print(json.dumps(UsageError(exc.message).as_problem(), indent=2), file=out)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        stream=err,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.json_everywhere:  # ``kms --json CMD`` means ``kms CMD --json``
        args.json = True
    as_json = bool(getattr(args, "json", False))
    handler = getattr(args, "handler", None)
    if handler is not None:
        context = CommandContext(
            args=args, profile_path=args.profile, stdin=sys.stdin.buffer, stdout=out, stderr=err
        )
        try:
            return int(handler(context))
        except KmsError as exc:
            print(f"{PROG}: {exc}", file=err)
            if as_json:
                print(json.dumps(exc.as_problem(), indent=2), file=out)
            return _exit_code(exc)
        except BrokenPipeError:
            return _reader_left()
    try:
        if not args.profile:
            raise ProfileError("no profile: give --profile FILE (or set $KMS_PROFILE)")
        profile = Profile.load(args.profile)
        with KmsClient(profile) as client:
            result = client.attest()
    except KmsError as exc:
        print(f"{PROG}: {exc}", file=err)
        if as_json:
            print(json.dumps(exc.as_problem(), indent=2), file=out)
        return _exit_code(exc)
    claims = result.to_json()
    try:
        if as_json:
            print(json.dumps(claims, indent=2), file=out)
        else:
            _print_claims(claims, out)
        out.flush()
    except BrokenPipeError:
        return _reader_left()
    return EXIT_OK


def _reader_left() -> int:
    discard_stdout()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
