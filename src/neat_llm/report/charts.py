"""Small inline SVG charts written by hand: no JavaScript, no fonts or files to fetch, every label
escaped. Each function returns one ``<svg>`` element as a string; it scales to its container's
width (viewBox) and carries a ``<title>`` so the chart has an accessible name."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

PALETTE = ["#d9480f", "#1c7ed6", "#2b8a3e", "#7048e8", "#c2255c", "#0b7285", "#e67700", "#495057"]
GREY = "#868e96"
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'


def _e(s) -> str:
    return escape(str(s), quote=True)


def _num(v: float) -> str:
    """Tick label: short, no trailing zeros."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.2g}" if a < 10 else f"{v:.0f}"
    return f"{v:.3g}"


CHAR_W = 6.2  # px per character of 11 px chart text (digits), for laying labels out


def tick_labels(values: list[float]) -> list[str]:
    """Labels for ticks: short (``_num``), but never the same text for two different values (1.165
    and 1.220 are not both "1.2"): more decimals until they differ."""
    labels = [_num(v) for v in values]
    for d in range(1, 7):
        if len(set(labels)) == len(set(values)):
            break
        labels = [f"{v:.{d}f}" for v in values]
    return labels


def spaced(positions: list[float], labels: list[str], gap: float = 6.0) -> list[int]:
    """Indices of the ticks to label so that no two centred labels overlap: left to right, a label is
    kept when it starts ``gap`` px after the last kept one ends (the first is always kept)."""
    keep, right = [], -math.inf
    for i in sorted(range(len(positions)), key=lambda j: positions[j]):
        half = CHAR_W * len(labels[i]) / 2
        if positions[i] - half >= right + gap:
            keep.append(i)
            right = positions[i] + half
    return keep


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


@dataclass
class Series:
    """One line. ``band``: (lower, upper) per x, drawn as a shaded area; ``dashed``: a reference line."""

    name: str
    xs: list[float]
    ys: list[float]
    color: str | None = None
    band: tuple[list[float], list[float]] | None = None
    dashed: bool = False
    markers: bool = True


@dataclass
class _Frame:
    width: int = 640
    height: int = 300
    left: int = 56
    right: int = 16
    top: int = 28
    bottom: int = 44
    parts: list[str] = field(default_factory=list)

    @property
    def pw(self) -> float:
        return self.width - self.left - self.right

    @property
    def ph(self) -> float:
        return self.height - self.top - self.bottom

    def svg(self, title: str, css_class: str) -> str:
        body = "".join(self.parts)
        # never drawn wider than its own size: the text keeps its 11 px instead of growing with the page
        return (f'<svg class="chart {css_class}" viewBox="0 0 {self.width} {self.height}" role="img" '
                f'style="max-width:{self.width}px" '
                f'xmlns="http://www.w3.org/2000/svg" {FONT} font-size="11"><title>{_e(title)}</title>{body}</svg>')


def _axes(f: _Frame, xlabel: str, ylabel: str) -> None:
    x0, y0 = f.left, f.top + f.ph
    f.parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + f.pw}" y2="{y0}" stroke="#adb5bd"/>')
    f.parts.append(f'<line x1="{x0}" y1="{f.top}" x2="{x0}" y2="{y0}" stroke="#adb5bd"/>')
    f.parts.append(f'<text x="{x0 + f.pw / 2:.1f}" y="{f.height - 6}" text-anchor="middle" fill="#495057">{_e(xlabel)}</text>')
    f.parts.append(f'<text transform="translate(13 {f.top + f.ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
                   f'fill="#495057">{_e(ylabel)}</text>')


def _legend_width(label: str) -> float:
    return 28 + 6.2 * len(label)


def _legend_rows(items: list[tuple[str, str, str]], f: _Frame) -> int:
    rows, x = 1, f.left
    for label, _, _ in items:
        w = _legend_width(label)
        if x > f.left and x + w > f.width - f.right:
            rows, x = rows + 1, f.left
        x += w
    return rows


