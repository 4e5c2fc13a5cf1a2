"""``kms emergency``: the key compromise response and isolation, as quorum proposals.

    kms emergency compromise KEY [--reason TEXT]   mark compromised, rotate, rewrap, notify
    kms emergency rotate KEY                       emergency rotation
    kms emergency isolate PRINCIPAL|KEY            isolate a principal (prn_...) or a key
    kms emergency disable-key KEY                  disable every usable version of a key

Each prints the proposal to sign (``kms governance sign``) and approve (``kms governance
approve``); it runs once M admins approved. The runbooks are in docs/operations.md.
"""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser("emergency", help="emergency procedures (quorum)")
    sub = parser.add_subparsers(dest="emergency_command", required=True)
    for name, operation, target, helptext in (
        ("compromise", "emergency.compromise", "key_id", "key compromise response"),
        ("rotate", "emergency.rotate", "key_id", "emergency rotation of a key"),
        ("isolate", "emergency.isolate", "target", "isolate a principal or a key"),
        ("disable-key", "emergency.disable_key", "key_id", "disable a key"),
    ):
        command = sub.add_parser(name, help=helptext)
        command.add_argument(target)
        command.add_argument("--reason", default=None)
        command.add_argument("--ttl", type=int, default=3600, help="seconds (default 1 h)")
        command.add_argument("--json", action="store_true")
        command.set_defaults(handler=_handler(operation, target))


def parameters(operation: str, target: str, reason: str | None) -> dict[str, Any]:
    if operation == "emergency.isolate":
        params: dict[str, Any] = (
            {"principal_id": target} if target.startswith("prn_") else {"key_id": target}
        )
    else:
        params = {"key_id": target}
    if reason:
        params["reason"] = reason
    return params


def _handler(operation: str, target: str) -> Any:
    def handle(ctx: Any) -> int:
        from kms.commands.governance import print_proposal, propose
        from kms.credentials import open_client

        params = parameters(operation, getattr(ctx.args, target), ctx.args.reason)
        with open_client(ctx) as client:
            view = propose(client, operation, params, ctx.args.ttl)
        print_proposal(ctx, view)
        return 0

    return handle
