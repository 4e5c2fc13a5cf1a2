"""``kms backup``: export (under quorum), verify, custodians' open-share, staging a restore.

    kms backup export                          propose backup.export (admins then approve)
    kms backup fetch ID --out FILE             download an exported bundle
    kms backup verify BUNDLE [--identity-key HEX | --profile ...]   check without restoring
    kms backup list | status
    kms backup stage BUNDLE                    upload a bundle to the restoring KMS
    kms backup open-share BUNDLE --key CUSTODIAN_KEY [--out SEALED]
                                               custodian: decrypt your share locally, attest
                                               the restoring KMS, seal the share to its key
    kms backup restore BUNDLE --kms-id ID --identity-key HEX [--key-source shares|replica]
                                               propose backup.restore for a staged bundle

``verify`` is offline when given the identity key (hex, as ``GET /v1/backup/identity``
printed it when the bundle was made); otherwise it asks the attested KMS of the profile.
``open-share`` never writes the decrypted share: it leaves this machine only HPKE-sealed to
a recipient key that the restoring enclave proved, with fresh evidence checked against this
profile's trust roots and reference policy, to hold.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kms.errors import AttestationRefused, UsageError

MAX_BUNDLE_BYTES = 256 * 1024 * 1024


def register(commands: Any) -> None:
    parser = commands.add_parser("backup", help="backup, verification and restore")
    sub = parser.add_subparsers(dest="backup_command", required=True)

    export = sub.add_parser("export", help="propose a backup export (quorum)")
    export.add_argument("--ttl", type=int, default=None)
    export.add_argument("--json", action="store_true")
    export.set_defaults(handler=_export)

    fetch = sub.add_parser("fetch", help="download an exported bundle")
    fetch.add_argument("backup_id")
    fetch.add_argument("--out", type=Path, required=True)
    fetch.set_defaults(handler=_fetch)

    verify = sub.add_parser("verify", help="check a bundle without restoring it")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--identity-key", default=None, help="hex Ed25519 identity key")
    verify.add_argument("--kms-id", default=None)
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=_verify)

    listing = sub.add_parser("list", help="the bundles this KMS exported")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)

    status = sub.add_parser("status", help="the last scheduled verification")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)

    stage = sub.add_parser("stage", help="upload a bundle to the restoring KMS")
    stage.add_argument("bundle", type=Path)
    stage.add_argument("--json", action="store_true")
    stage.set_defaults(handler=_stage)

    share = sub.add_parser("open-share", help="custodian: open your share, seal it to the KMS")
    share.add_argument("bundle", type=Path)
    share.add_argument("--key", type=Path, required=True, help="your X25519 key (PEM or hex)")
    share.add_argument("--out", type=Path, default=None, help="write the sealed share here")
    share.add_argument("--json", action="store_true")
    share.set_defaults(handler=_open_share)

    restore = sub.add_parser("restore", help="propose restoring a staged bundle (quorum)")
    restore.add_argument("bundle", type=Path)
    restore.add_argument("--kms-id", required=True)
    restore.add_argument("--identity-key", required=True)
    restore.add_argument("--key-source", choices=("shares", "replica"), default="shares")
    restore.add_argument("--json", action="store_true")
    restore.set_defaults(handler=_restore)


# -- the steps, usable from scripts and tests -------------------------------------------------


def read_bundle(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BUNDLE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_BUNDLE_BYTES:
        raise UsageError(f"{path} is larger than a bundle may be")
    return data


def verify_offline(bundle: bytes, identity_key: bytes, kms_id: str | None = None) -> dict[str, Any]:
    """The manifest summary of a bundle that verifies, or ``UsageError`` naming the check."""
    from enclave.backup.bundle import verify_bundle
    from enclave.backup.errors import BundleInvalid

    try:
        manifest = verify_bundle(bundle, identity_key, kms_identity=kms_id)
    except BundleInvalid as exc:
        raise UsageError(f"the bundle does NOT verify ({exc.type}): {exc}") from None
    return {
        "backup_id": manifest.backup_id,
        "kms_id": manifest.kms_identity,
        "created_at": manifest.created_at.isoformat(),
        "records": len(manifest.records),
        "record_counts": dict(manifest.record_counts),
        "threshold": manifest.threshold,
        "custodians": [c.name for c in manifest.custodians],
        "audit_head": manifest.audit_head.to_dict() if manifest.audit_head else None,
        "sha256": hashlib.sha256(bundle).hexdigest(),
    }


def load_custodian_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    try:
        data = path.read_bytes()[:16384]
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, X25519PrivateKey):
            raise UsageError(f"{path} is not an X25519 private key")
        return key
    try:
        return X25519PrivateKey.from_private_bytes(bytes.fromhex(data.decode().strip()))
    except ValueError:
        raise UsageError(f"{path} holds no X25519 private key (PEM or hex)") from None


def new_nonce() -> bytes:
    return secrets.token_bytes(32)


def check_offer(profile: Any, offer: dict[str, Any], nonce: bytes) -> bytes:
    """The recipient key of a restore offer, once its evidence verified under ``profile``'s
    trust roots, bound that key to ``nonce``, and met the profile's reference policy."""
    from enclave.backup.recovery import RecipientOffer, recipient_report_data
    from kms.attest import Attestor
    from verifier.errors import VerificationError

    parsed = RecipientOffer.from_dict(offer)
    if parsed.nonce != nonce:
        raise AttestationRefused("stale-evidence", "the offer answers another nonce")
    if parsed.evidence.platform != profile.platform:
        raise AttestationRefused("platform-mismatch", "the offer's evidence is another platform's")
    now = datetime.now(UTC)
    try:
        claims = Attestor(profile).local_verifier.verify(
            parsed.evidence.platform,
            parsed.evidence.evidence,
            at=now,
            certs=parsed.evidence.certs,
            collateral=parsed.evidence.collateral,
            expected_report_data=recipient_report_data(parsed.public_key, nonce),
        )
        profile.policy.evaluate(claims, now)
    except VerificationError as exc:
        raise AttestationRefused(
            getattr(exc, "type", "bad-evidence"),
            f"the restoring KMS's recipient key is not attested: {exc}",
        ) from None
    return parsed.public_key


