"""
QR codes of pairing links (segno: no image library needed).

    print(qr_terminal(link))          # cairn-server pair --link --qr
    open("pair.png", "wb").write(qr_png(link))
"""

import io

import segno

#: Error correction: M recovers ~15 % of a damaged or glared code.
ERROR = "m"


def _make(text: str):
    return segno.make(text, error=ERROR, micro=False)


def qr_terminal(text: str, compact: bool = True) -> str:
    """
    C{text} as a QR code drawn for a terminal.

    @param compact: two rows per line with half blocks (fits small
        terminals); otherwise ANSI-coloured full rows.
    """
    out = io.StringIO()
    _make(text).terminal(out=out, compact=compact)
    return out.getvalue()


def qr_png(text: str, scale: int = 8) -> bytes:
    """C{text} as a PNG image."""
    out = io.BytesIO()
    _make(text).save(out, kind="png", scale=scale, border=4)
    return out.getvalue()


def qr_svg(text: str, scale: int = 8) -> bytes:
    """C{text} as an SVG document (UTF-8)."""
    out = io.BytesIO()
    _make(text).save(out, kind="svg", scale=scale, border=4)
    return out.getvalue()
