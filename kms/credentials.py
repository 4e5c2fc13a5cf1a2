"""Client credentials: the profile's ``[credentials]`` and the request tokens minted from them.

A profile carries::

    [credentials]
    principal = "prn_..."              # the principal id the KMS gave at registration
    private_key_file = "admin.key"     # Ed25519 private key, PKCS#8 PEM, mode 0600,
                                       # relative to the profile's directory

``Credentials.token`` signs a short-lived EdDSA request token (``enclave.auth.tokens``
format) for one KMS (audience = its ``kms_id``) and one attested TLS key (``cnf`` = SHA-256
of the SubjectPublicKeyInfo of the certificate the client attested and pinned), so a token
is useless anywhere else. ``AuthorizedClient`` wraps ``AsyncKmsClient``: it attests first,
reads the audience over the attested connection (``GET /v1/auth/info``), and sends each
request with a token bound to the connection's attested key, minted per attested
certificate and renewed well before it expires; when the endpoint changed under it
(failover, re-attestation) and the KMS refuses the token's binding, it mints a new one for
the newly attested key and retries once.

Must never: write a private key readable by others, log or print a token or a key, or bind
a token to a key that was not attested on this client.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.auth.tokens import issue_token
from enclave.tls import spki_der_of_certificate
from kms.client import AsyncKmsClient, KmsResponse
from kms.errors import KmsError, ProfileError, ServerError
from kms.profile import Profile

TOKEN_LIFETIME = 120  # seconds; the KMS accepts at most 300
RENEW_BEFORE = 30
AUTH_INFO_PATH = "/v1/auth/info"
# The KMS's answers that a fresh token for the current attested key can fix.
REMINT_TYPES = frozenset({"wrong-tls-key", "expired-token", "wrong-audience"})
MAX_KEY_FILE_BYTES = 16 * 1024


class CredentialsError(ProfileError):
    type = "invalid-credentials"
    title = "The profile's credentials are unusable"


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def write_private_key(path: Path, key: Ed25519PrivateKey, *, overwrite: bool = False) -> None:
    """PKCS#8 PEM, created with mode 0600 (never briefly readable by others)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise CredentialsError(f"{path} exists already; not overwriting a key") from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(pem)


