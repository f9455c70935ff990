"""Charts drawn by the server as inline SVG: no script, no font or library from the internet."""

from __future__ import annotations

from html import escape
from typing import Sequence

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2")
BUCKET_COLOURS = ("#16a34a", "#facc15", "#f59e0b", "#ea580c", "#dc2626", "#991b1b", "#7f1d1d")


def _short(value: float) -> str:
    magnitude = abs(value)
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _frame(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img" aria-label="{escape(title)}" class="chart">'
            f'<title>{escape(title)}</title>{"".join(body)}</svg>')


def bars(labels: Sequence[str], values: Sequence[float], title: str, *, colours: Sequence[str] = BUCKET_COLOURS,
         unit_divisor: float = 100.0, width: int = 520, height: int = 240) -> str:
    """Vertical bars, one per label (money in minor units shown in major units)."""
    left, bottom, top = 50, 30, 20
    plot_h = height - bottom - top
    scaled = [value / unit_divisor for value in values]
    peak = max([abs(v) for v in scaled] + [1.0])
    step = (width - left - 10) / max(len(labels), 1)
    body = [f'<line x1="{left}" y1="{height - bottom}" x2="{width - 5}" y2="{height - bottom}" stroke="#999"/>',
            f'<text x="{left - 5}" y="{top + 4}" font-size="10" text-anchor="end">{_short(peak)}</text>',
            f'<text x="{left - 5}" y="{height - bottom}" font-size="10" text-anchor="end">0</text>']
    for index, (label, value) in enumerate(zip(labels, scaled)):
        bar_h = max(abs(value) / peak * plot_h, 0)
        x = left + index * step + step * 0.15
        y = height - bottom - bar_h
        colour = colours[index % len(colours)]
        body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * 0.7:.1f}" height="{bar_h:.1f}" fill="{colour}">'
                    f'<title>{escape(label)}: {_short(value)}</title></rect>')
        body.append(f'<text x="{x + step * 0.35:.1f}" y="{height - bottom + 14}" font-size="10" '
                    f'text-anchor="middle">{escape(label)}</text>')
        body.append(f'<text x="{x + step * 0.35:.1f}" y="{y - 3:.1f}" font-size="9" '
                    f'text-anchor="middle">{_short(value)}</text>')
    return _frame(width, height, title, body)


def lines(labels: Sequence[str], series: dict[str, Sequence[float | None]], title: str, *,
          width: int = 520, height: int = 240) -> str:
    """One polyline per series over the labels (None = a gap); a legend on top."""
    left, bottom, top = 45, 30, 30
    plot_h, plot_w = height - bottom - top, width - left - 15
    values = [v for points in series.values() for v in points if v is not None]
    peak = max(values + [1.0])
    floor = min(values + [0.0])
    span = (peak - floor) or 1.0
    step = plot_w / max(len(labels) - 1, 1)

    def y_of(value: float) -> float:
        return top + plot_h - (value - floor) / span * plot_h

    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#999"/>',
            f'<text x="{left - 5}" y="{top + 4}" font-size="10" text-anchor="end">{_short(peak)}</text>',
            f'<text x="{left - 5}" y="{top + plot_h}" font-size="10" text-anchor="end">{_short(floor)}</text>']
    for index, label in enumerate(labels):
        if len(labels) <= 13 or index % 2 == 0:
            body.append(f'<text x="{left + index * step:.1f}" y="{height - 10}" font-size="9" '
                        f'text-anchor="middle">{escape(label)}</text>')
    for number, (name, points) in enumerate(series.items()):
        colour = PALETTE[number % len(PALETTE)]
        segment: list[str] = []
        segments = []
        for index, value in enumerate(points):
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{left + index * step:.1f},{y_of(value):.1f}")
            body.append(f'<circle cx="{left + index * step:.1f}" cy="{y_of(value):.1f}" r="2.5" fill="{colour}">'
                        f'<title>{escape(name)} {escape(labels[index])}: {_short(value)}</title></circle>')
        if segment:
            segments.append(segment)
        for points_text in segments:
            body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(points_text)}"/>')
        body.append(f'<rect x="{left + number * 120}" y="6" width="10" height="10" fill="{colour}"/>'
                    f'<text x="{left + number * 120 + 14}" y="15" font-size="11">{escape(name)}</text>')
    return _frame(width, height, title, body)


def usage_bars(rows: Sequence[tuple[str, float, float]], title: str, *, width: int = 520) -> str:
    """Horizontal bars: exposure against the credit limit (a tick) per customer."""
    row_h, left = 22, 110
    height = row_h * len(rows) + 20
    peak = max([max(exposure, limit) for _, exposure, limit in rows] + [1.0])
    plot_w = width - left - 60
    body = []
    for index, (label, exposure, limit) in enumerate(rows):
        y = 10 + index * row_h
        bar_w = max(exposure, 0) / peak * plot_w
        colour = "#dc2626" if exposure > limit else "#2563eb"
        body.append(f'<text x="{left - 5}" y="{y + 13}" font-size="10" text-anchor="end">{escape(label)}</text>')
        body.append(f'<rect x="{left}" y="{y + 3}" width="{bar_w:.1f}" height="{row_h - 8}" fill="{colour}">'
                    f'<title>{escape(label)}: exposure {_short(exposure / 100)}, limit {_short(limit / 100)}'
                    f'</title></rect>')
        limit_x = left + max(limit, 0) / peak * plot_w
        body.append(f'<line x1="{limit_x:.1f}" y1="{y}" x2="{limit_x:.1f}" y2="{y + row_h - 2}" stroke="#111" '
                    f'stroke-width="2"/>')
        body.append(f'<text x="{left + bar_w + 4:.1f}" y="{y + 13}" font-size="9">{_short(exposure / 100)}</text>')
    return _frame(width, height, title, body)
