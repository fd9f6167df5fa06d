"""Line plots as inline SVG text, for the report: no plotting library, and the page stays one file.

    line_plot([Series("likeness", [(25, 0.1), (50, 0.4)])], x_label="step", y_range=(0, 1))
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class Series:
    """One line: (x, y) points in x order; `dash` draws it dashed, `dots` marks each point."""

    label: str
    points: list[tuple[float, float]]
    colour: str | None = None
    dash: bool = False
    dots: bool = True
    opacity: float = 1.0


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi], at most `count` intervals (steps of 1, 2, 2.5 or 5 times a power of ten)."""
    if hi <= lo:
        hi = lo + 1.0
    power = 10 ** math.floor(math.log10((hi - lo) / count))

    def intervals(step: float) -> int:
        return math.ceil(hi / step - 1e-9) - math.floor(lo / step + 1e-9)

    step = next(m * power for m in (1, 2, 2.5, 5, 10, 20) if intervals(m * power) <= count)
    first = math.floor(lo / step + 1e-9)
    ticks = [round((first + i) * step, 12) for i in range(intervals(step) + 1)]
    return ticks


def _label(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def line_plot(series: list[Series], title: str = "", x_label: str = "", y_range: tuple[float, float] | None = None,
              hlines: list[tuple[float, str]] = (), width: int = 360, height: int = 220,
              x_range: tuple[float, float] | None = None) -> str:
    """An <svg> element `width` x `height` pixels plus its legend below: axes with round ticks, one polyline
    per series, dashed horizontal `hlines` (value, label) e.g. a bound. Empty series are skipped; no points
    at all gives a note."""
    drawn = [s for s in series if s.points]
    if not drawn:
        return f'<svg width="{width}" height="40"><text x="4" y="24" font-size="12">{html.escape(title)}: no data</text></svg>'
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points] + [v for v, _ in hlines]
    x_ticks = nice_ticks(*(x_range or (min(xs), max(xs))))
    y_ticks = nice_ticks(*(y_range or (min(ys), max(ys))))
    left, right, top, bottom = 44, 10, 22, 34
    pw, ph = width - left - right, height - top - bottom
    height += 14 * ((len(drawn) + len(hlines) + 1) // 2) + 4  # the legend, below the plot

    def px(x):
        return left + (x - x_ticks[0]) / ((x_ticks[-1] - x_ticks[0]) or 1) * pw

    def py(y):
        return top + ph - (y - y_ticks[0]) / ((y_ticks[-1] - y_ticks[0]) or 1) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="10"><text x="{left}" y="14" font-size="12" font-weight="600">{html.escape(title)}</text>']
    for t in y_ticks:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{left - 4}" y="{py(t) + 3:.1f}" text-anchor="end">{_label(t)}</text>')
    for t in x_ticks:
        out.append(f'<text x="{px(t):.1f}" y="{top + ph + 12}" text-anchor="middle">{_label(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 24}" text-anchor="middle">{html.escape(x_label)}</text>')
    legend = []
    for i, s in enumerate(drawn):
        colour = s.colour or COLOURS[i % len(COLOURS)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="4 3"' if s.dash else ""
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.6"{dash} '
                   f'opacity="{s.opacity}"/>')
        if s.dots:
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in s.points]
        legend.append((s.label, colour, s.dash))
    for value, label in hlines:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(value):.1f}" y2="{py(value):.1f}" stroke="#888" '
                   'stroke-dasharray="2 3"/>')
        legend.append((label, "#888", True))
    for i, (label, colour, dash) in enumerate(legend):
        x, y = left + (i % 2) * pw / 2, top + ph + 38 + 14 * (i // 2)
        style = ' stroke-dasharray="4 3"' if dash else ""
        out.append(f'<line x1="{x:.1f}" x2="{x + 14:.1f}" y1="{y - 3}" y2="{y - 3}" stroke="{colour}" stroke-width="2"{style}/>'
                   f'<text x="{x + 18:.1f}" y="{y}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)
