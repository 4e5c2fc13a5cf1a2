"""``kms principals ...`` and ``kms grants ...``: onboarding and access.

Forms::

    kms principals keygen --out FILE [--json]     Ed25519 key pair: FILE (private, 0600)
                                                  and FILE.pub (public, PEM)
    kms principals register --name N --kind service|admin|auditor --public-key FILE
                            [--private-key FILE] [--level 0..4] [--profile-out FILE] [--json]
    kms principals onboard  (same options) [--key-purpose P]...   registers and creates keys
    kms principals workload --name N --measurement HEX... [--level L] [--json]
    kms principals describe|disable|enable|isolate ID [--json]
    kms grants grant --principal ID --key KEY|'*' --level 0..4 [--json]
    kms grants revoke --principal ID --key KEY|'*'
    kms grants list --key KEY [--json]

Registration proves possession of the new key: the KMS issues a challenge and the new
principal's private key signs it (``enclave.kms.principals.identity_proof_message``), so
``--public-key`` may name the private key file itself, or its ``.pub`` beside it, or give
``--private-key``. ``--profile-out`` writes a profile for the new principal: this profile's
endpoints and trust, with ``[credentials]`` naming the new principal and its key file.
"""

from __future__ import annotations

import base64
import os
import urllib.parse
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.kms.principals import identity_proof_message
from kms.commands import CommandContext
from kms.credentials import (
    CredentialsError,
    generate_key,
    load_private_key,
    load_public_key,
    open_client,
    print_json,
    public_key_bytes,
    with_credentials,
    write_private_key,
    write_public_key,
)
from kms.errors import UsageError

KINDS = ("service", "admin", "auditor")
PURPOSES = ("encrypt", "sign", "hpke")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _keygen(ctx: CommandContext) -> int:
    out = Path(ctx.args.out)
    public_path = out.with_name(out.name + ".pub")
    if public_path.exists():
        raise CredentialsError(f"{public_path} exists already; not overwriting a key")
    key = generate_key()
    write_private_key(out, key)
    write_public_key(public_path, key)
    public = _b64(public_key_bytes(key))
    if ctx.as_json:
        print_json(ctx, {"private_key_file": str(out), "public_key_file": str(public_path),
                         "public_key": public})  # fmt: skip
    else:
        print(f"private key {out} (mode 0600), public key {public_path}", file=ctx.stdout)
        print(public, file=ctx.stdout)
    return 0


def _proof_key(
    public_file: Path, private_file: str | None, public: bytes
) -> tuple[Ed25519PrivateKey, Path]:
    candidates: list[Path] = []
    if private_file is not None:
        candidates.append(Path(private_file))
    else:
        candidates.append(public_file)
        if public_file.suffix == ".pub":
            candidates.append(public_file.with_suffix(""))
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            head = candidate.read_bytes()[:4096]
        except OSError:
            continue
        if b"PRIVATE KEY" not in head:
            continue
        key = load_private_key(candidate)
        if public_key_bytes(key) != public:
            raise CredentialsError(f"{candidate} is not the private half of the public key")
        return key, candidate
    raise UsageError(
        "registration proves possession of the new key: give --private-key FILE (or the "
        "private key file as --public-key, or keep FILE beside FILE.pub)"
    )


def _register(ctx: CommandContext, *, onboard: bool) -> int:
    a = ctx.args
    public_file = Path(a.public_key)
    public = load_public_key(public_file)
    key, key_path = _proof_key(public_file, a.private_key, public)
    with open_client(ctx) as client:
        challenge = base64.b64decode(client.post("/v1/principals/challenge")["challenge"])
        proof = key.sign(identity_proof_message(challenge, public, a.name))
        body: dict[str, Any] = {"name": a.name, "kind": a.kind, "public_key": _b64(public),
                                "challenge": _b64(challenge), "proof": _b64(proof),
                                "system_level": a.level}  # fmt: skip
        if onboard:
            body["keys"] = [{"purpose": p} for p in a.key_purpose or []]
            result = client.post("/v1/principals/onboard", body)
            principal = result["principal"]
        else:
            result = client.post("/v1/principals", body)
            principal = result
    if a.profile_out:
        out = Path(a.profile_out).resolve()
        relative = os.path.relpath(key_path.resolve(), out.parent)
        profile = with_credentials(ctx.profile(), principal["id"], relative)
        profile.write(out)
    if ctx.as_json:
        print_json(ctx, result)
    else:
        print(f"{principal['id']}  {principal['kind']}  {principal['name']}", file=ctx.stdout)
        for made in result.get("keys", []) if onboard else []:
            print(f"  key {made['id']}  {made['purpose']}", file=ctx.stdout)
        if a.profile_out:
            print(f"  profile {a.profile_out}", file=ctx.stdout)
    return 0


def _workload(ctx: CommandContext) -> int:
    body = {"name": ctx.args.name, "measurements": ctx.args.measurement,
            "system_level": ctx.args.level}  # fmt: skip
    with open_client(ctx) as client:
        result = client.post("/v1/principals/workloads", body)
    if ctx.as_json:
        print_json(ctx, result)
    else:
        print(f"{result['id']}  workload  {result['name']}", file=ctx.stdout)
    return 0


