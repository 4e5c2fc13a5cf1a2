"""Inline SVG charts for the dashboard and reports: no JavaScript, nothing fetched.

Each function returns one ``<figure>`` holding an ``<svg>`` element meant to be inlined in
an HTML5 page (where the SVG namespace is implied, so no ``xmlns`` URL appears). Every
label passes through ``html.escape``; numbers are formatted here. Charts carry a
``<title>`` and ``aria-label`` so they read as images with a name.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777")
LEVEL_COLORS = {
    "info": "#2563eb",
    "warning": "#d97706",
    "error": "#dc2626",
    "critical": "#7f1d1d",
}
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}"


def _svg_open(title: str, width: int, height: int, css_class: str) -> str:
    return (
        f'<figure class="chart {css_class}"><svg role="img" aria-label="{_e(title)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'preserveAspectRatio="xMinYMin meet"><title>{_e(title)}</title>'
    )


def _svg_close(caption: str) -> str:
    return f"</svg><figcaption>{_e(caption)}</figcaption></figure>"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return float(step * exponent)
    return float(10 * exponent)


def _empty(title: str, width: int, height: int, css_class: str) -> str:
    return (
        _svg_open(title, width, height, css_class)
        + f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle" {_FONT} '
        f'fill="#6b7280">no data</text>' + _svg_close(title)
    )


def line_chart(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    width: int = 640,
    height: int = 220,
) -> str:
    """Lines over shared x labels (one value per label per series)."""
    if not labels or not series:
        return _empty(title, width, height, "line")
    left, right, top, bottom = 48, 12, 12, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = _nice_max(max((max(v, default=0.0) for _, v in series), default=0.0))
    n = len(labels)

    def x(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h - plot_h * (v / top_value)

    parts = [_svg_open(title, width, height, "line")]
    for step in range(5):
        value = top_value * step / 4
        yy = y(value)
        parts.append(
            f'<line x1="{left}" y1="{yy:.1f}" x2="{width - right}" y2="{yy:.1f}" '
            f'stroke="#e5e7eb"/><text x="{left - 4}" y="{yy + 4:.1f}" text-anchor="end" '
            f'{_FONT} fill="#374151">{_e(_num(value))}</text>'
        )
    ticks = sorted({0, n - 1, *range(0, n, max(1, n // 6))})
    for i in ticks:
        anchor = "end" if i == n - 1 and n > 1 else "start" if i == 0 and n > 1 else "middle"
        parts.append(
            f'<text x="{x(i):.1f}" y="{height - bottom + 14}" text-anchor="{anchor}" {_FONT} '
            f'fill="#374151">{_e(labels[i])}</text>'
        )
    for index, (name, values) in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values[:n]))
        parts.append(
            f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2" '
            f'points="{points}"><title>{_e(name)}</title></polyline>'
        )
        lx = left + index * 140
        parts.append(
            f'<rect x="{lx}" y="{height - 16}" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14}" y="{height - 7}" {_FONT} fill="#111827">{_e(name)}</text>'
        )
    parts.append(_svg_close(title))
    return "".join(parts)


def bar_chart(
    items: Sequence[tuple[str, float]],
    *,
    title: str,
    width: int = 640,
    colors: Sequence[str] | None = None,
    unit: str = "",
) -> str:
    """Horizontal bars, one per (label, value), in the given order."""
    if not items:
        return _empty(title, width, 80, "bar")
    row, label_w, right = 22, 200, 70
    height = row * len(items) + 12
    top_value = _nice_max(max(v for _, v in items))
    plot_w = width - label_w - right
    parts = [_svg_open(title, width, height, "bar")]
    for i, (label, value) in enumerate(items):
        color = (colors[i % len(colors)] if colors else None) or PALETTE[0]
        y = 6 + i * row
        w = max(1.0, plot_w * value / top_value) if value > 0 else 0.0
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" {_FONT} '
            f'fill="#111827">{_e(label)}</text>'
            f'<rect class="bar" x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row - 6}" '
            f'fill="{color}"><title>{_e(label)}: {_e(_num(value))}{_e(unit)}</title></rect>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" {_FONT} '
            f'fill="#374151">{_e(_num(value))}{_e(unit)}</text>'
        )
    parts.append(_svg_close(title))
    return "".join(parts)


def stacked_columns(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    width: int = 640,
    height: int = 220,
) -> str:
    """Vertical columns per label, the series stacked (e.g. allowed / denied per day)."""
    if not labels or not series:
        return _empty(title, width, height, "columns")
    left, right, top, bottom = 48, 12, 12, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(labels)
    totals = [sum(values[i] for _, values in series) for i in range(n)]
    top_value = _nice_max(max(totals, default=0.0))
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.7)
    parts = [_svg_open(title, width, height, "columns")]
    for step in range(5):
        value = top_value * step / 4
        yy = top + plot_h - plot_h * value / top_value
        parts.append(
            f'<line x1="{left}" y1="{yy:.1f}" x2="{width - right}" y2="{yy:.1f}" '
            f'stroke="#e5e7eb"/><text x="{left - 4}" y="{yy + 4:.1f}" text-anchor="end" '
            f'{_FONT} fill="#374151">{_e(_num(value))}</text>'
        )
    for i in range(n):
        base = float(top + plot_h)
        x = left + i * slot + (slot - bar_w) / 2
        for index, (name, values) in enumerate(series):
            v = values[i]
            if v <= 0:
                continue
            h = plot_h * v / top_value
            base -= h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{PALETTE[index % len(PALETTE)]}">'
                f"<title>{_e(labels[i])} {_e(name)}: {_e(_num(v))}</title></rect>"
            )
    for i in sorted({0, n - 1, *range(0, n, max(1, n // 6))}):
        parts.append(
            f'<text x="{left + i * slot + slot / 2:.1f}" y="{height - bottom + 14}" '
            f'text-anchor="middle" {_FONT} fill="#374151">{_e(labels[i])}</text>'
        )
    for index, (name, _) in enumerate(series):
        lx = left + index * 140
        parts.append(
            f'<rect x="{lx}" y="{height - 16}" width="10" height="10" '
            f'fill="{PALETTE[index % len(PALETTE)]}"/>'
            f'<text x="{lx + 14}" y="{height - 7}" {_FONT} fill="#111827">{_e(name)}</text>'
        )
    parts.append(_svg_close(title))
    return "".join(parts)


def ratio_gauge(ratio: float, *, title: str, size: int = 160) -> str:
    """A ring filled to ``ratio`` (0..1), the percentage in the middle."""
    ratio = min(1.0, max(0.0, ratio))
    r = size / 2 - 14
    c = size / 2
    circumference = 2 * math.pi * r
    color = "#16a34a" if ratio >= 0.95 else "#d97706" if ratio >= 0.8 else "#dc2626"
    return (
        _svg_open(title, size, size, "gauge")
        + f'<circle cx="{c}" cy="{c}" r="{r:.1f}" fill="none" stroke="#e5e7eb" '
        f'stroke-width="14"/>'
        f'<circle class="gauge-value" cx="{c}" cy="{c}" r="{r:.1f}" fill="none" '
        f'stroke="{color}" stroke-width="14" '
        f'stroke-dasharray="{circumference * ratio:.2f} {circumference:.2f}" '
        f'transform="rotate(-90 {c} {c})"/>'
        f'<text x="{c}" y="{c + 7}" text-anchor="middle" font-family="system-ui, sans-serif" '
        f'font-size="22" font-weight="600" fill="#111827">{ratio * 100:.0f}%</text>'
        + _svg_close(title)
    )
