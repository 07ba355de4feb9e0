"""QR codes for TOTP enrolment, drawn on the server as inline SVG (no image request, no script)."""

from __future__ import annotations

import qrcode
import qrcode.image.svg
from markupsafe import Markup


def qr_svg(text: str, label: str) -> Markup:
    """An ``<svg>`` element for ``text``; ``label`` is its accessible name."""
    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, box_size=10, border=4)
    svg = image.to_string(encoding="unicode")
    svg = svg[svg.index("<svg"):]  # drop the XML declaration: the element sits inside an HTML page
    safe_label = Markup.escape(label)
    svg = svg.replace("<svg ", f'<svg role="img" aria-label="{safe_label}" class="qr" ', 1)
    return Markup(svg)
