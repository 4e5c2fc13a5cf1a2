"""``kms-verifier``: verify attestation evidence from the command line, or serve the verifier.

What this module owns: argument parsing, reading files (evidence, certificates, collateral,
policy, signing key) with size caps, reading the clock when ``--at`` is not given, and
turning verdicts into exit codes and JSON. Verification itself is the library's pure
function; this edge is the only place in the verify path that touches files and the clock.

Exit codes of ``verify``: 0 genuine (and meets the policy when one is given), claims as JSON
on stdout; 1 rejected, ``{"error": {"type", "detail"[, "mismatches"]}}`` on stdout; 2 usage
error (bad flags, unreadable files, bad time, bad policy), a message on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from verifier.claims import PLATFORMS, Claims, Platform, parse_platform
from verifier.encoding import MAX_EVIDENCE_BYTES
from verifier.errors import (
    MalformedEvidence,
    UnsupportedEvidence,
    UsageError,
    VerificationError,
)
from verifier.policy import MAX_POLICY_BYTES, Policy
from verifier.roots import SIMULATED_FILES, TrustRoots
from verifier.verify import Verifier

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
# Evidence text (hex/base64 of a 1 MiB document) may be about twice its binary size.
MAX_EVIDENCE_FILE_BYTES = MAX_EVIDENCE_BYTES * 2
MAX_CERT_FILE_BYTES = 1 << 20
MAX_COLLATERAL_FILE_BYTES = 4 << 20
MAX_REPORT_DATA_BYTES = 64
PROG = "kms-verifier"


class CliUsageError(Exception):
    """A bad command line or an unreadable input: exit 2 with a message on stderr."""


@dataclass(frozen=True)
class VerifyRequest:
    """Everything one verification needs, already read and parsed."""

    platform: Platform
    evidence: bytes
    at: datetime
    certs: tuple[bytes, ...] = ()
    collateral: tuple[bytes, ...] = ()
    policy: Policy | None = None
    expected_report_data: bytes | None = None


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 date-time ("Z" or an offset; a bare time is taken as UTC)."""
    candidate = text.strip()
    if not candidate or len(candidate) > 64:
        raise UsageError(f"{text!r} is not an RFC 3339 time")
    if candidate[-1] in "zZ":
        candidate = candidate[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(candidate)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value.astimezone(UTC).timestamp()  # year 1 at +01:00 does not exist in UTC
    except (ValueError, OverflowError, OSError):
        raise UsageError(f"{text!r} is not an RFC 3339 time") from None
    return value


def parse_roots(spec: str) -> TrustRoots:
    """``production`` (the pinned vendor roots) or ``simulated:DIR`` (fake-hardware roots)."""
    if spec == "production":
        return TrustRoots.production()
    if spec.startswith("simulated:"):
        directory = Path(spec.removeprefix("simulated:"))
        if not directory.is_dir():
            raise UsageError(f"simulated roots directory {str(directory)!r} does not exist")
        if not any((directory / name).is_file() for name in SIMULATED_FILES.values()):
            names = ", ".join(SIMULATED_FILES.values())
            raise UsageError(f"{str(directory)!r} holds none of the simulated roots ({names})")
        try:
            return TrustRoots.simulated_from_directory(directory)
        except OSError as exc:
            raise UsageError(f"cannot read simulated roots: {exc.strerror}") from None
    raise UsageError(f"--roots must be 'production' or 'simulated:DIR', not {spec!r}")


def parse_report_data(text: str) -> bytes:
    compact = "".join(text.split()).lower().removeprefix("0x")
    try:
        value = bytes.fromhex(compact)
    except ValueError:
        raise UsageError("--report-data is not valid hex") from None
    if len(value) > MAX_REPORT_DATA_BYTES:
        raise UsageError(f"--report-data is longer than {MAX_REPORT_DATA_BYTES} bytes")
    return value


def run_verification(verifier: Verifier, request: VerifyRequest) -> Claims:
    """Verify (and appraise, when a policy is given); every failure is a typed error.

    A crash inside a platform parser on hostile bytes must still end in a rejection, never
    an acceptance or an untyped error: it becomes ``MalformedEvidence`` (fail closed), and
    the crash is logged by type only, since exception messages may quote evidence bytes.
    """
    try:
        if request.policy is None:
            return verifier.verify(
                request.platform,
                request.evidence,
                at=request.at,
                certs=request.certs,
                collateral=request.collateral,
                expected_report_data=request.expected_report_data,
            )
        return verifier.verify_and_appraise(
            request.platform,
            request.evidence,
            policy=request.policy,
            at=request.at,
            certs=request.certs,
            collateral=request.collateral,
            expected_report_data=request.expected_report_data,
        )
    except VerificationError:
        raise
    except ImportError as exc:  # a platform module absent from this build: fail closed
        if (exc.name or "").startswith("verifier."):
            raise UnsupportedEvidence(
                f"this verifier build cannot verify or appraise {request.platform} evidence"
            ) from None
        logger.error("verifier failed on %s evidence with ImportError", request.platform)
        raise MalformedEvidence("the evidence could not be processed") from None
    except Exception as exc:
        logger.error("verifier failed on %s evidence with %s", request.platform, type(exc).__name__)
        logger.debug("verifier failure", exc_info=True)
        raise MalformedEvidence("the evidence could not be processed") from None


def _read_input(path: str, limit: int, what: str, stdin: IO[bytes] | None = None) -> bytes:
    try:
        if path == "-":
            stream = stdin if stdin is not None else sys.stdin.buffer
            data = stream.read(limit + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
    except OSError as exc:
        raise CliUsageError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise CliUsageError(f"{what} {path!r} is larger than {limit} bytes")
    return data


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Verify confidential-computing attestation evidence."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    verify = commands.add_parser("verify", help="verify one piece of evidence")
    verify.add_argument("evidence", metavar="EVIDENCE", help="file (raw, hex or base64); - = stdin")
    verify.add_argument("--platform", required=True, choices=PLATFORMS)
    verify.add_argument(
        "--cert", action="append", default=[], metavar="FILE",
        help="VCEK/VLEK or PCK certificate (DER, PEM or PEM bundle); repeatable",
    )  # fmt: skip
    verify.add_argument(
        "--collateral", action="append", default=[], metavar="FILE",
        help="CRL, TCB Info or QE Identity; repeatable",
    )  # fmt: skip
    verify.add_argument("--at", metavar="RFC3339", help="verification time (default: now)")
    verify.add_argument("--policy", metavar="FILE", help="appraisal policy (JSON)")
    verify.add_argument("--report-data", metavar="HEX", help="expected report data")
    verify.add_argument(
        "--roots", default="production", metavar="{production,simulated:DIR}",
        help="trust roots (default: production)",
    )  # fmt: skip
    verify.add_argument("--json", action="store_true", help="JSON output (the default)")

    serve = commands.add_parser("serve", help="run the remote attestation verifier endpoint")
    serve.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    serve.add_argument("--roots", default="production", metavar="{production,simulated:DIR}")
    serve.add_argument("--signing-key", metavar="FILE", help="P-256 or Ed25519 private key PEM")
    serve.add_argument("--issuer", help="token issuer (default: http://HOST:PORT)")
    serve.add_argument(
        "--token-ttl", type=int, default=300, metavar="SECONDS",
        help="result token lifetime (default: 300)",
    )  # fmt: skip
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def _verify_command(args: argparse.Namespace, stdout: IO[str], stdin: IO[bytes] | None) -> int:
    try:
        platform = parse_platform(args.platform)
        at = parse_rfc3339(args.at) if args.at is not None else datetime.now(UTC)
        expected = parse_report_data(args.report_data) if args.report_data else None
        roots = parse_roots(args.roots)
        policy = None
        if args.policy is not None:
            policy = Policy.from_json(_read_input(args.policy, MAX_POLICY_BYTES, "policy file"))
    except VerificationError as exc:  # UsageError, InvalidPolicy: the caller's mistake
        raise CliUsageError(exc.detail) from None
    request = VerifyRequest(
        platform=platform,
        evidence=_read_input(args.evidence, MAX_EVIDENCE_FILE_BYTES, "evidence", stdin),
        at=at,
        certs=tuple(_read_input(p, MAX_CERT_FILE_BYTES, "certificate") for p in args.cert),
        collateral=tuple(
            _read_input(p, MAX_COLLATERAL_FILE_BYTES, "collateral") for p in args.collateral
        ),
        policy=policy,
        expected_report_data=expected,
    )
    try:
        claims = run_verification(Verifier(roots), request)
    except UsageError as exc:
        raise CliUsageError(exc.detail) from None
    except VerificationError as exc:
        json.dump({"error": exc.as_dict()}, stdout, indent=2)
        stdout.write("\n")
        return EXIT_REJECTED
    json.dump(claims.to_json(), stdout, indent=2)
    stdout.write("\n")
    return EXIT_OK


def _serve_command(args: argparse.Namespace, stdout: IO[str]) -> int:
    from datetime import timedelta

    from verifier import server
    from verifier.token import InvalidSigningKey, TokenIssuer

    try:
        host, port = server.parse_listen(args.listen)
        roots = parse_roots(args.roots)
    except VerificationError as exc:
        raise CliUsageError(exc.detail) from None
    if not 0 < args.token_ttl <= 3600:
        raise CliUsageError("--token-ttl must be between 1 and 3600 seconds")
    key_pem = None
    if args.signing_key is not None:
        key_pem = _read_input(args.signing_key, 64 * 1024, "signing key")
        try:  # fail at start, not at the first request
            TokenIssuer.from_pem(key_pem, "check")
        except InvalidSigningKey as exc:
            raise CliUsageError(exc.detail) from None
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    config = server.ServerConfig(
        roots=roots,
        signing_key_pem=key_pem,
        issuer=args.issuer,
        token_ttl=timedelta(seconds=args.token_ttl),
    )
    try:
        server.serve(config, host, port, announce=lambda line: print(line, file=stdout, flush=True))
    except OSError as exc:
        raise CliUsageError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
    return EXIT_OK


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    stdin: IO[bytes] | None = None,
) -> int:
    """Run the command line; return the exit code (never raises ``SystemExit``)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad command line (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "verify":
            return _verify_command(args, out, stdin)
        return _serve_command(args, out)
    except CliUsageError as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (e.g. `| head`): the verdict was not seen
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_REJECTED


if __name__ == "__main__":
    sys.exit(main())
