"""``kms audit export`` and ``kms audit verify``.

``kms --profile FILE audit export --out LOG`` fetches the KMS's audit log over the attested
connection, authenticated with the profile's credentials (administrators and auditors
only). The export carries the KMS's audit public key; the first export pins it in the
profile (``[audit] public_key``: it came over a connection whose TLS key the attested
evidence vouches for), and every later export must carry the pinned key. The export is
verified before it is written; a broken one is still written (it is evidence) and the
command exits 1.

``kms audit verify LOG [--profile FILE]`` needs no connection: the log and the audit
public key (the profile's pin; without one, the key in the export, which then proves only
that the log is self-consistent). Exit 0 when intact, 1 when not; every altered, removed,
reordered or inserted record is named by its sequence number.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
from pathlib import Path

from kms.audit_verify import AuditFileError, decode_key, export_key, verify_file
from kms.commands import CommandContext
from kms.errors import KmsError, ProfileError
from kms.profile import Profile

EXPORT_PATH = "/v1/audit/export"
MAX_EXPORT_ANSWER_BYTES = 1024 * 1024 * 1024
EXIT_OK = 0
EXIT_BROKEN = 1


class AuditError(KmsError):
    """The audit log could not be exported or read."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = subparsers.add_parser("audit", help="export and verify the KMS's audit log")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    export = commands.add_parser(
        "export", help="download the audit log (pins the audit key in the profile)"
    )
    export.add_argument("--out", required=True, type=Path, help="where to write the log")
    export.add_argument("--json", action="store_true", help="print the result as JSON")
    export.set_defaults(handler=_export)
    verify = commands.add_parser("verify", help="verify an exported audit log offline")
    verify.add_argument("log", type=Path)
    verify.add_argument(
        "--profile", dest="verify_profile", default=None,
        help="a profile whose [audit] public_key is the pinned key",
    )  # fmt: skip
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(handler=_verify)


def _pinned_key(profile: Profile) -> bytes | None:
    text = profile.audit.get("public_key")
    if text is None:
        return None
    try:
        return decode_key(text)
    except AuditFileError as exc:
        raise ProfileError(f"[audit] public_key: {exc}") from None


def _verify(ctx: CommandContext) -> int:
    path = ctx.args.verify_profile or ctx.profile_path
    pinned = _pinned_key(Profile.load(path)) if path else None
    try:
        outcome = verify_file(ctx.args.log, pinned)
    except AuditFileError as exc:
        raise AuditError(str(exc)) from None
    if ctx.as_json:
        print(json.dumps(outcome.to_json(), indent=2), file=ctx.stdout)
    else:
        for line in outcome.lines():
            print(line, file=ctx.stdout)
    return EXIT_OK if outcome.intact else EXIT_BROKEN


def _export(ctx: CommandContext) -> int:
    if not ctx.profile_path:
        raise ProfileError("no profile: give --profile FILE (or set $KMS_PROFILE)")
    profile = Profile.load(ctx.profile_path)
    data = _download(profile)
    out: Path = ctx.args.out
    lines = data.splitlines(keepends=True)
    try:
        key, kms_id = export_key(lines)
    except AuditFileError as exc:
        raise AuditError(f"the KMS answered something that is not an audit export: {exc}") from None
    pinned = _pinned_key(profile)
    if pinned is not None and pinned != key:
        raise AuditError(
            "the export is signed with another audit key than the one pinned in the profile: "
            "refusing it (nothing written)"
        )
    out.write_bytes(data)
    pinned_now = False
    if pinned is None:
        audit = {"public_key": base64.b64encode(key).decode()}
        if kms_id:
            audit["kms_id"] = kms_id
        dataclasses.replace(profile, audit=audit).write(ctx.profile_path)
        pinned_now = True
    outcome = verify_file(out, key)
    if ctx.as_json:
        result = {"out": str(out), "pinned_now": pinned_now, **outcome.to_json()}
        print(json.dumps(result, indent=2), file=ctx.stdout)
    else:
        print(f"audit log written to {out} ({len(lines) - 1} records)", file=ctx.stdout)
        if pinned_now:
            print(f"audit public key pinned in {ctx.profile_path}", file=ctx.stdout)
        for line in outcome.lines():
            print(line, file=ctx.stdout)
    return EXIT_OK if outcome.intact else EXIT_BROKEN


def _download(profile: Profile) -> bytes:
    from kms.credentials import SyncAuthorizedClient

    # An audit log is larger than an API answer: raise the answer cap for this request.
    settings = dataclasses.replace(profile.client, max_answer_bytes=MAX_EXPORT_ANSWER_BYTES)
    with SyncAuthorizedClient(dataclasses.replace(profile, client=settings)) as client:
        return client.request("GET", EXPORT_PATH).body