def write_public_key(path: Path, key: Ed25519PrivateKey) -> None:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.write_bytes(pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        info = path.stat()
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise CredentialsError(f"{path} is too large for a key file")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise CredentialsError(
                f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise CredentialsError(f"cannot read the private key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CredentialsError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CredentialsError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> bytes:
    """A raw 32-byte Ed25519 public key from a PEM (public or private) or raw/hex file."""
    try:
        data = path.read_bytes()[:MAX_KEY_FILE_BYTES]
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if b"PRIVATE KEY" in data:
        return public_key_bytes(load_private_key(path))
    if b"PUBLIC KEY" in data:
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError:
            raise CredentialsError(f"{path} is not a PEM public key") from None
        if not isinstance(public, Ed25519PublicKey):
            raise CredentialsError(f"{path} is not an Ed25519 public key")
        return public.public_bytes_raw()
    text = data.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode())
        except (ValueError, UnicodeDecodeError):
            pass
    if len(data) == 32:
        return data
    raise CredentialsError(f"{path} holds no Ed25519 public key (PEM, hex or 32 raw bytes)")


@dataclass(frozen=True)
class Credentials:
    principal_id: str
    private_key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_profile(cls, profile: Profile) -> Credentials:
        table: Mapping[str, Any] = profile.credentials
        if not table:
            raise CredentialsError("the profile has no [credentials] (principal, private_key_file)")
        unknown = set(table) - {"principal", "private_key_file"}
        if unknown:
            raise CredentialsError(f"unknown [credentials] keys: {', '.join(sorted(unknown))}")
        principal = table.get("principal")
        key_file = table.get("private_key_file")
        if not isinstance(principal, str) or not principal.startswith("prn_"):
            raise CredentialsError("[credentials] principal must be a principal id (prn_...)")
        if not isinstance(key_file, str) or not key_file:
            raise CredentialsError("[credentials] private_key_file must be a path")
        return cls(principal, load_private_key(profile.resolve(key_file)))

    def token(
        self,
        *,
        audience: str,
        tls_spki_der: bytes,
        lifetime: int = TOKEN_LIFETIME,
        now: float | None = None,
    ) -> str:
        return issue_token(
            self.private_key, principal_id=self.principal_id, audience=audience,
            tls_spki_der=tls_spki_der, lifetime=lifetime, now=now,
        )  # fmt: skip


def with_credentials(profile: Profile, principal_id: str, key_file: str) -> Profile:
    """``profile`` with its ``[credentials]`` set (key file relative to its directory)."""
    from dataclasses import replace

    return replace(profile, credentials={"principal": principal_id, "private_key_file": key_file})


@dataclass
class _Minted:
    certificate_sha256: bytes
    audience: str
    token: str
    expires: float


class AuthorizedClient:
    """``AsyncKmsClient`` requests with a request token bound to the attested TLS key."""

    def __init__(self, client: AsyncKmsClient, credentials: Credentials) -> None:
        self.client = client
        self.credentials = credentials
        self._minted: _Minted | None = None
        self._audiences: dict[bytes, str] = {}

    async def _current_token(self) -> str:
        attested = self.client.attested()
        if attested is None:
            attested = await self.client.attest()
        fingerprint = attested.certificate_sha256
        minted = self._minted
        if (
            minted is not None
            and minted.certificate_sha256 == fingerprint
            and minted.expires - RENEW_BEFORE > time.time()
        ):
            return minted.token
        audience = self._audiences.get(fingerprint)
        if audience is None:
            info = (await self.client.request("GET", AUTH_INFO_PATH)).json()
            if not isinstance(info, dict) or not isinstance(info.get("audience"), str):
                raise KmsError("the KMS did not say its token audience", endpoint=attested.endpoint)
            audience = str(info["audience"])
            attested_now = self.client.attested()
            if attested_now is None or attested_now.certificate_sha256 != fingerprint:
                return await self._current_token()  # the endpoint changed meanwhile
            self._audiences[fingerprint] = audience
        issued = time.time()
        token = self.credentials.token(
            audience=audience,
            tls_spki_der=spki_der_of_certificate(attested.certificate_der),
            now=issued,
        )
        self._minted = _Minted(fingerprint, audience, token, issued + TOKEN_LIFETIME)
        return token

    async def request(
        self, method: str, path: str, *, json_body: Any = None, idempotent: bool | None = None
    ) -> KmsResponse:
        for attempt in range(2):
            token = await self._current_token()
            try:
                return await self.client.request(
                    method, path, json_body=json_body, idempotent=idempotent,
                    headers={"Authorization": f"Bearer {token}"},
                )  # fmt: skip
            except ServerError as exc:
                if attempt == 0 and exc.status == 401 and exc.type in REMINT_TYPES:
                    self._minted = None
                    continue
                raise
        raise AssertionError("unreachable")

    async def get(self, path: str) -> Any:
        return (await self.request("GET", path)).json()

    async def post(self, path: str, body: Any = None, *, idempotent: bool = False) -> Any:
        return (
            await self.request("POST", path, json_body={} if body is None else body,
                               idempotent=idempotent)
        ).json()  # fmt: skip


class SyncAuthorizedClient:
    """The synchronous facade (for the CLI and scripts; runs its own event loop)."""

    def __init__(self, profile: Profile, credentials: Credentials | None = None) -> None:
        resolved = credentials or Credentials.from_profile(profile)
        self._runner = asyncio.Runner()
        self._client = AuthorizedClient(AsyncKmsClient(profile), resolved)

    def __enter__(self) -> SyncAuthorizedClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._runner.run(self._client.client.close())
        finally:
            self._runner.close()

    def request(self, method: str, path: str, **kwargs: Any) -> KmsResponse:
        return self._runner.run(self._client.request(method, path, **kwargs))

    def get(self, path: str) -> Any:
        return self.request("GET", path).json()

    def post(self, path: str, body: Any = None, *, idempotent: bool = False) -> Any:
        return self.request(
            "POST", path, json_body={} if body is None else body, idempotent=idempotent
        ).json()

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json_body=body).json()

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path).json()


# -- helpers for the command modules ----------------------------------------------------------
def open_client(ctx: Any) -> SyncAuthorizedClient:
    """An authorized client for a command's profile (``kms.commands.CommandContext``)."""
    return SyncAuthorizedClient(ctx.profile())


def parse_context(pairs: list[str] | None) -> dict[str, str]:
    """``--context K=V`` options into an encryption context."""
    from kms.errors import UsageError

    context: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--context takes KEY=VALUE, not {pair!r}")
        if name in context:
            raise UsageError(f"--context {name} given twice")
        context[name] = value
    return context


def print_json(ctx: Any, document: Any) -> None:
    import json

    try:
        print(json.dumps(document, indent=2, sort_keys=False), file=ctx.stdout)
        ctx.stdout.flush()
    except BrokenPipeError:
        discard_stdout()


def discard_stdout() -> None:
    """``kms ... | head``: the reader closed the pipe. Not an error of ours, and no
    traceback: the interpreter's final flush goes to /dev/null instead of the closed pipe."""
    import contextlib
    import os
    import sys

    with contextlib.suppress(OSError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - interpreter exit flushes it


def read_stdin(ctx: Any, limit: int) -> bytes:
    from kms.errors import UsageError

    data = ctx.stdin.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"the input is larger than {limit} bytes")
    return bytes(data)


def write_binary(ctx: Any, data: bytes) -> None:
    buffer = getattr(ctx.stdout, "buffer", None)
    if buffer is not None:
        ctx.stdout.flush()
        buffer.write(data)
        buffer.flush()
    else:
        ctx.stdout.write(data.decode("utf-8", errors="surrogateescape"))