def seal_for_recipient(bundle: bytes, custodian_key: Any, recipient: bytes) -> tuple[str, bytes]:
    """Open this custodian's share of ``bundle`` and seal it to ``recipient``."""
    from enclave.backup.bundle import Bundle
    from enclave.backup.custodians import open_share
    from enclave.backup.errors import CustodianError
    from enclave.backup.manifest import Manifest
    from enclave.backup.recovery import seal_share

    backup_id = Manifest.from_bytes(Bundle.from_bytes(bundle).manifest_bytes).backup_id
    try:
        share = open_share(bundle, custodian_key)
    except CustodianError as exc:
        raise UsageError(f"cannot open your share: {exc}") from None
    return backup_id, seal_share(share, recipient, backup_id)


# -- handlers ----------------------------------------------------------------------------------


def _print(ctx: Any, document: Any, text: str) -> None:
    if ctx.as_json:
        print(json.dumps(document, indent=2, sort_keys=True), file=ctx.stdout)
    else:
        print(text, file=ctx.stdout)


def _export(ctx: Any) -> int:
    from kms.commands.governance import print_proposal, propose
    from kms.credentials import open_client

    with open_client(ctx) as client:
        view = propose(client, "backup.export", {}, ctx.args.ttl)
    print_proposal(ctx, view)
    if not ctx.as_json:
        print("once approved: kms backup fetch <backup_id> --out FILE", file=ctx.stdout)
    return 0


def _fetch(ctx: Any) -> int:
    from kms.credentials import open_client

    with open_client(ctx) as client:
        response = client.request("GET", f"/v1/backup/bundles/{ctx.args.backup_id}")
    ctx.args.out.write_bytes(response.body)
    print(f"{ctx.args.out}: {len(response.body)} bytes, sha256 "
          f"{hashlib.sha256(response.body).hexdigest()}", file=ctx.stdout)  # fmt: skip
    return 0


