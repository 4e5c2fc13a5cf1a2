"""The K/V server side: attest to the KMS, fetch private request keys over HTTP/2, decrypt.

``PakvKeyFetcher`` runs inside an attested K/V server. For each KMS endpoint it:

1. makes an ephemeral X25519 key pair (never leaves this process);
2. ``POST /v1alpha/attestation:challenge`` for a fresh challenge;
3. produces evidence with ``report_data = release_report_data(public key, challenge)`` and
   ``POST /v1alpha/attestation:session`` -> a short-lived bearer token;
4. ``GET /v1alpha/encryptionKeys:recent?maxAgeSeconds=N`` and unwraps each key's
   ``keyMaterial`` (HPKE to our ephemeral key; the ``keyEncryptionKeyUri`` names it).

All requests go over HTTP/2 (httpx with the h2 library): h2 over TLS (ALPN) for ``https://``
endpoints, h2c with prior knowledge for ``http://`` ones. Two-party keys
(``MULTI_PARTY_HYBRID_EVEN_KEYSPLIT``) are the XOR of the shares from both KMSs; every
private key is checked against its ``publicKeyMaterial`` before use.

``PakvKeyFetcher.unsafe_test_keys()`` serves only the publicly known K/V test key (id 64)
and warns on every use.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.attestation.evidence import EvidenceProvider
from enclave.kms.release import unwrap_released
from enclave.pakv.formats import (
    CHALLENGE_PATH,
    KEY_BY_ID_PREFIX,
    MULTI_PARTY,
    RECENT_KEYS_PATH,
    SERVER_KEY_WINDOW_SECONDS,
    SESSION_PATH,
    EncryptionKey,
    FormatError,
    kek_uri,
    parse_encryption_keys,
    public_key_signature_message,
)
from enclave.pakv.keyids import ohttp_key_id
from kms.pakv import testkeys
from kms.pakv.ohttp import ServerContext, decapsulate_request

WRAP_VERSION = 1
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class KeyFetchError(Exception):
    """A KMS refused or answered badly; ``status`` and ``problem`` say how."""

    def __init__(self, message: str, *, status: int | None = None, problem: str | None = None):
        super().__init__(message)
        self.status = status
        self.problem = problem


@dataclass(frozen=True)
class KmsEndpoint:
    base_url: str  # https://host:port (h2 over TLS) or http://host:port (h2c)
    kms_id: str
    identity_public_key: bytes | None = None  # pin: check publicKeySignature
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class FetchedKey:
    key_id: str
    ohttp_id: int
    public_key: bytes
    private_key: X25519PrivateKey = field(repr=False)
    expiration_ms: int


class PakvKeyFetcher:
    def __init__(
        self,
        endpoints: Sequence[KmsEndpoint],
        provider: EvidenceProvider | None,
        *,
        timeout: float = 10.0,
        _unsafe_test_keys: bool = False,
    ) -> None:
        if not _unsafe_test_keys and (not endpoints or provider is None):
            raise ValueError("give the KMS endpoints and this server's evidence provider")
        self._endpoints = tuple(endpoints)
        self._provider = provider
        self._timeout = timeout
        self._keys: dict[int, FetchedKey] = {}
        self._unsafe = _unsafe_test_keys
        self.last_transports: list[str] = []

    @classmethod
    def unsafe_test_keys(cls) -> PakvKeyFetcher:
        """UNSAFE_TEST_KEYS: only the publicly known K/V test key pair (id 64)."""
        fetcher = cls((), None, _unsafe_test_keys=True)
        private = testkeys.unsafe_test_private_key()
        fetcher._keys[testkeys.UNSAFE_TEST_OHTTP_KEY_ID] = FetchedKey(
            testkeys.UNSAFE_TEST_KEY_ID,
            testkeys.UNSAFE_TEST_OHTTP_KEY_ID,
            private.public_key().public_bytes_raw(),
            private,
            2**62,
        )
        return fetcher

    @property
    def keys(self) -> dict[int, FetchedKey]:
        return dict(self._keys)

    def private_key_for(self, ohttp_id: int) -> X25519PrivateKey | None:
        key = self._keys.get(ohttp_id)
        if key is None:
            return None
        if self._unsafe:
            testkeys.log.warning("UNSAFE_TEST_KEYS: decrypting with the PUBLIC test key")
        return key.private_key

    def decrypt_request(self, encapsulated: bytes) -> tuple[bytes, ServerContext]:
        """Decrypt a K/V OHTTP request; keep the context to encrypt the response."""
        return decapsulate_request(encapsulated, self.private_key_for)

    # -- fetch ------------------------------------------------------------------------
    async def refresh(self, max_age_seconds: int = SERVER_KEY_WINDOW_SECONDS) -> list[FetchedKey]:
        """Attest to every KMS, fetch recent keys, combine shares, and replace the cache."""
        if self._unsafe:
            return list(self._keys.values())
        ephemeral = X25519PrivateKey.generate()
        per_kms: list[dict[str, tuple[EncryptionKey, bytes]]] = []
        self.last_transports = []
        for endpoint in self._endpoints:
            async with self._client(endpoint) as client:
                token = await self._attest(client, endpoint, ephemeral)
                response = await client.get(
                    RECENT_KEYS_PATH,
                    params={"maxAgeSeconds": str(max_age_seconds)},
                    headers={"Authorization": f"Bearer {token}"},
                )
                self.last_transports.append(response.http_version)
                documents = _keys_from(response)
                per_kms.append(
                    {d.key_id: (d, self._unwrap(d, endpoint, ephemeral)) for d in documents}
                )
        fetched = self._combine(per_kms)
        self._keys = {k.ohttp_id: k for k in fetched}
        return fetched

    async def fetch_key(self, endpoint: KmsEndpoint, key_id: str) -> tuple[EncryptionKey, bytes]:
        """``GET /v1alpha/encryptionKeys/{id}`` from one KMS: the document and its material."""
        ephemeral = X25519PrivateKey.generate()
        async with self._client(endpoint) as client:
            token = await self._attest(client, endpoint, ephemeral)
            response = await client.get(
                KEY_BY_ID_PREFIX + key_id, headers={"Authorization": f"Bearer {token}"}
            )
            self.last_transports = [response.http_version]
            _raise_for(response)
            try:
                document = EncryptionKey.from_json(response.json())
            except (FormatError, ValueError) as exc:
                raise KeyFetchError(f"malformed EncryptionKey: {exc}") from None
        return document, self._unwrap(document, endpoint, ephemeral)

    def _client(self, endpoint: KmsEndpoint) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = endpoint.ssl_context or True
        return httpx.AsyncClient(
            base_url=endpoint.base_url,
            http1=False,
            http2=True,
            verify=verify,
            timeout=self._timeout,
        )

    async def _attest(
        self, client: httpx.AsyncClient, endpoint: KmsEndpoint, ephemeral: X25519PrivateKey
    ) -> str:
        from enclave.kms.release import release_report_data

        assert self._provider is not None
        response = await client.post(CHALLENGE_PATH)
        _raise_for(response)
        challenge = base64.b64decode(response.json()["challenge"])
        public = ephemeral.public_key().public_bytes_raw()
        evidence = self._provider.evidence(release_report_data(public, challenge))
        body = {
            "platform": evidence.platform,
            "evidence": base64.b64encode(evidence.evidence).decode(),
            "certs": [base64.b64encode(c).decode() for c in evidence.certs],
            "collateral": [base64.b64encode(c).decode() for c in evidence.collateral],
            "publicKey": base64.b64encode(public).decode(),
            "challenge": base64.b64encode(challenge).decode(),
        }
        response = await client.post(SESSION_PATH, json=body)
        _raise_for(response)
        token = response.json().get("sessionToken")
        if not isinstance(token, str):
            raise KeyFetchError("the session answer has no token")
        return token

    def _unwrap(
        self, document: EncryptionKey, endpoint: KmsEndpoint, ephemeral: X25519PrivateKey
    ) -> bytes:
        ours = kek_uri(endpoint.kms_id, ephemeral.public_key().public_bytes_raw())
        entries = [d for d in document.key_data if d.key_encryption_key_uri == ours]
        if len(entries) != 1 or not entries[0].key_material:
            raise KeyFetchError(f"key {document.key_id}: no key material wrapped to us")
        entry = entries[0]
        if endpoint.identity_public_key is not None:
            try:
                Ed25519PublicKey.from_public_bytes(endpoint.identity_public_key).verify(
                    base64.b64decode(entry.public_key_signature),
                    public_key_signature_message(document.key_id, document.public_key),
                )
            except Exception:
                raise KeyFetchError(f"key {document.key_id}: bad publicKeySignature") from None
        try:
            return unwrap_released(
                base64.b64decode(entry.key_material), ephemeral, document.key_id, WRAP_VERSION
            )
        except Exception:
            raise KeyFetchError(f"key {document.key_id}: key material does not unwrap") from None

    def _combine(self, per_kms: list[dict[str, tuple[EncryptionKey, bytes]]]) -> list[FetchedKey]:
        out = []
        key_ids = set().union(*(set(m) for m in per_kms)) if per_kms else set()
        for key_id in sorted(key_ids):
            found = [m[key_id] for m in per_kms if key_id in m]
            document = found[0][0]
            if document.key_type == MULTI_PARTY:
                if len(found) != 2:
                    continue  # only one share so far: unusable until both KMSs serve it
                material = bytes(a ^ b for a, b in zip(found[0][1], found[1][1], strict=True))
            else:
                material = found[0][1]
            private = X25519PrivateKey.from_private_bytes(material)
            if private.public_key().public_bytes_raw() != document.public_key:
                raise KeyFetchError(f"key {key_id}: private key does not match its public key")
            out.append(
                FetchedKey(
                    key_id,
                    ohttp_key_id(key_id),
                    document.public_key,
                    private,
                    document.expiration_ms,
                )
            )
        return out


def pinned_tls_context(certificate_der: bytes, *, alpn: Sequence[str] = ("h2",)) -> ssl.SSLContext:
    """A client context that trusts exactly one certificate: the KMS's attested TLS
    certificate, as ``kms attest`` (``kms.client``) proved it on the main listener. The
    h2 listener serves the same in-enclave identity, so pinning it there is the hand-off
    from attestation to HTTP/2 (the certificate names no host: hostname checks are off,
    the pin replaces them)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = x509.load_der_x509_certificate(certificate_der).public_bytes(serialization.Encoding.PEM)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    # The pinned certificate is a self-signed leaf: trust it as an anchor on its own.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.load_verify_locations(cadata=pem.decode("ascii"))
    context.set_alpn_protocols(list(alpn))
    return context


def _raise_for(response: httpx.Response) -> None:
    if response.status_code == 200:
        return
    problem = None
    try:
        problem = response.json().get("type")
    except Exception:
        problem = None
    raise KeyFetchError(
        f"KMS answered {response.status_code} ({problem})",
        status=response.status_code,
        problem=problem,
    )


def _keys_from(response: httpx.Response) -> tuple[EncryptionKey, ...]:
    _raise_for(response)
    if len(response.content) > MAX_ANSWER_BYTES:
        raise KeyFetchError("the key list is too large")
    try:
        return parse_encryption_keys(response.content, MAX_ANSWER_BYTES)
    except FormatError as exc:
        raise KeyFetchError(f"malformed key list: {exc}") from None
