"""Server-rendered SVG bar charts of a key's hourly usage (no script, no build step).

Each hour is one ``<g class="hour">`` with its figures in ``data-`` attributes and a ``<title>``
(the tooltip); accepted requests are the lower bar, refusals stacked on top. Geometry is written in
SVG attributes and colours come from console.css classes, so the console's CSP (no inline styles,
no inline script) is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from keygate.domain.usage import HourCount

HEIGHT = 60  # plot height, in SVG units
AXIS = 14  # room for the labels under the bars


def _label(hours: Sequence[HourCount]) -> str:
    requests = sum(h.requests for h in hours)
    refusals = sum(h.refusals for h in hours)
    return f"{requests} requests and {refusals} refusals in the last {len(hours)} hours"


def usage_chart(hours: Sequence[HourCount], chart_id: str, bar: int = 6, gap: int = 1, small: bool = False) -> Markup:
    """An SVG of ``hours`` (oldest first): one stacked bar per hour, scaled to the busiest hour."""
    step = bar + gap
    width = max(len(hours) * step, 1)
    peak = max((h.requests + h.refusals for h in hours), default=0)
    scale = HEIGHT / peak if peak else 0.0
    height = HEIGHT + (0 if small else AXIS)
    parts = [
        f'<svg class="usage-chart{" small" if small else ""}" id="{escape(chart_id)}" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" preserveAspectRatio="none" '
        f'aria-label="{escape(_label(hours))}" data-peak="{peak}" xmlns="http://www.w3.org/2000/svg">',
        f'<line class="baseline" x1="0" y1="{HEIGHT}" x2="{width}" y2="{HEIGHT}"/>',
    ]
    for i, h in enumerate(hours):
        x = i * step
        req_h = round(h.requests * scale, 2)
        ref_h = round(h.refusals * scale, 2)
        when = h.hour.strftime("%Y-%m-%d %H:00 UTC")
        parts.append(
            f'<g class="hour" data-hour="{h.hour.isoformat()}" data-requests="{h.requests}" data-refusals="{h.refusals}">'
            f"<title>{escape(when)}: {h.requests} requests, {h.refusals} refusals</title>"
            f'<rect class="hit" x="{x}" y="0" width="{step}" height="{HEIGHT}"/>'
        )
        if req_h:
            parts.append(f'<rect class="requests" x="{x}" y="{round(HEIGHT - req_h, 2)}" width="{bar}" height="{req_h}"/>')
        if ref_h:
            parts.append(f'<rect class="refusals" x="{x}" y="{round(HEIGHT - req_h - ref_h, 2)}" width="{bar}" height="{ref_h}"/>')
        parts.append("</g>")
    if not small and hours:
        days = len(hours) > 48
        for i, h in enumerate(hours):
            # A label every 6 hours (24-hour chart) or at each midnight (7-day chart), in UTC.
            if (days and h.hour.hour == 0) or (not days and h.hour.hour % 6 == 0):
                text = h.hour.strftime("%a %d") if days else h.hour.strftime("%H:00")
                parts.append(f'<text class="axis" x="{i * step}" y="{height - 2}">{escape(text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
