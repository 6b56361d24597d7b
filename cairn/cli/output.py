"""Text for humans: aligned tables, ages, sizes and times."""

from __future__ import annotations

import datetime
from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], empty: str = "(none)") -> str:
    """Left-aligned columns under upper-case C{headers}; C{empty} if there are no rows."""
    if not rows:
        return empty
    cells = [[str(h).upper() for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def duration(seconds: float | None) -> str:
    """C{3725} -> C{"1h 2m"}; C{None} -> C{"-"}."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def size(count: int | None) -> str:
    """Bytes in the largest unit that keeps a number of at least 1 (1000-based, like CAIRN_* sizes)."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


def when(timestamp: float | None) -> str:
    """A Unix time as C{YYYY-MM-DD HH:MM:SS UTC}; C{None} -> C{"never"}."""
    if timestamp is None:
        return "never"
    moment = datetime.datetime.fromtimestamp(float(timestamp), tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
