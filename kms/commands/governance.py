"""``kms governance``: propose, show, sign (offline) and approve privileged operations.

    kms governance propose OPERATION [--param K=V ...] [--params JSON] [--ttl SECONDS]
    kms governance show ID [--json]              (--json output is what ``sign`` reads)
    kms governance list
    kms governance sign PROPOSAL.json --key ADMIN_KEY [--out APPROVAL.json]   (offline)
    kms governance approve ID APPROVAL.json

``sign`` needs no KMS: it reads the proposal as ``show --json`` printed it, prints the exact
canonical message it is about to approve (operation, parameters, KMS, measurement, expiry),
and writes the approval (public key + Ed25519 signature over the approval digest). The
admin's private key never touches a networked command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kms.errors import UsageError

MAX_FILE_BYTES = 1024 * 1024


def register(commands: Any) -> None:
    parser = commands.add_parser("governance", help="quorum-approved privileged operations")
    sub = parser.add_subparsers(dest="governance_command", required=True)

    propose = sub.add_parser("propose", help="propose a privileged operation")
    propose.add_argument("operation")
    propose.add_argument("--param", action="append", default=[], metavar="K=V")
    propose.add_argument("--params", default=None, help="parameters as a JSON object")
    propose.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")
    propose.add_argument("--json", action="store_true")
    propose.set_defaults(handler=_propose)

    show = sub.add_parser("show", help="show a proposal (with the digest to sign)")
    show.add_argument("proposal_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)

    listing = sub.add_parser("list", help="list proposals")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)

    sign = sub.add_parser("sign", help="sign a proposal offline with an admin key file")
    sign.add_argument("proposal_file", type=Path)
    sign.add_argument("--key", type=Path, required=True, help="the admin's Ed25519 key (PEM)")
    sign.add_argument("--out", type=Path, default=None)
    sign.add_argument("--json", action="store_true")
    sign.set_defaults(handler=_sign)

    approve = sub.add_parser("approve", help="submit a signed approval")
    approve.add_argument("proposal_id")
    approve.add_argument("approval_file", type=Path)
    approve.add_argument("--json", action="store_true")
    approve.set_defaults(handler=_approve)


def parameters(pairs: list[str], document: str | None) -> dict[str, Any]:
    """``--params JSON`` merged with ``--param K=V`` (a value that is JSON is parsed)."""
    out: dict[str, Any] = {}
    if document:
        try:
            loaded = json.loads(document)
        except ValueError:
            raise UsageError("--params is not JSON") from None
        if not isinstance(loaded, dict):
            raise UsageError("--params is a JSON object")
        out.update(loaded)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--param takes K=V, not {pair!r}")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def propose(client: Any, operation: str, params: dict[str, Any], ttl: int | None = None) -> Any:
    body: dict[str, Any] = {"operation": operation, "parameters": params}
    if ttl is not None:
        body["ttl_seconds"] = ttl
    return client.post("/v1/governance/proposals", body)


def print_proposal(ctx: Any, view: dict[str, Any]) -> None:
    if ctx.as_json:
        print(json.dumps(view, indent=2, sort_keys=True), file=ctx.stdout)
        return
    proposal = view["proposal"]
    out = ctx.stdout
    print(f"proposal {proposal['id']}: {proposal['operation']} ({view['status']})", file=out)
    print(f"  parameters: {json.dumps(proposal['parameters'], sort_keys=True)}", file=out)
    print(f"  approvals:  {view['approvals']} of {view['threshold']} "
          f"({', '.join(view['approvers']) or 'none yet'})", file=out)  # fmt: skip
    print(f"  expires_at: {proposal['expires_at']} (Unix ms)", file=out)
    print(f"  digest:     {view['approval_digest']}", file=out)
    if view.get("result") is not None:
        print(f"  result:     {json.dumps(view['result'], sort_keys=True)}", file=out)
    if view.get("error"):
        print(f"  error:      {view['error']}", file=out)


def sign_file(proposal_file: Path, key_file: Path) -> tuple[dict[str, Any], bytes]:
    """The approval of the proposal in ``proposal_file`` (``show --json`` output or the bare
    proposal object) by the admin key in ``key_file``, and the message it approves."""
    from enclave.governance.approvals import approval_message, sign_approval
    from enclave.governance.proposals import Proposal
    from kms.credentials import load_private_key

    try:
        document = json.loads(proposal_file.read_bytes()[:MAX_FILE_BYTES])
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the proposal {proposal_file}: {exc}") from None
    raw = document.get("proposal", document) if isinstance(document, dict) else None
    try:
        proposal = Proposal.from_dict(raw)  # type: ignore[arg-type]
    except Exception as exc:
        raise UsageError(f"{proposal_file} holds no proposal: {exc}") from None
    approval = sign_approval(load_private_key(key_file), proposal)
    return approval.to_dict(), approval_message(proposal)


def _propose(ctx: Any) -> int:
    from kms.credentials import open_client

    params = parameters(ctx.args.param, ctx.args.params)
    with open_client(ctx) as client:
        view = propose(client, ctx.args.operation, params, ctx.args.ttl)
    print_proposal(ctx, view)
    return 0


def _show(ctx: Any) -> int:
    from kms.credentials import open_client

    with open_client(ctx) as client:
        view = client.get(f"/v1/governance/proposals/{ctx.args.proposal_id}")
    print_proposal(ctx, view)
    return 0


def _list(ctx: Any) -> int:
    from kms.credentials import open_client

    with open_client(ctx) as client:
        views = client.get("/v1/governance/proposals")["proposals"]
    if ctx.as_json:
        print(json.dumps(views, indent=2, sort_keys=True), file=ctx.stdout)
        return 0
    for view in views:
        proposal = view["proposal"]
        print(f"{proposal['id']}  {proposal['operation']:<24} {view['status']:<9} "
              f"{view['approvals']}/{view['threshold']}", file=ctx.stdout)  # fmt: skip
    return 0


def _sign(ctx: Any) -> int:
    approval, message = sign_file(ctx.args.proposal_file, ctx.args.key)
    print("approving exactly this (canonical JSON):", file=ctx.stderr)
    print(message.decode(), file=ctx.stderr)
    text = json.dumps(approval, indent=2, sort_keys=True) + "\n"
    if ctx.args.out is not None:
        ctx.args.out.write_text(text)
    else:
        ctx.stdout.write(text)
    return 0


def _approve(ctx: Any) -> int:
    from kms.credentials import open_client

    try:
        approval = json.loads(ctx.args.approval_file.read_bytes()[:MAX_FILE_BYTES])
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the approval {ctx.args.approval_file}: {exc}") from None
    with open_client(ctx) as client:
        done = client.post(f"/v1/governance/proposals/{ctx.args.proposal_id}/approvals", approval)
    if ctx.as_json:
        print(json.dumps(done, indent=2, sort_keys=True), file=ctx.stdout)
    else:
        print(f"proposal {done['proposal_id']}: {done['status']} "
              f"({done['approvals']} of {done['threshold']})", file=ctx.stdout)  # fmt: skip
        if done.get("result") is not None:
            print(json.dumps(done["result"], indent=2, sort_keys=True), file=ctx.stdout)
    return 0


__all__ = ["argparse", "parameters", "propose", "register", "sign_file"]