def _verify(ctx: Any) -> int:
    bundle = read_bundle(ctx.args.bundle)
    identity = ctx.args.identity_key
    kms_id = ctx.args.kms_id
    if identity is None:
        from kms.credentials import open_client

        with open_client(ctx) as client:
            document = client.get("/v1/backup/identity")
        identity, kms_id = document["identity_public_key"], kms_id or document["kms_id"]
    try:
        key = bytes.fromhex(identity)
    except ValueError:
        raise UsageError("--identity-key is hex") from None
    summary = verify_offline(bundle, key, kms_id)
    _print(ctx, summary, f"bundle {summary['backup_id']} verifies: {summary['records']} records "
           f"from {summary['kms_id']} at {summary['created_at']}")  # fmt: skip
    return 0


def _list(ctx: Any) -> int:
    from kms.credentials import open_client

    with open_client(ctx) as client:
        bundles = client.get("/v1/backup/bundles")["bundles"]
    _print(ctx, bundles, "\n".join(f"{b['backup_id']}  {b['created_at']}  {b['sha256']}"
                                   for b in bundles) or "no bundles")  # fmt: skip
    return 0


def _status(ctx: Any) -> int:
    from kms.credentials import open_client

    with open_client(ctx) as client:
        status = client.get("/v1/backup/status")
    _print(ctx, status, json.dumps(status, indent=2, sort_keys=True))
    return 0


def _stage(ctx: Any) -> int:
    from enclave.backup.bundle import Bundle
    from enclave.backup.manifest import Manifest
    from kms.credentials import open_client

    bundle = read_bundle(ctx.args.bundle)
    backup_id = Manifest.from_bytes(Bundle.from_bytes(bundle).manifest_bytes).backup_id
    with open_client(ctx) as client:
        staged = client.put(
            f"/v1/backup/restore/bundles/{backup_id}",
            {"bundle": base64.b64encode(bundle).decode()},
        )
    _print(ctx, staged, f"staged {backup_id} (sha256 {staged['bundle_sha256']})")
    return 0


def _open_share(ctx: Any) -> int:
    from kms.credentials import open_client

    bundle = read_bundle(ctx.args.bundle)
    key = load_custodian_key(ctx.args.key)
    nonce = new_nonce()
    with open_client(ctx) as client:
        offer = client.get(f"/v1/backup/restore/recipient?nonce={nonce.hex()}")
        recipient = check_offer(ctx.profile(), offer, nonce)
        backup_id, sealed = seal_for_recipient(bundle, key, recipient)
        if ctx.args.out is not None:
            ctx.args.out.write_bytes(sealed)
            _print(ctx, {"backup_id": backup_id, "sealed_share": str(ctx.args.out)},
                   f"share of {backup_id} sealed to the attested KMS: {ctx.args.out}")  # fmt: skip
            return 0
        sent = client.post(
            "/v1/backup/restore/shares",
            {"backup_id": backup_id, "sealed_share": base64.b64encode(sealed).decode()},
        )
    _print(ctx, sent, f"share of {backup_id} sealed to the attested KMS and delivered")
    return 0


def _restore(ctx: Any) -> int:
    from enclave.backup.bundle import Bundle
    from enclave.backup.manifest import Manifest
    from kms.commands.governance import print_proposal, propose
    from kms.credentials import open_client

    bundle = read_bundle(ctx.args.bundle)
    backup_id = Manifest.from_bytes(Bundle.from_bytes(bundle).manifest_bytes).backup_id
    verify_offline(bundle, bytes.fromhex(ctx.args.identity_key), ctx.args.kms_id)
    params = {
        "backup_id": backup_id,
        "bundle_sha256": hashlib.sha256(bundle).hexdigest(),
        "kms_id": ctx.args.kms_id,
        "identity_public_key": ctx.args.identity_key,
        "key_source": ctx.args.key_source,
    }
    with open_client(ctx) as client:
        view = propose(client, "backup.restore", params)
    print_proposal(ctx, view)
    return 0