def _legend(f: _Frame, items: list[tuple[str, str, str]]) -> None:
    """items: (label, color, kind) with kind in line / dashed / band / bar; laid out left to right
    above the plot, wrapping to more rows (the caller reserves f.top for them)."""
    x, y = f.left, 12
    for label, color, kind in items:
        w = _legend_width(label)
        if x > f.left and x + w > f.width - f.right:
            x, y = f.left, y + 15
        if kind == "band":
            f.parts.append(f'<rect x="{x}" y="{y - 6}" width="16" height="10" fill="{color}" opacity="0.25"/>')
        elif kind == "bar":
            f.parts.append(f'<rect x="{x}" y="{y - 6}" width="12" height="10" fill="{color}"/>')
        else:
            dash = ' stroke-dasharray="5 3"' if kind == "dashed" else ""
            f.parts.append(f'<line x1="{x}" y1="{y - 1}" x2="{x + 16}" y2="{y - 1}" stroke="{color}" stroke-width="2"{dash}/>')
        f.parts.append(f'<text x="{x + 20}" y="{y + 3}" fill="#343a40">{_e(label)}</text>')
        x += w


def _x_ticks(f: _Frame, ticks: list[float], X) -> None:
    """Every tick marked on the x axis; labels only where they do not run into each other."""
    labels = tick_labels(ticks)
    labelled = set(spaced([X(t) for t in ticks], labels))
    for i, t in enumerate(ticks):
        f.parts.append(f'<line x1="{X(t):.1f}" y1="{f.top + f.ph}" x2="{X(t):.1f}" y2="{f.top + f.ph + 4}" stroke="#adb5bd"/>')
        if i in labelled:
            f.parts.append(f'<text class="tick" x="{X(t):.1f}" y="{f.top + f.ph + 16}" text-anchor="middle" '
                           f'fill="#495057">{labels[i]}</text>')


def line_chart(series: list[Series], *, title: str, xlabel: str, ylabel: str, x_log: bool = False,
               y_range: tuple[float, float] | None = None, hlines: list[tuple[float, str]] = (),
               vlines: list[tuple[float, str]] = (), xticks: list[float] | None = None, highlight: tuple | None = None,
               width: int = 640, height: int = 300, css_class: str = "line") -> str:
    """Lines over a shared x axis (log scale with ``x_log``); ``hlines`` / ``vlines``: labelled
    reference lines; ``highlight``: (x, y, label) of one point drawn larger."""
    f = _Frame(width, height)
    legend = []
    for i, s in enumerate(series):
        s.color = s.color or PALETTE[i % len(PALETTE)]
        legend.append((s.name, s.color, "dashed" if s.dashed else "line"))
        if s.band:
            legend.append((f"{s.name} ±1 sd", s.color, "band"))
    show_legend = len(series) > 1 or any(s.band for s in series)
    if show_legend:
        f.top = 16 + 15 * _legend_rows(legend, f)
    xs_all = [x for s in series for x in s.xs if x is not None and math.isfinite(x) and (x > 0 or not x_log)]
    ys_all = [y for s in series for y in s.ys if y is not None and math.isfinite(y)]
    for s in series:
        if s.band:
            ys_all += [v for v in s.band[0] + s.band[1] if v is not None and math.isfinite(v)]
    ys_all += [y for y, _ in hlines]
    if not xs_all or not ys_all:
        return empty_chart(title, "no data", width, height)
    tx = (lambda v: math.log10(v)) if x_log else (lambda v: v)
    x_lo, x_hi = min(map(tx, xs_all)), max(map(tx, xs_all))
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    pad = 0.04 * (x_hi - x_lo)
    x_lo, x_hi = x_lo - pad, x_hi + pad
    if y_range:
        y_lo, y_hi = y_range
    else:
        y_lo, y_hi = min(ys_all), max(ys_all)
        span = (y_hi - y_lo) or abs(y_hi) or 1.0
        y_lo, y_hi = y_lo - 0.08 * span, y_hi + 0.08 * span
    X = lambda v: f.left + (tx(v) - x_lo) / (x_hi - x_lo) * f.pw  # noqa: E731
    Y = lambda v: f.top + (1 - (v - y_lo) / (y_hi - y_lo)) * f.ph  # noqa: E731
    yt = [t for t in nice_ticks(y_lo, y_hi) if y_lo <= t <= y_hi]
    for t, lab in zip(yt, tick_labels(yt)):
        f.parts.append(f'<line x1="{f.left}" y1="{Y(t):.1f}" x2="{f.left + f.pw}" y2="{Y(t):.1f}" stroke="#f1f3f5"/>'
                       f'<text x="{f.left - 6}" y="{Y(t) + 4:.1f}" text-anchor="end" fill="#495057">{lab}</text>')
    if xticks is None:
        xticks = sorted(set(xs_all)) if x_log or len(set(xs_all)) <= 12 else nice_ticks(min(xs_all), max(xs_all), 8)
    _x_ticks(f, [t for t in xticks if (t > 0 or not x_log) and x_lo <= tx(t) <= x_hi], X)
    _axes(f, xlabel, ylabel)
    for y, label in hlines:
        f.parts.append(f'<line x1="{f.left}" y1="{Y(y):.1f}" x2="{f.left + f.pw}" y2="{Y(y):.1f}" stroke="{GREY}" '
                       f'stroke-dasharray="3 3"/><text x="{f.left + f.pw - 4}" y="{Y(y) - 4:.1f}" text-anchor="end" '
                       f'fill="{GREY}">{_e(label)}</text>')
    for x, label in vlines:
        f.parts.append(f'<line x1="{X(x):.1f}" y1="{f.top}" x2="{X(x):.1f}" y2="{f.top + f.ph}" stroke="{GREY}" '
                       f'stroke-dasharray="3 3"/><text x="{X(x) + 4:.1f}" y="{f.top + 12}" fill="{GREY}">{_e(label)}</text>')
    for s in series:
        color = s.color
        pts = [(x, y) for x, y in zip(s.xs, s.ys) if x is not None and y is not None and math.isfinite(y)
               and (x > 0 or not x_log)]
        if s.band:
            lo_hi = [(x, lo, hi) for x, lo, hi in zip(s.xs, *s.band) if lo is not None and hi is not None
                     and (x > 0 or not x_log)]
            if lo_hi:
                poly = [f"{X(x):.1f},{Y(hi):.1f}" for x, _, hi in lo_hi] + \
                       [f"{X(x):.1f},{Y(lo):.1f}" for x, lo, _ in reversed(lo_hi)]
                f.parts.append(f'<polygon points="{" ".join(poly)}" fill="{color}" opacity="0.18"/>')
        if pts:
            dash = ' stroke-dasharray="6 4"' if s.dashed else ""
            d = " ".join(f"{'M' if j == 0 else 'L'}{X(x):.1f},{Y(y):.1f}" for j, (x, y) in enumerate(pts))
            f.parts.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            if s.markers:
                for x, y in pts:
                    f.parts.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.8" fill="{color}">'
                                   f'<title>{_e(s.name)}: {_num(x)} → {y:.4g}</title></circle>')
    if highlight:
        x, y, label = highlight
        f.parts.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="6" fill="none" stroke="#212529" stroke-width="2"/>'
                       f'<text x="{X(x):.1f}" y="{Y(y) - 10:.1f}" text-anchor="middle" font-weight="600" '
                       f'fill="#212529">{_e(label)}</text>')
    if show_legend:
        _legend(f, legend)
    return f.svg(title, css_class)


