"""``kms --profile FILE report --format html|json --from T --to T [--out FILE]``: the
compliance report for ``[from, to)`` (RFC 3339 times or dates), fetched as JSON over the
attested, authenticated connection and rendered here (``kms.report``): JSON, or one
self-contained HTML page with inline SVG charts (no script, nothing loaded)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from kms.commands import CommandContext
from kms.credentials import write_binary
from kms.errors import KmsError, ProfileError
from kms.profile import Profile
from kms.report import FORMATS, ReportFormatError, render_report

REPORT_PATH = "/v1/reports/compliance"


class ReportError(KmsError):
    """The report could not be fetched or rendered."""


def _moment(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time or date") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    report = subparsers.add_parser("report", help="the compliance report for a period")
    report.add_argument("--format", choices=FORMATS, default="html")
    report.add_argument("--from", dest="start", type=_moment, default=None,
                        help="start (default: 30 days before --to)")  # fmt: skip
    report.add_argument("--to", dest="end", type=_moment, default=None, help="end (default: now)")
    report.add_argument("--out", type=Path, default=None, help="write here (default: stdout)")
    report.set_defaults(handler=_report)


def _query(start: datetime | None, end: datetime | None) -> str:
    params = {"format": "json"}
    if start is not None:
        params["start"] = start.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if end is not None:
        params["end"] = end.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return REPORT_PATH + "?" + urlencode(params)


def _report(ctx: CommandContext) -> int:
    if not ctx.profile_path:
        raise ProfileError("no profile: give --profile FILE (or set $KMS_PROFILE)")
    profile = Profile.load(ctx.profile_path)
    document = _fetch(profile, _query(ctx.args.start, ctx.args.end))
    try:
        rendered = render_report(document, ctx.args.format)
    except ReportFormatError as exc:
        raise ReportError(f"the KMS answered a malformed report: {exc}") from None
    if ctx.args.out is not None:
        ctx.args.out.write_bytes(rendered)
        print(f"report written to {ctx.args.out}", file=ctx.stderr)
    else:
        write_binary(ctx, rendered)
    return 0


def _fetch(profile: Profile, path: str) -> Any:
    from kms.credentials import SyncAuthorizedClient

    with SyncAuthorizedClient(profile) as client:
        return client.get(path)
