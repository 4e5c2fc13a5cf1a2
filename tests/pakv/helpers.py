"""Building a K/V key service for tests."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

from enclave.attestation.launch import LaunchIdentity
from enclave.pakv.keyset import KeySet, RotationPolicy, SplitConfig
from enclave.pakv.service import KmsIdentity, PakvService, PakvServiceConfig, ReleasePolicy
from tests.pakv.conftest import GOOD_LAUNCH, Clock, Identity, MemoryStore
from verifier.policy import Policy
from verifier.verify import Verifier

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "pakv"


def release_policy(verifier: Verifier, launch: LaunchIdentity = GOOD_LAUNCH) -> ReleasePolicy:
    policy = Policy.from_mapping(
        {
            "platform": "sev-snp",
            "allow_simulated": True,
            "measurements": [{"name": "kv-server", "value": launch.measurement.hex()}],
        }
    )
    return ReleasePolicy(policy=policy, verifier=verifier)


def make_service(
    verifier: Verifier,
    identity: Identity,
    audit: Callable[..., Awaitable[object]],
    clock: Clock,
    *,
    kms_id: str = "kms-a",
    split: SplitConfig | None = None,
    store: MemoryStore | None = None,
    rotate: bool = True,
    config: PakvServiceConfig | None = None,
) -> tuple[PakvService, KeySet]:
    keys = KeySet(
        store or MemoryStore(),
        os.urandom(32),
        kms_id=kms_id,
        clock=clock,
        policy=RotationPolicy(),
        split=split,
    )
    if rotate:
        keys.run_rotation(clock.now)
    service = PakvService(
        keys,
        release=release_policy(verifier),
        identity=KmsIdentity(sign=identity.key.sign, public_key=identity.public),
        audit=audit,
        clock=clock,
        config=config or PakvServiceConfig(),
    )
    return service, keys


def real_now_clock() -> Clock:
    return Clock(dt.datetime.now(dt.UTC).replace(microsecond=0))


def validator(name: str) -> jsonschema.protocols.Validator:
    resources = []
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    registry: Registry[Any] = Registry().with_resources(resources)
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, registry=registry, format_checker=jsonschema.FormatChecker()
    )


class Recorder:
    """An audit callable that keeps what it was given (the real AuditLog is tested too)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def __call__(self, **kwargs: Any) -> None:
        self.records.append(kwargs)