def bar_chart(labels: list, values: list[float], *, title: str, xlabel: str, ylabel: str,
              highlight: set | None = None, highlight_label: str = "", y_log: bool = False,
              value_labels: bool = False, width: int = 640, height: int = 260, color: str = PALETTE[1],
              vline: tuple[float, str] | None = None, css_class: str = "bar") -> str:
    """Vertical bars, one per label (``highlight``: labels drawn in the accent colour). ``y_log``:
    bar heights on a log10(1 + count) scale, for counts spanning orders of magnitude. ``vline``:
    (bar position as a fraction 0..1 of the axis, label) of a reference line."""
    f = _Frame(width, height)
    n = len(labels)
    if n == 0:
        return empty_chart(title, "no data", width, height)
    highlight = highlight or set()
    tr = (lambda v: math.log10(1 + max(v, 0))) if y_log else (lambda v: v)
    top = max([tr(v) for v in values] + [1e-12])
    lo = min(0.0, min(tr(v) for v in values))
    Y = lambda v: f.top + (1 - (tr(v) - lo) / (top - lo)) * f.ph  # noqa: E731
    if y_log:
        ticks = [t for t in (0, 1, 10, 100, 1000, 10_000, 100_000, 1_000_000) if tr(t) <= top * 1.0001]
    else:
        ticks = [t for t in nice_ticks(min(0.0, min(values)), max(values)) if tr(t) <= top * 1.0001]
    for t, lab in zip(ticks, tick_labels(ticks)):
        f.parts.append(f'<line x1="{f.left}" y1="{Y(t):.1f}" x2="{f.left + f.pw}" y2="{Y(t):.1f}" stroke="#f1f3f5"/>'
                       f'<text x="{f.left - 6}" y="{Y(t) + 4:.1f}" text-anchor="end" fill="#495057">{lab}</text>')
    slot = f.pw / n
    bw = max(1.0, slot * 0.78)
    every = max(1, math.ceil(n / 24))  # at most ~24 x labels
    for i, (lab, v) in enumerate(zip(labels, values)):
        x = f.left + i * slot + (slot - bw) / 2
        c = PALETTE[0] if lab in highlight else color
        y = Y(v)
        base = Y(0)
        f.parts.append(f'<rect x="{x:.1f}" y="{min(y, base):.1f}" width="{bw:.1f}" height="{abs(base - y):.1f}" '
                       f'fill="{c}"><title>{_e(lab)}: {_num(v) if isinstance(v, float) else _e(v)}</title></rect>')
        if value_labels and v:
            f.parts.append(f'<text x="{x + bw / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="9" '
                           f'fill="#495057">{_e(v)}</text>')
        if i % every == 0 or lab in highlight:
            f.parts.append(f'<text x="{x + bw / 2:.1f}" y="{f.top + f.ph + 14}" text-anchor="middle" '
                           f'fill="{PALETTE[0] if lab in highlight else "#495057"}">{_e(lab)}</text>')
    if vline is not None:
        frac, label = vline
        x = f.left + frac * f.pw
        f.parts.append(f'<line x1="{x:.1f}" y1="{f.top}" x2="{x:.1f}" y2="{f.top + f.ph}" stroke="#212529" '
                       f'stroke-dasharray="4 3"/><text x="{x - 4:.1f}" y="{f.top + 10}" text-anchor="end" '
                       f'fill="#212529">{_e(label)}</text>')
    _axes(f, xlabel, ylabel)
    if highlight and highlight_label:
        _legend(f, [(highlight_label, PALETTE[0], "bar")])
    return f.svg(title, css_class)


