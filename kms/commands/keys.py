"""``kms keys ...``: key lifecycle, rotation notifications (``kms events``, ``kms ack``).

Forms::

    kms keys create --purpose encrypt|wrap|sign|hpke [--algorithm NAME] [--description D]
                    [--owner PRINCIPAL] [--rotation-days N] [--json]
    kms keys list [--json]                     kms keys describe ID [--json]
    kms keys rotate|enable|disable ID [--version N] [--json]
    kms keys expire ID [--at ISO-TIME]         kms keys rotation-schedule ID (--days N | --off)
    kms keys schedule-deletion ID --days N [--version N]    kms keys cancel-deletion ID
    kms keys release-policy ID --policy FILE   kms keys public-key ID [--version N] [--pem]
    kms keys grants ID                          kms keys rotation-status ID
    kms keys consumer ID [--consumer NAME]      (register a consumer of its rotations)
    kms events --key ID [--after N] [--timeout S] [--json]   (long poll)
    kms ack --key ID --version N [--consumer NAME]

Every command prints JSON with ``--json`` (the key's metadata: ``{"id": ..., ...}``) and a
short line otherwise; failures exit non-zero with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from pathlib import Path
from typing import Any

from kms.commands import CommandContext
from kms.credentials import open_client, print_json
from kms.errors import UsageError

PURPOSES = ("encrypt", "wrap", "sign", "hpke")


def _key_path(key_id: str, suffix: str = "") -> str:
    return f"/v1/keys/{urllib.parse.quote(key_id, safe='')}{suffix}"


def _summary(key: dict[str, Any]) -> str:
    states = ", ".join(f"v{v['version']} {v['state']}" for v in key.get("versions", []))
    return f"{key['id']}  {key['purpose']}  {key['algorithm']}  [{states}]"


def _show_key(ctx: CommandContext, key: dict[str, Any]) -> int:
    if ctx.as_json:
        print_json(ctx, key)
    else:
        print(_summary(key), file=ctx.stdout)
    return 0


def _create(ctx: CommandContext) -> int:
    a = ctx.args
    body: dict[str, Any] = {"purpose": a.purpose}
    for name in ("algorithm", "description", "owner"):
        if getattr(a, name) is not None:
            body[name] = getattr(a, name)
    if a.rotation_days is not None:
        body["rotation_days"] = a.rotation_days
    with open_client(ctx) as client:
        return _show_key(ctx, client.post("/v1/keys", body))


def _list(ctx: CommandContext) -> int:
    with open_client(ctx) as client:
        keys = client.get("/v1/keys")["keys"]
    if ctx.as_json:
        print_json(ctx, keys)
    else:
        for key in keys:
            print(_summary(key), file=ctx.stdout)
    return 0


def _describe(ctx: CommandContext) -> int:
    with open_client(ctx) as client:
        return _show_key(ctx, client.get(_key_path(ctx.args.key_id)))


def _action(action: str) -> Any:
    def run(ctx: CommandContext) -> int:
        body: dict[str, Any] = {}
        if getattr(ctx.args, "version", None) is not None:
            body["version"] = ctx.args.version
        with open_client(ctx) as client:
            return _show_key(ctx, client.post(_key_path(ctx.args.key_id, "/" + action), body))

    return run


def _expire(ctx: CommandContext) -> int:
    body = {} if ctx.args.at is None else {"at": ctx.args.at}
    with open_client(ctx) as client:
        return _show_key(ctx, client.post(_key_path(ctx.args.key_id, "/expire"), body))


def _schedule_deletion(ctx: CommandContext) -> int:
    body: dict[str, Any] = {"days": ctx.args.days}
    if ctx.args.version is not None:
        body["version"] = ctx.args.version
    with open_client(ctx) as client:
        key = client.post(_key_path(ctx.args.key_id, "/schedule-deletion"), body)
    return _show_key(ctx, key)


def _rotation_schedule(ctx: CommandContext) -> int:
    if ctx.args.off == (ctx.args.days is not None):
        raise UsageError("give either --days N or --off")
    body = {"period_days": None if ctx.args.off else ctx.args.days}
    with open_client(ctx) as client:
        return _show_key(ctx, client.put(_key_path(ctx.args.key_id, "/rotation-schedule"), body))


def _release_policy(ctx: CommandContext) -> int:
    try:
        policy = json.loads(Path(ctx.args.policy).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the policy {ctx.args.policy}: {exc}") from None
    with open_client(ctx) as client:
        result = client.put(_key_path(ctx.args.key_id, "/release-policy"), {"policy": policy})
    if ctx.as_json:
        print_json(ctx, result)
    else:
        print(f"{ctx.args.key_id}: release policy set", file=ctx.stdout)
    return 0


def _public_key(ctx: CommandContext) -> int:
    suffix = "/public-key" + ("" if ctx.args.version is None else f"?version={ctx.args.version}")
    with open_client(ctx) as client:
        result = client.get(_key_path(ctx.args.key_id, suffix))
    if ctx.as_json:
        print_json(ctx, result)
    elif ctx.args.pem:
        import textwrap

        body = "\n".join(textwrap.wrap(result["spki"], 64))
        print(f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----", file=ctx.stdout)
    else:
        print(result["spki"], file=ctx.stdout)
    return 0


def _get_json(suffix: str) -> Any:
    def run(ctx: CommandContext) -> int:
        with open_client(ctx) as client:
            result = client.get(_key_path(ctx.args.key_id, suffix))
        print_json(ctx, result)
        return 0

    return run


def _consumer(ctx: CommandContext) -> int:
    body = {} if ctx.args.consumer is None else {"consumer": ctx.args.consumer}
    with open_client(ctx) as client:
        result = client.post(_key_path(ctx.args.key_id, "/consumers"), body)
    if ctx.as_json:
        print_json(ctx, result)
    else:
        print(f"{ctx.args.key_id}: consumers {', '.join(result['consumers'])}", file=ctx.stdout)
    return 0


def _events(ctx: CommandContext) -> int:
    query = urllib.parse.urlencode({"after": ctx.args.after, "timeout": ctx.args.timeout})
    with open_client(ctx) as client:
        result = client.get(_key_path(ctx.args.key, f"/events?{query}"))
    if ctx.as_json:
        print_json(ctx, result)
    else:
        for event in result["events"]:
            print(
                f"{event['seq']} {event['type']} v{event['new_version']}"
                f" (old v{event['old_version']})",
                file=ctx.stdout,
            )
    return 0


def _ack(ctx: CommandContext) -> int:
    body: dict[str, Any] = {"version": ctx.args.version}
    if ctx.args.consumer is not None:
        body["consumer"] = ctx.args.consumer
    with open_client(ctx) as client:
        result = client.post(_key_path(ctx.args.key, "/acknowledge"), body)
    if ctx.as_json:
        print_json(ctx, result)
    else:
        print(f"{ctx.args.key}: acknowledged v{ctx.args.version}", file=ctx.stdout)
    return 0


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def register(commands: Any) -> None:
    keys = commands.add_parser("keys", help="create, list and manage keys")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    create = sub.add_parser("create", help="create a key (you own it)")
    create.add_argument("--purpose", required=True, choices=PURPOSES)
    create.add_argument("--algorithm", help="default: AES-256-GCM, ED25519, X25519 by purpose")
    create.add_argument("--description")
    create.add_argument("--owner", help="create it for another principal (administrators)")
    create.add_argument("--rotation-days", type=int)
    _json_flag(create)
    create.set_defaults(handler=_create)

    listing = sub.add_parser("list", help="the keys you may view")
    _json_flag(listing)
    listing.set_defaults(handler=_list)

    describe = sub.add_parser("describe", help="a key's metadata")
    describe.add_argument("key_id")
    _json_flag(describe)
    describe.set_defaults(handler=_describe)

    for action, text in (("rotate", "add a new active version (old: decrypt-only)"),
                         ("enable", "re-enable a disabled version"),
                         ("disable", "disable every enabled version (or --version N)"),
                         ("cancel-deletion", "cancel a scheduled deletion")):  # fmt: skip
        parser = sub.add_parser(action, help=text)
        parser.add_argument("key_id")
        if action != "rotate":
            parser.add_argument("--version", type=int)
        _json_flag(parser)
        parser.set_defaults(handler=_action(action))

    expire = sub.add_parser("expire", help="set the key's expiry (default: now)")
    expire.add_argument("key_id")
    expire.add_argument("--at", help="ISO 8601 time with a zone")
    _json_flag(expire)
    expire.set_defaults(handler=_expire)

    deletion = sub.add_parser("schedule-deletion", help="delete after a 7..30-day window")
    deletion.add_argument("key_id")
    deletion.add_argument("--days", type=int, required=True)
    deletion.add_argument("--version", type=int)
    _json_flag(deletion)
    deletion.set_defaults(handler=_schedule_deletion)

    schedule = sub.add_parser("rotation-schedule", help="automatic rotation period")
    schedule.add_argument("key_id")
    schedule.add_argument("--days", type=int)
    schedule.add_argument("--off", action="store_true")
    _json_flag(schedule)
    schedule.set_defaults(handler=_rotation_schedule)

    policy = sub.add_parser("release-policy", help="release to attested clients (policy JSON)")
    policy.add_argument("key_id")
    policy.add_argument("--policy", required=True, help="verifier policy JSON file")
    _json_flag(policy)
    policy.set_defaults(handler=_release_policy)

    public = sub.add_parser("public-key", help="a signing or HPKE key's public key")
    public.add_argument("key_id")
    public.add_argument("--version", type=int)
    public.add_argument("--pem", action="store_true")
    _json_flag(public)
    public.set_defaults(handler=_public_key)

    for name, suffix, text in (("grants", "/grants", "who holds which level on the key"),
                               ("rotation-status", "/rotation", "consumers and pending switches"),
                               ("sharing", "/sharing", "a sharing key's status")):  # fmt: skip
        parser = sub.add_parser(name, help=text)
        parser.add_argument("key_id")
        _json_flag(parser)
        parser.set_defaults(handler=_get_json(suffix), json=True)

    consumer = sub.add_parser("consumer", help="register a consumer of the key's rotations")
    consumer.add_argument("key_id")
    consumer.add_argument("--consumer", help="default: you")
    _json_flag(consumer)
    consumer.set_defaults(handler=_consumer)

    events = commands.add_parser("events", help="wait for a key's rotation events (long poll)")
    events.add_argument("--key", required=True)
    events.add_argument("--after", type=int, default=0, help="last sequence number seen")
    events.add_argument("--timeout", type=float, default=0.0, help="seconds to wait (<= 300)")
    _json_flag(events)
    events.set_defaults(handler=_events)

    ack = commands.add_parser("ack", help="acknowledge the switch to a key's new version")
    ack.add_argument("--key", required=True)
    ack.add_argument("--version", type=int, required=True)
    ack.add_argument("--consumer", help="default: you")
    _json_flag(ack)
    ack.set_defaults(handler=_ack)
