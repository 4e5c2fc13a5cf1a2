"""Self-contained HTML for the dashboard and the compliance report, and the JSON rendering.

Pages are one document each: inline CSS, inline SVG charts, no script, no external URL of
any kind (no fonts, images, stylesheets or links off the page), and a Content-Security-Policy
``<meta>`` that forbids loading anything, so a page saved to disk or mailed to an auditor
renders the same and phones nowhere. Every value passes through ``html.escape``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence

from enclave.reports import charts
from enclave.reports.model import RatePointRow, ReportData

# What the page may load: nothing but its own inline styles (and data: images).
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, sans-serif; margin: 0; color: #111827; background: #f9fafb; }
header { background: #111827; color: #f9fafb; padding: 14px 24px; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 4px 0 0; color: #d1d5db; font-size: 13px; }
main { padding: 16px 24px; max-width: 1200px; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px;
          padding: 12px 16px; margin: 0 0 16px; }
h2 { font-size: 16px; margin: 0 0 10px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #f3f4f6; }
th { background: #f3f4f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12px; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; }
.tile { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 10px 14px;
        min-width: 130px; }
.tile .value { font-size: 22px; font-weight: 600; }
.tile .label { font-size: 12px; color: #6b7280; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         color: #fff; }
.level-info { background: #2563eb; } .level-warning { background: #d97706; }
.level-error { background: #dc2626; } .level-critical { background: #7f1d1d; }
.ok { color: #15803d; font-weight: 600; } .bad { color: #b91c1c; font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure.chart { margin: 0; }
figcaption { font-size: 12px; color: #6b7280; text-align: center; }
.muted { color: #6b7280; font-size: 12px; }
"""


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, subtitle: str, body: str, *, refresh_seconds: int | None = None) -> str:
    refresh = (
        f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">' if refresh_seconds else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{e(PAGE_CSP)}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{refresh}<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{e(title)}</h1><p>{e(subtitle)}</p></header><main>{body}</main>"
        "</body></html>\n"
    )


def section(title: str, content: str, *, section_id: str | None = None) -> str:
    ident = f' id="{e(section_id)}"' if section_id else ""
    return f"<section{ident}><h2>{e(title)}</h2>{content}</section>"


def tiles(items: Iterable[tuple[str, object]]) -> str:
    return (
        '<div class="tiles">'
        + "".join(
            f'<div class="tile"><div class="value">{e(v)}</div>'
            f'<div class="label">{e(k)}</div></div>'
            for k, v in items
        )
        + "</div>"
    )


