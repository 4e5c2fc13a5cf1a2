"""The request bodies of the KMS HTTP API (strict models, see ``enclave.api.models``).

Byte fields are standard base64 on the wire; their limits are the service's own
(``enclave.kms.operations``), so an oversized value is refused (413) before it is decoded
into more memory than the service would accept.
"""

from __future__ import annotations

from typing import Any, ClassVar

from enclave.api.models import Model, model
from enclave.keys.material import MAX_CIPHERTEXT_BYTES
from enclave.kms.distribution import MAX_CERTS, MAX_EVIDENCE_BYTES
from enclave.kms.operations import MAX_MESSAGE_BYTES, MAX_PLAINTEXT_BYTES

_EVIDENCE_LIMITS = {"evidence": MAX_EVIDENCE_BYTES, "certs[]": MAX_CERTS,
                    "collateral[]": MAX_CERTS, "challenge": 64}  # fmt: skip


# -- principals and grants -------------------------------------------------------------------
@model
class RegisterPrincipal(Model):
    LIMITS: ClassVar = {"public_key": 64, "challenge": 64, "proof": 128, "name": 256}
    name: str
    kind: str
    public_key: bytes
    challenge: bytes
    proof: bytes
    system_level: int | None = None


@model
class KeySpec(Model):
    LIMITS: ClassVar = {"description": 1024}
    purpose: str
    algorithm: str | None = None
    description: str = ""


@model
class OnboardPrincipal(Model):
    LIMITS: ClassVar = {"public_key": 64, "challenge": 64, "proof": 128, "name": 256, "keys[]": 16}
    name: str
    kind: str
    public_key: bytes
    challenge: bytes
    proof: bytes
    system_level: int | None = None
    keys: list[dict[str, Any]] | None = None


@model
class RegisterWorkload(Model):
    LIMITS: ClassVar = {"name": 256, "measurements[]": 32}
    name: str
    measurements: list[str]
    system_level: int | None = None


@model
class AuthenticateWorkload(Model):
    LIMITS: ClassVar = {**_EVIDENCE_LIMITS, "principal_id": 128, "platform": 16}
    principal_id: str
    platform: str
    evidence: bytes
    challenge: bytes
    certs: list[bytes] | None = None
    collateral: list[bytes] | None = None


@model
class GrantBody(Model):
    principal_id: str
    key_id: str
    level: int


@model
class Empty(Model):
    pass


# -- keys ----------------------------------------------------------------------------------------
@model
class CreateKey(Model):
    LIMITS: ClassVar = {"description": 1024, "owner": 128, "expires_at": 64}
    purpose: str
    algorithm: str | None = None
    description: str = ""
    owner: str | None = None
    expires_at: str | None = None
    rotation_days: int | None = None


@model
class VersionBody(Model):
    version: int | None = None


@model
class ExpireBody(Model):
    at: str | None = None


@model
class RotationScheduleBody(Model):
    period_days: int | None


@model
class ScheduleDeletion(Model):
    days: int = 30
    version: int | None = None


@model
class ReleasePolicyBody(Model):
    policy: dict[str, Any]


# -- crypto --------------------------------------------------------------------------------------
@model
class EncryptBody(Model):
    LIMITS: ClassVar = {"plaintext": MAX_PLAINTEXT_BYTES, "key_id": 128}
    key_id: str
    plaintext: bytes
    context: dict[str, str] | None = None


@model
class DecryptBody(Model):
    LIMITS: ClassVar = {"ciphertext": MAX_CIPHERTEXT_BYTES, "key_id": 128}
    ciphertext: bytes
    context: dict[str, str] | None = None
    key_id: str | None = None


@model
class DataKeyBody(Model):
    LIMITS: ClassVar = {"key_id": 128}
    key_id: str
    context: dict[str, str] | None = None
    plaintext: bool = True
    length: int = 32


@model
class ReEncryptBody(Model):
    LIMITS: ClassVar = {"ciphertext": MAX_CIPHERTEXT_BYTES, "destination_key_id": 128}
    ciphertext: bytes
    context: dict[str, str] | None = None
    destination_key_id: str | None = None
    destination_context: dict[str, str] | None = None


@model
class SignBody(Model):
    LIMITS: ClassVar = {"message": MAX_MESSAGE_BYTES, "key_id": 128}
    key_id: str
    message: bytes


@model
class VerifyBody(Model):
    LIMITS: ClassVar = {"message": MAX_MESSAGE_BYTES, "signature": 4096, "key_id": 128}
    key_id: str
    message: bytes
    signature: bytes
    version: int | None = None


# -- rotation, distribution, sharing --------------------------------------------------------------
@model
class ConsumerBody(Model):
    LIMITS: ClassVar = {"consumer": 256}
    consumer: str | None = None


@model
class AcknowledgeBody(Model):
    LIMITS: ClassVar = {"consumer": 256}
    version: int
    consumer: str | None = None


@model
class ReleaseBody(Model):
    LIMITS: ClassVar = {**_EVIDENCE_LIMITS, "client_public_key": 64, "platform": 16}
    platform: str
    evidence: bytes
    client_public_key: bytes
    challenge: bytes
    certs: list[bytes] | None = None
    collateral: list[bytes] | None = None


@model
class ReceiptBody(Model):
    LIMITS: ClassVar = {"proof": 128}
    proof: str


@model
class SharingBody(Model):
    LIMITS: ClassVar = {"target": 128}
    target: str
    ttl_seconds: int
