"""The remote attestation verifier endpoint (aiohttp).

What this module owns: the HTTP contract of ``POST /v1/attest`` (request schema, limits,
problem+json errors), issuing an attestation-result token for accepted evidence, publishing
the token key at ``/.well-known/jwks.json``, and ``/healthz``. Verification is the library's
pure function, run in a thread pool so the event loop keeps answering.

What it must never do: answer 200 for evidence the library rejected; answer 5xx to any
input (every client mistake is a 4xx problem, and a catch-all turns a bug into a bare 500
without internals); log evidence, certificates or tokens at info level; keep module-level
state (everything lives on the ``Application`` under typed ``AppKey``s).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from verifier.claims import Claims, parse_platform
from verifier.cli import VerifyRequest, parse_rfc3339, run_verification
from verifier.errors import InvalidPolicy, UsageError, VerificationError
from verifier.policy import Policy
from verifier.roots import TrustRoots
from verifier.token import DEFAULT_ISSUER, DEFAULT_TTL, TokenIssuer, policy_digest
from verifier.verify import Verifier

logger = logging.getLogger(__name__)

PROBLEM_BASE = "https://enclave-kms.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"
MAX_BODY_BYTES = 1 << 20
MAX_CERTS = 16
MAX_COLLATERAL = 16
MAX_NONCE_HEX = 256
REQUEST_FIELDS = frozenset({"platform", "evidence", "certs", "collateral", "policy", "nonce", "at"})
_BASE64 = re.compile(r"\A[A-Za-z0-9+/\-_]*={0,2}\Z")
_HEX = re.compile(r"\A(?:0[xX])?[0-9a-fA-F]+\Z")

# Problem types for transport-level mistakes (verification errors use their own ``type``).
_STATUS_PROBLEMS: dict[int, tuple[str, str]] = {
    400: ("malformed-request", "The request is malformed"),
    404: ("not-found", "No such resource"),
    405: ("method-not-allowed", "Method not allowed on this resource"),
    408: ("request-timeout", "The request body was not received in time"),
    413: ("payload-too-large", "The request body is too large"),
    415: ("unsupported-media-type", "The request body must be application/json"),
    500: ("internal-error", "Internal error"),
    503: ("busy", "The verifier is busy; retry later"),
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ServerConfig:
    """Everything the endpoint needs; limits are named here, not scattered."""

    roots: TrustRoots
    signing_key_pem: bytes | None = field(default=None, repr=False)
    issuer: str | None = None
    token_ttl: timedelta = DEFAULT_TTL
    max_body_bytes: int = MAX_BODY_BYTES
    verify_workers: int = 2
    # Verifications queued or running at once; beyond that the endpoint answers 503.
    max_pending_verifications: int = 64
    # A body sent slowly or never finished is answered 408 after this, not waited for.
    body_read_seconds: float = 30.0
    clock: Callable[[], datetime] = _utc_now


CONFIG_KEY = web.AppKey("config", ServerConfig)
VERIFIER_KEY = web.AppKey("verifier", Verifier)
ISSUER_KEY = web.AppKey("issuer", TokenIssuer)
EXECUTOR_KEY = web.AppKey("executor", ThreadPoolExecutor)
PENDING_KEY = web.AppKey("pending", asyncio.Semaphore)


class RequestProblem(Exception):
    """A client mistake in the request body: answered as a 4xx problem."""

    def __init__(self, detail: str, *, status: int = 400, slug: str = "malformed-request"):
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.slug = slug


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if extra:
        body.update(extra)
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def verification_problem(error: VerificationError) -> web.Response:
    """400 for requests the verifier cannot honour, 422 for evidence it rejects."""
    status = 400 if isinstance(error, UsageError) else 422
    extra = {k: v for k, v in error.as_dict().items() if k not in ("type", "detail")}
    return problem_response(status, error.type, error.title, error.detail, extra=extra)


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestProblem as problem:
        slug_title = _STATUS_PROBLEMS.get(problem.status, ("malformed-request", "Bad request"))
        headers = {"Retry-After": "1"} if problem.status == 503 else None
        return problem_response(
            problem.status, problem.slug, slug_title[1], problem.detail, headers=headers
        )
    except VerificationError as error:
        return verification_problem(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug, title = _STATUS_PROBLEMS.get(exc.status, ("http-error", exc.reason))
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem_response(exc.status, slug, title, exc.reason, headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.path)
        logger.debug("unhandled error", exc_info=True)
        return problem_response(500, "internal-error", "Internal error", "internal error")


def _b64decode(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise RequestProblem(f"{name} must be a base64 string")
    compact = "".join(value.split())
    if not compact or _BASE64.match(compact) is None:
        raise RequestProblem(f"{name} is not valid base64")
    unpadded = compact.rstrip("=")
    padded = unpadded + "=" * (-len(unpadded) % 4)
    try:
        if "-" in padded or "_" in padded:
            decoded = base64.urlsafe_b64decode(padded)
        else:
            decoded = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise RequestProblem(f"{name} is not valid base64") from None
    if not decoded:
        raise RequestProblem(f"{name} is empty")
    return decoded


def _b64list(document: Mapping[str, Any], name: str, limit: int) -> tuple[bytes, ...]:
    value = document.get(name)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RequestProblem(f"{name} must be a list of base64 strings")
    if len(value) > limit:
        raise RequestProblem(f"{name} holds more than {limit} entries")
    return tuple(_b64decode(item, f"{name}[{i}]") for i, item in enumerate(value))


@dataclass(frozen=True)
class AttestRequest:
    """A parsed ``POST /v1/attest`` body. ``at`` is None when the caller wants "now"."""

    verify: VerifyRequest
    nonce: str | None
    policy_digest: str | None
    explicit_time: bool

    @classmethod
    def from_json(cls, document: object, now: datetime) -> AttestRequest:
        if not isinstance(document, dict):
            raise RequestProblem("the request body must be a JSON object")
        unknown = sorted(str(k) for k in document if k not in REQUEST_FIELDS)
        if unknown:
            shown = ", ".join(repr(k[:40]) for k in unknown[:5])
            raise RequestProblem(f"unknown field(s): {shown}")
        missing = [k for k in ("platform", "evidence") if k not in document]
        if missing:
            raise RequestProblem(f"missing field(s): {', '.join(missing)}")
        if not isinstance(document["platform"], str):
            raise RequestProblem("platform must be a string")
        platform = parse_platform(document["platform"])  # UsageError -> 400
        evidence = _b64decode(document["evidence"], "evidence")
        certs = _b64list(document, "certs", MAX_CERTS)
        collateral = _b64list(document, "collateral", MAX_COLLATERAL)

        policy = None
        digest = None
        if document.get("policy") is not None:
            if not isinstance(document["policy"], dict):
                raise RequestProblem("policy must be a JSON object")
            try:
                policy = Policy.from_mapping(document["policy"])
            except VerificationError:
                raise
            except Exception:  # a policy field of a shape the parser did not foresee
                raise InvalidPolicy("the policy could not be parsed") from None
            digest = policy_digest(document["policy"])

        nonce = document.get("nonce")
        if nonce is not None:
            if not isinstance(nonce, str) or not nonce or len(nonce) > MAX_NONCE_HEX:
                raise RequestProblem(f"nonce must be a hex string of 1 to {MAX_NONCE_HEX} digits")
            if _HEX.match(nonce) is None or len(nonce.removeprefix("0x")) % 2:
                raise RequestProblem("nonce is not valid hex")

        at = now
        explicit = document.get("at") is not None
        if explicit:
            if not isinstance(document["at"], str):
                raise RequestProblem("at must be an RFC 3339 string")
            at = parse_rfc3339(document["at"])  # UsageError -> 400
        return cls(
            verify=VerifyRequest(
                platform=platform,
                evidence=evidence,
                at=at,
                certs=certs,
                collateral=collateral,
                policy=policy,
            ),
            nonce=nonce,
            policy_digest=digest,
            explicit_time=explicit,
        )


def _is_json_content_type(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RequestProblem(f"duplicate key {key[:40]!r} in the request body")
        out[key] = value
    return out


async def attest(request: web.Request) -> web.Response:
    config = request.app[CONFIG_KEY]
    if request.content_length is not None and request.content_length > config.max_body_bytes:
        raise RequestProblem(
            f"the body is larger than {config.max_body_bytes} bytes",
            status=413,
            slug="payload-too-large",
        )
    if not _is_json_content_type(request.content_type):
        raise RequestProblem(
            "the body must be application/json", status=415, slug="unsupported-media-type"
        )
    try:
        async with asyncio.timeout(config.body_read_seconds):
            body = await request.read()  # 413 past client_max_size, chunked bodies included
    except TimeoutError:
        raise RequestProblem(
            f"the body was not received within {config.body_read_seconds:g} s",
            status=408,
            slug="request-timeout",
        ) from None
    try:
        document = json.loads(body, object_pairs_hook=_reject_duplicate_keys)
    except RequestProblem:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RequestProblem("the body is not valid JSON") from None

    now = config.clock()
    parsed = AttestRequest.from_json(document, now)
    pending = request.app[PENDING_KEY]
    if pending.locked():
        raise RequestProblem("too many verifications in progress", status=503, slug="busy")
    async with pending:
        loop = asyncio.get_running_loop()
        claims: Claims = await loop.run_in_executor(
            request.app[EXECUTOR_KEY], run_verification, request.app[VERIFIER_KEY], parsed.verify
        )
    token = request.app[ISSUER_KEY].issue(
        claims,
        at=now,
        verified_at=parsed.verify.at,
        nonce=parsed.nonce,
        policy_digest=parsed.policy_digest,
    )
    logger.info(
        "accepted %s evidence (measurement %s, policy %s)",
        claims.platform,
        claims.measurement.hex()[:16],
        "yes" if parsed.policy_digest else "no",
    )
    return web.json_response({"claims": claims.to_json(), "token": token})


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(
        request.app[ISSUER_KEY].jwks(), headers={"Cache-Control": "public, max-age=300"}
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(config: ServerConfig) -> web.Application:
    """The verifier endpoint as an aiohttp application (no global state)."""
    issuer_name = config.issuer or DEFAULT_ISSUER
    if config.signing_key_pem is not None:
        issuer = TokenIssuer.from_pem(config.signing_key_pem, issuer_name, ttl=config.token_ttl)
    else:
        issuer = TokenIssuer.generate(issuer_name, ttl=config.token_ttl)
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[problem_middleware])
    app[CONFIG_KEY] = config
    app[VERIFIER_KEY] = Verifier(config.roots)
    app[ISSUER_KEY] = issuer

    async def verify_pool(app: web.Application) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(
            max_workers=config.verify_workers, thread_name_prefix="verify"
        )
        app[EXECUTOR_KEY] = executor
        app[PENDING_KEY] = asyncio.Semaphore(config.max_pending_verifications)
        yield
        executor.shutdown(wait=True, cancel_futures=True)

    app.cleanup_ctx.append(verify_pool)
    app.router.add_post("/v1/attest", attest)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/healthz", healthz)
    return app


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``; port 0 picks a free port."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise UsageError(f"--listen must be HOST:PORT, not {text!r}")
    port = int(port_text)
    if port > 65535:
        raise UsageError(f"port {port} is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(
    config: ServerConfig, host: str, port: int, announce: Callable[[str], None]
) -> None:
    runner = web.AppRunner(create_app(config), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, shutdown_timeout=5.0)
        await site.start()
        bound_port = port
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                bound_port = int(address[1])
                break
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        announce(f"ready {_url(host, bound_port)}")
        logger.info(
            "verifier listening on %s (roots: %s)", _url(host, bound_port), config.roots.label
        )
        await stop.wait()
        logger.info("stopping")
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    finally:
        await runner.cleanup()


def serve(config: ServerConfig, host: str, port: int, *, announce: Callable[[str], None]) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly. ``announce`` gets the ready line."""
    asyncio.run(_serve(config, host, port, announce))


__all__ = [
    "CONFIG_KEY",
    "ISSUER_KEY",
    "VERIFIER_KEY",
    "AttestRequest",
    "ServerConfig",
    "create_app",
    "parse_listen",
    "problem_response",
    "serve",
]