def histogram(counts: list[int], edges: list[float], *, title: str, xlabel: str, ylabel: str,
              marker: tuple[float, str] | None = None, width: int = 640, height: int = 260, color: str = GREY,
              css_class: str = "hist") -> str:
    """Bars of ``counts`` between ``edges`` (len(counts) + 1) on a numeric x axis, counts on a
    log10(1 + count) scale (scores pile up near 0 and thin out over orders of magnitude).
    ``marker``: (x, label) of a vertical reference line."""
    f = _Frame(width, height)
    if not counts:
        return empty_chart(title, "no data", width, height)
    lo, hi = edges[0], edges[-1]
    if hi <= lo:
        hi = lo + 1.0
    tr = lambda v: math.log10(1 + max(v, 0))  # noqa: E731
    top = max(tr(max(counts)), 1e-12)
    X = lambda v: f.left + (v - lo) / (hi - lo) * f.pw  # noqa: E731
    Y = lambda v: f.top + (1 - tr(v) / top) * f.ph  # noqa: E731
    for t in (0, 1, 10, 100, 1000, 10_000, 100_000, 1_000_000):
        if tr(t) <= top * 1.0001:
            f.parts.append(f'<line x1="{f.left}" y1="{Y(t):.1f}" x2="{f.left + f.pw}" y2="{Y(t):.1f}" stroke="#f1f3f5"/>'
                           f'<text x="{f.left - 6}" y="{Y(t) + 4:.1f}" text-anchor="end" fill="#495057">{_num(t)}</text>')
    xt = [t for t in nice_ticks(lo, hi, 8) if lo <= t <= hi]
    for t, lab in zip(xt, tick_labels(xt)):
        f.parts.append(f'<line x1="{X(t):.1f}" y1="{f.top + f.ph}" x2="{X(t):.1f}" y2="{f.top + f.ph + 4}" stroke="#adb5bd"/>'
                       f'<text class="tick" x="{X(t):.1f}" y="{f.top + f.ph + 16}" text-anchor="middle" fill="#495057">{lab}</text>')
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        if c:
            x0, x1 = X(a), X(b)
            f.parts.append(f'<rect x="{x0 + 0.5:.1f}" y="{Y(c):.1f}" width="{max(0.8, x1 - x0 - 1):.1f}" '
                           f'height="{Y(0) - Y(c):.1f}" fill="{color}"><title>{_num(a)} to {_num(b)}: {c:,}</title></rect>')
    if marker is not None and lo <= marker[0] <= hi:
        x = X(marker[0])
        f.parts.append(f'<line x1="{x:.1f}" y1="{f.top}" x2="{x:.1f}" y2="{f.top + f.ph}" stroke="{PALETTE[0]}" '
                       f'stroke-width="1.5" stroke-dasharray="4 3"/><text x="{x + 5:.1f}" y="{f.top + 10}" '
                       f'fill="{PALETTE[0]}">{_e(marker[1])}</text>')
    _axes(f, xlabel, ylabel)
    return f.svg(title, css_class)


