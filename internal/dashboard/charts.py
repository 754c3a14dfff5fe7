"""Server-drawn SVG charts (no JavaScript, so the page's CSP can forbid scripts).

Every label goes through :func:`markupsafe.escape`; colours and numbers are ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup, escape

__all__ = ["PALETTE", "line_chart", "stacked_bars"]

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
_W, _H, _PAD_L, _PAD_B, _PAD_T = 640, 200, 44, 22, 10


def _axis(max_value: float, start: datetime | None, end: datetime | None) -> list[str]:
    parts = [
        f'<line x1="{_PAD_L}" y1="{_H - _PAD_B}" x2="{_W}" y2="{_H - _PAD_B}" stroke="#9ca3af"/>',
        f'<line x1="{_PAD_L}" y1="{_PAD_T}" x2="{_PAD_L}" y2="{_H - _PAD_B}" stroke="#9ca3af"/>',
        f'<text x="{_PAD_L - 4}" y="{_PAD_T + 8}" text-anchor="end" font-size="10">'
        f"{escape(_fmt(max_value))}</text>",
        f'<text x="{_PAD_L - 4}" y="{_H - _PAD_B}" text-anchor="end" font-size="10">0</text>',
    ]
    if start is not None and end is not None:
        parts.append(
            f'<text x="{_PAD_L}" y="{_H - 6}" font-size="10">{escape(start.strftime("%H:%M"))}</text>'
            f'<text x="{_W}" y="{_H - 6}" text-anchor="end" font-size="10">'
            f"{escape(end.strftime('%H:%M'))}</text>"
        )
    return parts


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _legend(names: Sequence[str]) -> str:
    items = "".join(
        '<span class="legend-item"><svg width="10" height="10" aria-hidden="true">'
        f'<rect width="10" height="10" '
        f'fill="{PALETTE[i % len(PALETTE)]}"/></svg> {escape(name)}</span>'
        for i, name in enumerate(names)
    )
    return f'<div class="legend">{items}</div>'


def line_chart(series: dict[str, list[tuple[datetime, float]]], *, title: str) -> Markup:
    """One polyline per series over a shared time axis, with a legend."""
    points = [p for values in series.values() for p in values]
    if not points:
        return Markup('<p class="empty">{}</p>').format(f"no data for {title}")
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    span = max((t1 - t0).total_seconds(), 1.0)
    top = max(max(v for _, v in points), 1.0)
    width, height = _W - _PAD_L, _H - _PAD_B - _PAD_T
    parts = _axis(top, t0, t1)
    for i, values in enumerate(series.values()):
        coords = " ".join(
            f"{_PAD_L + (t - t0).total_seconds() / span * width:.1f},{_H - _PAD_B - v / top * height:.1f}"
            for t, v in sorted(values)
        )
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>')
    svg = (
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}">'
        + "".join(parts)
        + "</svg>"
    )
    return Markup(svg + _legend(list(series)))  # noqa: S704 (every label escaped above)


def stacked_bars(
    buckets: list[tuple[datetime, dict[str, int]]], keys: Sequence[str], *, title: str
) -> Markup:
    """One bar per time bucket, stacked by ``keys`` (e.g. final statuses)."""
    if not buckets:
        return Markup('<p class="empty">{}</p>').format(f"no data for {title}")
    top = max(max(sum(counts.values()) for _, counts in buckets), 1)
    width, height = _W - _PAD_L, _H - _PAD_B - _PAD_T
    bar = width / len(buckets)
    parts = _axis(top, buckets[0][0], buckets[-1][0])
    for n, (_, counts) in enumerate(buckets):
        y = float(_H - _PAD_B)
        for i, key in enumerate(keys):
            value = counts.get(key, 0)
            if not value:
                continue
            h = value / top * height
            y -= h
            parts.append(
                f'<rect x="{_PAD_L + n * bar + 0.5:.1f}" y="{y:.1f}" width="{max(bar - 1, 0.5):.1f}" '
                f'height="{h:.1f}" fill="{PALETTE[i % len(PALETTE)]}"/>'
            )
    svg = (
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}">'
        + "".join(parts)
        + "</svg>"
    )
    return Markup(svg + _legend(list(keys)))  # noqa: S704 (every label escaped above)
