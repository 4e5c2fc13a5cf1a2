"""Client-side rendering of a compliance report fetched as JSON (``kms report``).

``render_report(data, fmt)`` validates the ``kms-compliance-report/v1`` document (unknown or
missing fields are refused with ``ReportFormatError``) and renders it as pretty JSON or as
the same self-contained HTML page the enclave serves (inline CSS and SVG charts, no script,
no external URL). The renderers are the enclave's pure ones (``enclave.reports``: no I/O, no
key material), so the client and the server draw the same page.
"""

from __future__ import annotations

from typing import Any, Literal

from enclave.reports.html import render_report_html, render_report_json
from enclave.reports.model import ReportData, ReportFormatError

ReportFormat = Literal["json", "html"]
FORMATS: tuple[ReportFormat, ...] = ("json", "html")

__all__ = ["FORMATS", "ReportFormat", "ReportFormatError", "render_report"]


def render_report(data: dict[str, Any], fmt: str) -> bytes:
    """``data``: the JSON the enclave returned for ``/v1/reports/compliance``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r} (expected one of {', '.join(FORMATS)})")
    report = ReportData.from_dict(data)
    if fmt == "json":
        return render_report_json(report)
    return render_report_html(report).encode("utf-8")
