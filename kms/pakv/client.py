"""Fetch the K/V request public keys, check them, and encrypt K/V requests to them.

``check_public_keys_answer`` is the pure check (status, ``Date``, ``Cache-Control:
max-age``, body shape and size), as the servers' key client does it: an answer without both
headers is refused. ``verify_signed_public_keys`` checks our signed document against a
pinned KMS identity key, so a host that swapped the keys is caught. ``fetch_public_keys``
does both over HTTPS with aiohttp.
"""

from __future__ import annotations

import re
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave.pakv.formats import (
    MAX_PUBLIC_KEYS_BODY,
    PUBLIC_KEYS_PATH,
    SIGNED_PUBLIC_KEYS_PATH,
    FormatError,
    PublicKeyEntry,
    PublicKeySet,
    SignedPublicKeys,
    signed_document_message,
)
from enclave.pakv.keyids import ohttp_key_id
from kms.pakv.ohttp import ClientContext, encapsulate_request

MAX_AGE_RE = re.compile(r"(?:^|[,\s])max-age=(\d{1,10})(?:$|[,\s])")
DEFAULT_MAX_SIGNATURE_AGE = timedelta(minutes=10)


class PublicKeyFetchError(Exception):
    """The answer is not a valid public-key list (the remote side is at fault)."""


class SignatureError(PublicKeyFetchError):
    """The signed key list does not verify against the pinned KMS identity key."""


@dataclass(frozen=True)
class PublicKeysAnswer:
    keys: PublicKeySet
    body: bytes
    date: datetime
    max_age: int

    def expires(self) -> datetime:
        return self.date + timedelta(seconds=self.max_age)


def check_public_keys_answer(
    status: int, headers: Mapping[str, str], body: bytes
) -> PublicKeysAnswer:
    lowered = {k.lower(): v for k, v in headers.items()}
    if status != 200:
        raise PublicKeyFetchError(f"status {status}")
    if len(body) > MAX_PUBLIC_KEYS_BODY:
        raise PublicKeyFetchError("the key list is larger than 2 KB")
    date_text, cache = lowered.get("date"), lowered.get("cache-control")
    if not date_text or not cache:
        raise PublicKeyFetchError("the answer lacks Date or Cache-Control")
    match = MAX_AGE_RE.search(cache)
    if match is None:
        raise PublicKeyFetchError("Cache-Control has no max-age")
    try:
        date = parsedate_to_datetime(date_text)
    except (TypeError, ValueError):
        raise PublicKeyFetchError("Date is not an HTTP date") from None
    try:
        keys = PublicKeySet.from_body(body)
    except FormatError as exc:
        raise PublicKeyFetchError(str(exc)) from None
    if not keys.keys:
        raise PublicKeyFetchError("the key list is empty")
    return PublicKeysAnswer(keys, body, date.astimezone(UTC), int(match.group(1)))


def verify_signed_public_keys(
    document: bytes,
    identity_public_key: bytes,
    *,
    now: datetime,
    body: bytes | None = None,
    max_age: timedelta = DEFAULT_MAX_SIGNATURE_AGE,
) -> SignedPublicKeys:
    """Check the signed key list; with ``body``, also that it signs exactly those bytes."""
    try:
        signed = SignedPublicKeys.from_body(document)
    except FormatError as exc:
        raise SignatureError(f"malformed signed key list: {exc}") from None
    if signed.signing_key != identity_public_key:
        raise SignatureError("signed by another key than the pinned KMS identity")
    try:
        Ed25519PublicKey.from_public_bytes(identity_public_key).verify(
            signed.signature, signed_document_message(signed.timestamp_ms, signed.body)
        )
    except (InvalidSignature, ValueError):
        raise SignatureError("the signature does not verify") from None
    signed_at = datetime.fromtimestamp(signed.timestamp_ms / 1000, UTC)
    if signed_at > now + timedelta(minutes=5) or now - signed_at > max_age:
        raise SignatureError("the signed key list is stale or from the future")
    if body is not None and signed.body != body:
        raise SignatureError("the key list answered is not the one the KMS signed")
    return signed


async def fetch_public_keys(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    identity_public_key: bytes | None = None,
    ssl_context: ssl.SSLContext | None = None,
    now: datetime | None = None,
) -> PublicKeysAnswer:
    """GET the key list (and, with a pinned identity key, its signature) and check both."""
    async with session.get(base_url + PUBLIC_KEYS_PATH, ssl=ssl_context or True) as response:
        body = await response.content.read(MAX_PUBLIC_KEYS_BODY + 1)
        answer = check_public_keys_answer(response.status, dict(response.headers), body)
    if identity_public_key is not None:
        url = base_url + SIGNED_PUBLIC_KEYS_PATH
        async with session.get(url, ssl=ssl_context or True) as response:
            if response.status != 200:
                raise SignatureError(f"signed key list: status {response.status}")
            document = await response.content.read(64 * 1024)
        signed = verify_signed_public_keys(
            document, identity_public_key, now=now or datetime.now(UTC)
        )
        # The list may have changed between the two GETs only if both are signed-consistent.
        if signed.keys != answer.keys:
            raise SignatureError("the key list answered is not the one the KMS signed")
    return answer


def choose_key(keys: PublicKeySet) -> PublicKeyEntry:
    """A key at random among the active ones, as the K/V clients do."""
    if not keys.keys:
        raise PublicKeyFetchError("no key to encrypt to")
    return keys.keys[secrets.randbelow(len(keys.keys))]


def encrypt_request(key: PublicKeyEntry, request: bytes) -> tuple[bytes, ClientContext]:
    """OHTTP-encapsulate a K/V request to ``key`` (its OHTTP id is the id's first byte)."""
    return encapsulate_request(key.key, ohttp_key_id(key.id), request)
