"""The KMS client: attested connections, pinning, retries and failover, async and sync.

Opening an endpoint (``_attest``): a TLS handshake through the untrusted host with
certificate verification off, then, as the first and only request on that connection,
``GET /v1/attestation?nonce=<fresh 32 bytes>``; the peer certificate of that very
connection and the answer go to ``kms.attest.Attestor``. Only when every check passes is
the certificate's SHA-256 pinned; every later connection to the endpoint is made with
``aiohttp.Fingerprint`` (checked at connect time, before a byte of request is written), and
a pin mismatch (the enclave restarted with a new key, or someone else answers) triggers a
fresh attestation before anything is sent.

Retries (``kms.retry``): idempotent requests are retried on connection loss, 429 and 503
with exponential backoff and full jitter, honouring ``Retry-After``. A request that could
not be delivered at all (connection refused, pin mismatch) is retried whatever its method.
On connection failure the client fails over to the next endpoint of the profile (another
region), which is attested first like any other. An endpoint that fails attestation is
never retried in the same call; when every endpoint fails, the first refusal is raised.

``KmsClient`` is the synchronous facade for the CLI and scripts (not for use inside a
running event loop; use ``AsyncKmsClient`` there).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import aiohttp
from multidict import CIMultiDict

from kms.attest import AttestationAnswer, AttestationResult, Attestor, new_nonce
from kms.errors import (
    MALFORMED_ANSWER,
    AllEndpointsFailed,
    AttestationRefused,
    KmsError,
    ServerError,
    TransportError,
)
from kms.profile import Profile
from kms.retry import is_idempotent, is_retryable_status, parse_retry_after

log = logging.getLogger("kms.client")
T = TypeVar("T")
ATTESTATION_PATH = "/v1/attestation"
PROBLEM_CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True)
class KmsResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    endpoint: str

    def json(self) -> Any:
        return json.loads(self.body)


class _Undelivered(TransportError):
    """The request was certainly not delivered (safe to retry whatever the method)."""


class _PinChanged(_Undelivered):
    """The endpoint no longer presents the attested certificate: attest it again."""


class _Retryable(KmsError):
    """The endpoint asked us to come back later (429/503)."""

    def __init__(self, error: ServerError, *, delivered: bool) -> None:
        super().__init__(str(error), endpoint=error.endpoint)
        self.error = error
        self.delivered = delivered


@dataclass
class _Endpoint:
    url: str
    attested: AttestationResult | None = None
    session: aiohttp.ClientSession | None = field(default=None, repr=False)

    async def forget(self) -> None:
        self.attested = None
        if self.session is not None:
            await self.session.close()
            self.session = None


def _unverified_tls_context() -> ssl.SSLContext:
    # Verification is off on purpose: the certificate is self-signed by the enclave and is
    # accepted only after its key is proven by evidence on this very connection. (No CA
    # store is loaded: it would cost a file parse per connection and be unused.)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


MAX_HEADER_LINES = 100


@dataclass(frozen=True)
class _RawAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    certificate_der: bytes


async def _attestation_exchange(
    url: str,
    query: str,
    *,
    connect_timeout: float,
    total_timeout: float,
    limit: int,
    context: ssl.SSLContext | None = None,
) -> _RawAnswer:
    """One TLS connection, one ``GET``: the answer and the peer certificate of *this*
    connection. Plain asyncio streams, so nothing but this request is ever written on it.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 443
    base = parts.path.rstrip("/")
    async with asyncio.timeout(total_timeout):
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context or _unverified_tls_context()),
                connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise _Undelivered(f"cannot connect: {_describe(exc)}", endpoint=url) from None
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if not der:
                raise AttestationRefused(
                    MALFORMED_ANSWER, "the TLS peer presented no certificate", endpoint=url
                )
            host_header = parts.netloc.rpartition("@")[2]
            writer.write(
                f"GET {base}{ATTESTATION_PATH}?{query} HTTP/1.1\r\nHost: {host_header}\r\n"
                "Accept: application/json\r\nConnection: close\r\n"
                "User-Agent: enclave-kms-client\r\n\r\n".encode("ascii")
            )
            await writer.drain()
            status, headers = await _read_head(reader)
            body = await _read_body(reader, headers, limit)
            return _RawAnswer(status, headers, body, bytes(der))
        except (OSError, asyncio.IncompleteReadError, ValueError, ssl.SSLError) as exc:
            raise TransportError(
                f"attestation failed in transit: {type(exc).__name__}: {exc}", endpoint=url
            ) from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = (await reader.readline()).decode("latin-1")
    version, _, rest = line.partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError("not an HTTP/1.x answer")
    status = int(rest.split(" ", 1)[0])
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        raw = (await reader.readline()).decode("latin-1")
        if raw in ("\r\n", "\n", ""):
            return status, headers
        name, sep, value = raw.partition(":")
        if not sep:
            raise ValueError("malformed header line")
        headers[name.strip().title()] = value.strip()  # Title-Case: one spelling
    raise ValueError("too many header lines")


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str], limit: int) -> bytes:
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        size = 0
        while True:
            length = int((await reader.readline()).split(b";")[0].strip(), 16)
            if length == 0:
                return b"".join(chunks)
            size += length
            if size > limit:
                raise ValueError(f"the answer is larger than {limit} bytes")
            chunks.append(await reader.readexactly(length))
            await reader.readexactly(2)
    if "Content-Length" in headers:
        length = int(headers["Content-Length"])
        if not 0 <= length <= limit:
            raise ValueError(f"the answer is larger than {limit} bytes")
        return await reader.readexactly(length)
    body = await reader.read(limit + 1)
    if len(body) > limit:
        raise ValueError(f"the answer is larger than {limit} bytes")
    return body


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole answer, read to its end, refusing one larger than ``limit`` bytes.

    (``StreamReader.read(n)`` returns what is buffered, not n bytes: loop until EOF.)"""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await response.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise TransportError(
                f"the answer is larger than {limit} bytes", endpoint=str(response.url)
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _server_error(
    status: int, headers: Mapping[str, str], body: bytes, endpoint: str
) -> ServerError:
    problem: dict[str, Any] | None = None
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            problem = parsed
    except (ValueError, UnicodeDecodeError):
        problem = None
    return ServerError(
        status,
        problem,
        endpoint=endpoint,
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


class AsyncKmsClient:
    """An attested client for the endpoints of one profile."""

    def __init__(
        self,
        profile: Profile,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.profile = profile
        self.attestor = Attestor(profile)
        self._endpoints = [_Endpoint(url) for url in profile.endpoints]
        self._current = 0
        self._rng = rng or random.Random()
        self._tls_context = _unverified_tls_context()
        self._sleep = sleep
        self._jwks: Mapping[str, Any] | None = profile.verifier.jwks if profile.verifier else None
        settings = profile.client
        self._timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout, sock_connect=settings.connect_timeout
        )

    async def __aenter__(self) -> AsyncKmsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.forget()

    @property
    def endpoint(self) -> str:
        """The endpoint requests currently go to."""
        return self._endpoints[self._current].url

    def attested(self, endpoint: str | None = None) -> AttestationResult | None:
        url = endpoint or self.endpoint
        return next((e.attested for e in self._endpoints if e.url == url), None)

    # -- public operations ----------------------------------------------------------------

    async def attest(self) -> AttestationResult:
        """Attest the current endpoint afresh (failing over if it is unreachable); pin it."""

        async def operation(endpoint: _Endpoint) -> AttestationResult:
            await self._open(endpoint)
            assert endpoint.attested is not None
            return endpoint.attested

        return await self._run(operation, idempotent=True)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> KmsResponse:
        """Send one request to an attested endpoint; raise ``ServerError`` on 4xx/5xx."""
        if not path.startswith("/"):
            raise ValueError("path must start with /")
        data = None if json_body is None else json.dumps(json_body).encode()
        send_headers = dict(headers or {})
        if data is not None:
            send_headers.setdefault("Content-Type", "application/json")

        async def operation(endpoint: _Endpoint) -> KmsResponse:
            session = await self._session(endpoint)
            return await self._send(
                endpoint, session, method.upper(), path, data=data, headers=send_headers
            )

        retry_safe = is_idempotent(method) if idempotent is None else idempotent
        return await self._run(operation, idempotent=retry_safe)

    async def get(self, path: str) -> Any:
        return (await self.request("GET", path)).json()

    async def post(self, path: str, body: Any, *, idempotent: bool = False) -> Any:
        return (await self.request("POST", path, json_body=body, idempotent=idempotent)).json()

    # -- attestation --------------------------------------------------------------------

    async def _attest(self, endpoint: _Endpoint) -> AttestationResult:
        nonce = new_nonce()
        settings = self.profile.client
        raw = await _attestation_exchange(
            endpoint.url,
            urlencode({"nonce": nonce.hex()}),
            connect_timeout=settings.connect_timeout,
            total_timeout=settings.request_timeout,
            limit=settings.max_answer_bytes,
            context=self._tls_context,
        )
        status, headers, body, certificate = raw.status, raw.headers, raw.body, raw.certificate_der
        if status != 200:
            error = _server_error(status, headers, body, endpoint.url)
            if is_retryable_status(status):
                raise _Retryable(error, delivered=False)
            raise AttestationRefused(
                MALFORMED_ANSWER, f"the attestation request failed: {error}", endpoint=endpoint.url
            )
        try:
            answer = AttestationAnswer.from_json(json.loads(body))
        except (ValueError, UnicodeDecodeError):
            raise AttestationRefused(
                MALFORMED_ANSWER, "the attestation answer is not JSON", endpoint=endpoint.url
            ) from None
        if self.profile.verifier is None:
            result = await asyncio.to_thread(
                self.attestor.check_local, answer, certificate, nonce, endpoint.url
            )
        else:
            result = await self._check_remote(answer, certificate, nonce, endpoint.url)
        endpoint.attested = result
        log.info(
            "attested %s: measurement %s, pinned certificate %s",
            endpoint.url, result.measurement, result.certificate_sha256.hex(),
        )  # fmt: skip
        return result

    async def _check_remote(
        self, answer: AttestationAnswer, certificate: bytes, nonce: bytes, endpoint: str
    ) -> AttestationResult:
        import base64

        verifier = self.profile.verifier
        assert verifier is not None
        # Precheck before spending a verifier call (and so a replay is named as such).
        self.attestor.precheck(answer, certificate, nonce, endpoint)
        request = {
            "platform": answer.platform,
            "evidence": base64.b64encode(answer.evidence).decode(),
            "certs": [base64.b64encode(c).decode() for c in answer.certs],
            "collateral": [base64.b64encode(c).decode() for c in answer.collateral],
            "policy": self.profile.policy_for_verifier,
            "nonce": nonce.hex(),
        }
        limit = self.profile.client.max_answer_bytes
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as session:
                if self._jwks is None:
                    log.warning(
                        "no pinned JWKS for %s: fetching it (trust on first use)", verifier.url
                    )
                    async with session.get(verifier.url + "/.well-known/jwks.json") as response:
                        self._jwks = json.loads(await _read_limited(response, limit))
                async with session.post(verifier.url + "/v1/attest", json=request) as response:
                    body = await _read_limited(response, limit)
                    status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TransportError(
                f"the verifier {verifier.url} failed: {exc}", endpoint=endpoint
            ) from None
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            document = None
        if status != 200 or not isinstance(document, dict):
            problem = document if isinstance(document, dict) else {}
            slug = str(problem.get("type") or "verifier-error").rsplit("/", 1)[-1]
            if status >= 500 or status == 429:
                raise TransportError(f"the verifier answered {status}", endpoint=endpoint)
            raise AttestationRefused(
                slug,
                str(problem.get("detail") or f"the verifier refused the evidence ({status})"),
                endpoint=endpoint,
                mismatches=[m for m in problem.get("mismatches", []) if isinstance(m, dict)],
            )
        assert self._jwks is not None
        return await asyncio.to_thread(
            functools.partial(
                self.attestor.check_remote_result,
                answer, certificate, nonce, endpoint, result=document, jwks=self._jwks,
            )
        )  # fmt: skip

    async def _open(self, endpoint: _Endpoint) -> aiohttp.ClientSession:
        """Attest ``endpoint`` afresh and open a session pinned to its certificate."""
        await endpoint.forget()
        result = await self._attest(endpoint)
        connector = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(result.certificate_sha256))
        endpoint.session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return endpoint.session

    async def _session(self, endpoint: _Endpoint) -> aiohttp.ClientSession:
        if endpoint.attested is None or endpoint.session is None:
            return await self._open(endpoint)
        return endpoint.session

    async def _send(
        self,
        endpoint: _Endpoint,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        *,
        data: bytes | None,
        headers: Mapping[str, str],
    ) -> KmsResponse:
        try:
            async with session.request(
                method, endpoint.url + path, data=data, headers=headers, allow_redirects=False
            ) as response:
                body = await _read_limited(response, self.profile.client.max_answer_bytes)
                status, response_headers = response.status, CIMultiDict(response.headers)
        except aiohttp.ServerFingerprintMismatch:
            # The endpoint no longer holds the attested key: attest it again before sending.
            await endpoint.forget()
            raise _PinChanged(
                "the endpoint's certificate changed; re-attesting", endpoint=endpoint.url
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise _Undelivered(f"cannot connect: {_describe(exc)}", endpoint=endpoint.url) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(
                f"connection lost: {type(exc).__name__}: {exc}", endpoint=endpoint.url
            ) from None
        if status >= 400:
            error = _server_error(status, response_headers, body, endpoint.url)
            if is_retryable_status(status):
                raise _Retryable(error, delivered=True)
            raise error
        return KmsResponse(status, response_headers, body, endpoint.url)

    # -- retries and failover -----------------------------------------------------------

    async def _run(self, operation: Callable[[_Endpoint], Awaitable[T]], *, idempotent: bool) -> T:
        policy = self.profile.client.retry
        errors: list[KmsError] = []
        refused: dict[str, AttestationRefused] = {}
        retries = 0
        failovers_in_round = 0
        for _attempt in range(policy.max_attempts):
            endpoint = self._endpoints[self._current]
            try:
                return await operation(endpoint)
            except AttestationRefused as exc:
                log.warning("%s refused: %s", endpoint.url, exc)
                await endpoint.forget()
                refused.setdefault(endpoint.url, exc)
                errors.append(exc)
                if len(refused) == len(self._endpoints):
                    raise next(iter(refused.values())) from None
                self._advance(skip=refused)
                continue
            except _Retryable as exc:
                errors.append(exc.error)
                if not idempotent and exc.delivered:
                    raise exc.error from None
                retries += 1
                wait = policy.delay(retries, exc.error.retry_after, self._rng)
                log.info("%s answered %d; retrying in %.2fs", endpoint.url, exc.error.status, wait)
                await self._sleep(wait)
                continue
            except TransportError as exc:
                errors.append(exc)
                await endpoint.forget()
                if not idempotent and not isinstance(exc, _Undelivered):
                    raise TransportError(exc.detail, endpoint=exc.endpoint) from None
                if isinstance(exc, _PinChanged):
                    continue  # same endpoint, fresh attestation, no wait
                log.info("%s unreachable (%s); failing over", endpoint.url, exc.detail)
                failovers_in_round += 1
                self._advance(skip=refused)
                if failovers_in_round >= len(self._endpoints) - len(refused):
                    failovers_in_round = 0
                    retries += 1
                    await self._sleep(policy.delay(retries, None, self._rng))
                continue
        if refused:
            raise next(iter(refused.values()))
        last = errors[-1] if errors else None
        if isinstance(last, ServerError):
            raise last
        if len(self._endpoints) == 1 and isinstance(last, TransportError):
            raise TransportError(last.detail, endpoint=last.endpoint)
        raise AllEndpointsFailed(errors)

    def _advance(self, *, skip: Mapping[str, object]) -> None:
        for _ in range(len(self._endpoints)):
            self._current = (self._current + 1) % len(self._endpoints)
            if self._endpoints[self._current].url not in skip:
                return


class KmsClient:
    """Synchronous facade over ``AsyncKmsClient`` (runs its own event loop)."""

    def __init__(self, profile: Profile, **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = AsyncKmsClient(profile, **kwargs)

    @classmethod
    def from_profile(cls, path: str, **kwargs: Any) -> KmsClient:
        return cls(Profile.load(path), **kwargs)

    @property
    def profile(self) -> Profile:
        return self._client.profile

    def __enter__(self) -> KmsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.close()

    def attest(self) -> AttestationResult:
        return self._runner.run(self._client.attest())

    def request(self, method: str, path: str, **kwargs: Any) -> KmsResponse:
        return self._runner.run(self._client.request(method, path, **kwargs))

    def get(self, path: str) -> Any:
        return self._runner.run(self._client.get(path))

    def post(self, path: str, body: Any, *, idempotent: bool = False) -> Any:
        return self._runner.run(self._client.post(path, body, idempotent=idempotent))


def _describe(exc: BaseException) -> str:
    """An exception as a one-line reason, never empty (a connection closed during the TLS
    handshake raises with no message at all)."""
    if str(exc):
        return str(exc)
    if isinstance(exc, (ConnectionError, ssl.SSLEOFError, EOFError)):
        return "the endpoint closed the connection during the TLS handshake"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return type(exc).__name__