def interval_chart(rows: list[tuple[str, list[tuple[str, float, float | None, float | None]]]], *, title: str,
                   xlabel: str, reference: tuple[float, str] | None = None, x_range: tuple[float, float] | None = None,
                   width: int = 640, css_class: str = "interval") -> str:
    """Horizontal dot-and-interval rows: rows = [(row label, [(condition, value, lo, hi), ...])];
    conditions keep their colour across rows. ``reference``: (x, label) of a vertical line."""
    conds = list(dict.fromkeys(c for _, items in rows for c, *_ in items))
    colors = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(conds)}
    row_h = 14 * max(1, len(conds)) + 14
    label_w = min(220, 16 + 6.4 * max([len(r) for r, _ in rows] + [4]))
    f = _Frame(width, 0, left=int(label_w), right=24)
    legend = [(c, colors[c], "line") for c in conds]
    f.top = 16 + 15 * _legend_rows(legend, f) + (14 if reference else 0)  # the reference's label above the rows
    f.height = f.top + len(rows) * row_h + 44
    vals = [v for _, items in rows for _, v, lo, hi in items for v in (v, lo, hi) if v is not None and math.isfinite(v)]
    if reference:
        vals.append(reference[0])
    if not vals:
        return empty_chart(title, "no data", width, 120)
    lo_, hi_ = x_range or (min(vals), max(vals))
    if x_range is None:
        span = (hi_ - lo_) or 1.0
        lo_, hi_ = lo_ - 0.06 * span, hi_ + 0.06 * span
    X = lambda v: f.left + (v - lo_) / (hi_ - lo_) * f.pw  # noqa: E731
    y0 = f.top + f.ph
    xt = [t for t in nice_ticks(lo_, hi_, 7) if lo_ <= t <= hi_]
    for t, lab in zip(xt, tick_labels(xt)):
        f.parts.append(f'<line x1="{X(t):.1f}" y1="{f.top}" x2="{X(t):.1f}" y2="{y0}" stroke="#f1f3f5"/>'
                       f'<text class="tick" x="{X(t):.1f}" y="{y0 + 16}" text-anchor="middle" fill="#495057">{lab}</text>')
    if reference:
        x, label = reference
        f.parts.append(f'<line x1="{X(x):.1f}" y1="{f.top}" x2="{X(x):.1f}" y2="{y0}" stroke="{GREY}" '
                       f'stroke-dasharray="4 3"/><text x="{X(x):.1f}" y="{f.top - 4}" text-anchor="middle" fill="{GREY}">'
                       f'{_e(label)}</text>')
    for r, (label, items) in enumerate(rows):
        top = f.top + r * row_h
        if r:
            f.parts.append(f'<line x1="8" y1="{top:.1f}" x2="{f.left + f.pw}" y2="{top:.1f}" stroke="#e9ecef"/>')
        f.parts.append(f'<text x="{f.left - 10}" y="{top + row_h / 2 + 4:.1f}" text-anchor="end" fill="#212529">'
                       f'{_e(label)}</text>')
        for j, (cond, v, lo, hi) in enumerate(items):
            y = top + 10 + j * 14
            c = colors[cond]
            if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
                f.parts.append(f'<line x1="{X(lo):.1f}" y1="{y:.1f}" x2="{X(hi):.1f}" y2="{y:.1f}" stroke="{c}" '
                               f'stroke-width="2" opacity="0.6"/>')
            if v is not None and math.isfinite(v):
                f.parts.append(f'<circle cx="{X(v):.1f}" cy="{y:.1f}" r="4" fill="{c}"><title>{_e(label)}, '
                               f'{_e(cond)}: {v:.4g}</title></circle>')
    f.parts.append(f'<line x1="{f.left}" y1="{y0}" x2="{f.left + f.pw}" y2="{y0}" stroke="#adb5bd"/>')
    f.parts.append(f'<text x="{f.left + f.pw / 2:.1f}" y="{f.height - 6}" text-anchor="middle" fill="#495057">{_e(xlabel)}</text>')
    _legend(f, legend)
    return f.svg(title, css_class)


def empty_chart(title: str, message: str, width: int = 640, height: int = 120) -> str:
    return (f'<svg class="chart empty" viewBox="0 0 {width} {height}" role="img" xmlns="http://www.w3.org/2000/svg" '
            f'{FONT} font-size="12"><title>{_e(title)}</title><text x="{width / 2}" y="{height / 2}" '
            f'text-anchor="middle" fill="{GREY}">{_e(message)}</text></svg>')