def _principal_action(action: str | None) -> Any:
    def run(ctx: CommandContext) -> int:
        path = f"/v1/principals/{urllib.parse.quote(ctx.args.principal_id, safe='')}"
        with open_client(ctx) as client:
            result = client.get(path) if action is None else client.post(f"{path}/{action}")
        if ctx.as_json:
            print_json(ctx, result)
        else:
            standing = "isolated" if result["isolated"] else (
                "enabled" if result["enabled"] else "disabled")  # fmt: skip
            print(f"{result['id']}  {result['kind']}  {result['name']}  {standing}",
                  file=ctx.stdout)  # fmt: skip
        return 0

    return run


def _grant(ctx: CommandContext) -> int:
    body = {"principal_id": ctx.args.principal, "key_id": ctx.args.key, "level": ctx.args.level}
    with open_client(ctx) as client:
        result = client.post("/v1/grants", body)
    if ctx.as_json:
        print_json(ctx, result)
    else:
        print(f"{result['principal_id']} holds level {result['level']} on {result['key_id']}",
              file=ctx.stdout)  # fmt: skip
    return 0


def _revoke(ctx: CommandContext) -> int:
    path = (f"/v1/grants/{urllib.parse.quote(ctx.args.principal, safe='')}/"
            f"{urllib.parse.quote(ctx.args.key, safe='')}")  # fmt: skip
    with open_client(ctx) as client:
        result = client.delete(path)
    if ctx.as_json:
        print_json(ctx, result)
    else:
        print("revoked" if result["revoked"] else "no such grant", file=ctx.stdout)
    return 0


def _grants_list(ctx: CommandContext) -> int:
    with open_client(ctx) as client:
        result = client.get(f"/v1/keys/{urllib.parse.quote(ctx.args.key, safe='')}/grants")
    if ctx.as_json:
        print_json(ctx, result["grants"])
    else:
        for g in result["grants"]:
            print(f"{g['principal_id']}  level {g['level']}  on {g['key_id']}", file=ctx.stdout)
    return 0


def _register_options(parser: Any) -> None:
    parser.add_argument("--name", required=True)
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--public-key", required=True, help="the new principal's key file")
    parser.add_argument("--private-key", help="its private key, to prove possession")
    parser.add_argument("--level", type=int, choices=range(5), help="system-wide level")
    parser.add_argument("--profile-out", help="write a profile for the new principal")
    parser.add_argument("--json", action="store_true")


def register(commands: Any) -> None:
    principals = commands.add_parser("principals", help="onboard and manage principals")
    sub = principals.add_subparsers(dest="principals_command", required=True)

    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair locally")
    keygen.add_argument("--out", required=True, help="private key file (FILE.pub: public)")
    keygen.add_argument("--json", action="store_true")
    keygen.set_defaults(handler=_keygen)

    reg = sub.add_parser("register", help="register a principal (administrators)")
    _register_options(reg)
    reg.set_defaults(handler=lambda ctx: _register(ctx, onboard=False))

    onboard = sub.add_parser("onboard", help="register a principal and create its keys")
    _register_options(onboard)
    onboard.add_argument("--key-purpose", action="append", choices=PURPOSES,
                         help="a key to create for it (repeat)")  # fmt: skip
    onboard.set_defaults(handler=lambda ctx: _register(ctx, onboard=True))

    workload = sub.add_parser("workload", help="register an attested workload")
    workload.add_argument("--name", required=True)
    workload.add_argument("--measurement", action="append", required=True, help="hex (repeat)")
    workload.add_argument("--level", type=int, choices=range(5))
    workload.add_argument("--json", action="store_true")
    workload.set_defaults(handler=_workload)

    for action in (None, "disable", "enable", "isolate"):
        parser = sub.add_parser(action or "describe", help=f"{action or 'describe'} a principal")
        parser.add_argument("principal_id")
        parser.add_argument("--json", action="store_true")
        parser.set_defaults(handler=_principal_action(action))

    grants = commands.add_parser("grants", help="grant and revoke access levels on keys")
    gsub = grants.add_subparsers(dest="grants_command", required=True)
    grant = gsub.add_parser("grant", help="give a principal a level on a key (or '*')")
    grant.add_argument("--principal", required=True)
    grant.add_argument("--key", required=True)
    grant.add_argument("--level", type=int, required=True, choices=range(5))
    grant.add_argument("--json", action="store_true")
    grant.set_defaults(handler=_grant)
    revoke = gsub.add_parser("revoke", help="remove a principal's grant on a key")
    revoke.add_argument("--principal", required=True)
    revoke.add_argument("--key", required=True)
    revoke.add_argument("--json", action="store_true")
    revoke.set_defaults(handler=_revoke)
    listing = gsub.add_parser("list", help="the grants on a key")
    listing.add_argument("--key", required=True)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_grants_list)