def badge(level: str) -> str:
    return f'<span class="badge level-{e(level)}">{e(level)}</span>'


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    numeric: Iterable[int] = (),
    raw: Iterable[int] = (),
    empty: str = "None.",
) -> str:
    """``raw`` columns hold HTML this module built (badges); everything else is escaped."""
    num, raw_cols = set(numeric), set(raw)
    head = "".join(
        f'<th class="num">{e(h)}</th>' if i in num else f"<th>{e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            text = str(value) if i in raw_cols else e(value)
            cells.append(f'<td class="num">{text}</td>' if i in num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        return f'<p class="muted">{e(empty)}</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _ok(flag: bool, yes: str = "on schedule", no: str = "overdue") -> str:
    return f'<span class="ok">{e(yes)}</span>' if flag else f'<span class="bad">{e(no)}</span>'


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


MAX_CHART_POINTS = 120


def _downsample(
    points: Sequence[RatePointRow],
) -> tuple[list[str], list[float], list[float], str]:
    """Sum per-minute points into at most ``MAX_CHART_POINTS`` buckets; label by time of
    day, or by date and time when the series spans more than a day."""
    if not points:
        return [], [], [], "min"
    group = max(1, -(-len(points) // MAX_CHART_POINTS))
    long_span = points[0].minute[:10] != points[-1].minute[:10]
    labels, requests, errors = [], [], []
    for i in range(0, len(points), group):
        chunk = points[i : i + group]
        stamp = chunk[0].minute
        labels.append(f"{stamp[5:10]} {stamp[11:16]}" if long_span else stamp[11:16])
        requests.append(float(sum(p.requests for p in chunk)))
        errors.append(float(sum(p.errors for p in chunk)))
    return labels, requests, errors, "min" if group == 1 else f"{group} min"


def render_report_json(report: ReportData) -> bytes:
    return json.dumps(report.to_dict(), indent=2, sort_keys=False).encode() + b"\n"


def render_report_html(report: ReportData) -> str:
    t = report.totals
    period = f"{report.period_start} to {report.period_end}"
    parts = [
        section(
            "Summary",
            tiles(
                [
                    ("audit records", t.get("records", 0)),
                    ("denied / invalid", t.get("denied", 0) + t.get("invalid", 0)),
                    ("principals", t.get("principals", 0)),
                    ("key lifecycle events", t.get("lifecycle_events", 0)),
                    ("policy changes", t.get("policy_changes", 0)),
                    ("security incidents", t.get("incidents", 0)),
                    ("keys", t.get("keys", 0)),
                    ("rotation overdue", t.get("rotation_overdue", 0)),
                ]
            ),
            section_id="summary",
        )
    ]
    parts.append(
        section(
            "Key lifecycle events",
            charts.bar_chart(
                [(op, float(n)) for op, n in report.lifecycle_counts.items() if op != "completed"],
                title="Key lifecycle events by operation",
            )
            + table(
                ["#", "time", "operation", "key", "version", "principal", "outcome"],
                (
                    (
                        ev.seq,
                        ev.time,
                        ev.operation,
                        ev.key_id or "-",
                        ev.key_version or "-",
                        ev.principal,
                        ev.outcome,
                    )
                    for ev in report.key_lifecycle
                ),
                numeric=(0,),
                empty="No key lifecycle events in the period.",
            ),
            section_id="key-lifecycle",
        )
    )
    daily_labels = [d.date[5:] for d in report.access_daily]
    parts.append(
        section(
            "Access patterns",
            '<div class="charts">'
            + charts.stacked_columns(
                daily_labels,
                [
                    ("allowed", [float(d.allowed) for d in report.access_daily]),
                    ("denied/invalid", [float(d.denied) for d in report.access_daily]),
                    ("errors", [float(d.errors) for d in report.access_daily]),
                ],
                title="Requests per day",
            )
            + charts.bar_chart(
                [(o.operation, float(o.count)) for o in report.access_by_operation[:15]],
                title="Requests by operation",
            )
            + "</div>"
            + table(
                [
                    "principal",
                    "requests",
                    "allowed",
                    "denied",
                    "invalid",
                    "errors",
                    "keys",
                    "last seen",
                ],
                (
                    (
                        p.principal,
                        p.requests,
                        p.allowed,
                        p.denied,
                        p.invalid,
                        p.errors,
                        p.distinct_keys,
                        p.last_seen,
                    )
                    for p in report.access_by_principal
                ),
                numeric=(1, 2, 3, 4, 5, 6),
                empty="No requests in the period.",
            ),
            section_id="access-patterns",
        )
    )
    parts.append(
        section(
            "Policy changes",
            table(
                ["#", "time", "operation", "principal", "key", "outcome"],
                (
                    (ev.seq, ev.time, ev.operation, ev.principal, ev.key_id or "-", ev.outcome)
                    for ev in report.policy_changes
                ),
                numeric=(0,),
                empty="No policy changes in the period.",
            ),
            section_id="policy-changes",
        )
    )
    parts.append(
        section(
            "Security incidents",
            charts.bar_chart(
                [(lvl, float(n)) for lvl, n in report.incidents_by_level.items()],
                title="Alerts by level",
                colors=[
                    charts.LEVEL_COLORS.get(lvl, "#6b7280") for lvl in report.incidents_by_level
                ],
            )
            + table(
                ["time", "level", "kind", "alert", "subject"],
                (
                    (i.at, badge(i.level), i.kind, e(i.title), e(i.subject or "-"))
                    for i in report.incidents
                ),
                raw=(1, 3, 4),
                empty="No incidents (alerts at Warning or above) in the period.",
            ),
            section_id="security-incidents",
        )
    )
    parts.append(
        section(
            "Rotation compliance",
            '<div class="charts">'
            + charts.ratio_gauge(report.rotation_compliance_ratio, title="Keys rotated on schedule")
            + "</div>"
            + table(
                ["key", "owner", "state", "period (days)", "last rotated", "due", "status"],
                (
                    (
                        r.key_id,
                        r.owner,
                        r.state,
                        r.period_days or "on demand",
                        r.last_rotated or "-",
                        r.due or "-",
                        _ok(not r.overdue, no=f"overdue {r.days_overdue} d") if r.due else "-",
                    )
                    for r in report.rotation
                ),
                raw=(6,),
                empty="No keys.",
            ),
            section_id="rotation-compliance",
        )
    )
    parts.append(
        section(
            "Key inventory",
            table(
                [
                    "key",
                    "owner",
                    "purpose",
                    "algorithm",
                    "level",
                    "state",
                    "versions",
                    "compromised",
                    "created",
                ],
                (
                    (
                        k.key_id,
                        k.owner,
                        k.purpose,
                        k.algorithm,
                        k.security_level,
                        k.state,
                        k.versions,
                        "yes" if k.compromised else "no",
                        k.created_at,
                    )
                    for k in report.inventory
                ),
                numeric=(6,),
                empty="No keys.",
            ),
            section_id="inventory",
        )
    )
    perf_rows = (
        (r.name, r.count, r.errors, f"{r.mean_ms:.2f}", _fmt_ms(r.p95_ms))
        for r in report.performance_routes
    )
    hsm_rows = (
        (r.name, r.count, r.errors, f"{r.mean_ms:.3f}", _fmt_ms(r.p95_ms))
        for r in report.performance_hsm
    )
    rate_labels, rate_requests, rate_errors, per = _downsample(report.request_rate)
    parts.append(
        section(
            "Performance",
            charts.line_chart(
                rate_labels,
                [(f"requests/{per}", rate_requests), (f"errors/{per}", rate_errors)],
                title=f"Request rate (requests per {per})",
            )
            + "<h3>Requests</h3>"
            + table(
                ["route", "count", "errors", "mean ms", "p95 ms (bucket bound)"],
                perf_rows,
                numeric=(1, 2, 3, 4),
                empty="No request metrics.",
            )
            + "<h3>HSM operations</h3>"
            + table(
                ["operation", "count", "errors", "mean ms", "p95 ms (bucket bound)"],
                hsm_rows,
                numeric=(1, 2, 3, 4),
                empty="No HSM metrics.",
            ),
            section_id="performance",
        )
    )
    if report.truncated:
        parts.append(
            section(
                "Truncated",
                table(
                    ["section", "rows left out"],
                    sorted(report.truncated.items()),
                    numeric=(1,),
                ),
            )
        )
    subtitle = f"{report.kms_id} \u00b7 period {period} \u00b7 generated {report.generated_at}"
    return page(report.title, subtitle, "".join(parts))
