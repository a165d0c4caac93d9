"""bench/chart.py: the SVG chart of throughput and latency by path, standard library only.

Small multiples, one panel per metric and a block of panels per layout, one bar per path:
the median, a whisker from min to max, and the value. Latency panels draw p99 as a pale
bar behind the p50 bar.
"""

from html import escape

PANEL_W, COLS = 300, 4
LABEL_W, TOP, BAR_H, GAP = 64, 26, 16, 5
VALUE_W = 100  # room right of the longest bar for its label
COLORS = {"direct": "#4d4d4d", "capstan": "#d95f02"}
OTHER = "#7b8fb0"
BYTES_ONLY = {"bore", "rathole", "ssh"}

# (title, metric, pale metric drawn behind or None, unit)
PANELS = [
    ("Keep-alive GET 1 KiB (req/s)", "ka_rps", None, "rps"),
    ("New connection per GET (req/s)", "nc_rps", None, "rps"),
    ("GET 10 MiB (MiB/s)", "get_10m", None, "mibs"),
    ("WebSocket pipelined 32 B (msgs/s)", "ws_pipe", None, "rps"),
    ("Keep-alive latency p50 / p99", "ka_p50", "ka_p99", "us"),
    ("New-connection latency p50 / p99", "nc_p50", "nc_p99", "us"),
    ("WebSocket RTT 32 B p50 / p99", "rtt_32_p50", "rtt_32_p99", "us"),
    ("SSE delay per event p50 / p99", "sse_p50", "sse_p99", "us"),
]


def short(value, unit):
    if unit == "us":
        return f"{value / 1000:.1f} ms" if value >= 1000 else f"{value:.0f} µs"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:,.0f}"


def panel(x0, y0, title, metric, pale, unit, data, paths):
    out = [f'<text x="{x0}" y="{y0 + 16}" font-size="13" font-weight="bold">{escape(title)}</text>']
    values = [data.get(p, {}).get(m) for p in paths for m in (metric, pale) if m]
    top = max([v["max"] for v in values if v] or [1])
    scale = (PANEL_W - LABEL_W - VALUE_W) / top
    for i, path in enumerate(paths):
        y = y0 + TOP + i * (BAR_H + GAP)
        name = path + ("†" if path in BYTES_ONLY else "")
        out.append(f'<text x="{x0 + LABEL_W - 6}" y="{y + 13}" font-size="11" text-anchor="end">{name}</text>')
        stats = data.get(path, {}).get(metric)
        if not stats:
            out.append(f'<text x="{x0 + LABEL_W + 4}" y="{y + 13}" font-size="11" fill="#999">not measured</text>')
            continue
        color = COLORS.get(path, OTHER)
        x = x0 + LABEL_W
        back = data.get(path, {}).get(pale) if pale else None
        if back:
            out.append(f'<rect x="{x}" y="{y}" width="{back["median"] * scale:.1f}" height="{BAR_H}" '
                       f'fill="{color}" opacity="0.3"/>')
        width = stats["median"] * scale
        out.append(f'<rect x="{x}" y="{y + (4 if back else 0)}" width="{width:.1f}" '
                   f'height="{BAR_H - (8 if back else 0)}" fill="{color}"/>')
        lo, hi = x + stats["min"] * scale, x + stats["max"] * scale
        mid = y + BAR_H / 2
        out.append(f'<path d="M{lo:.1f} {mid}H{hi:.1f}M{lo:.1f} {mid - 4}V{mid + 4}M{hi:.1f} {mid - 4}V{mid + 4}" '
                   f'stroke="#222" stroke-width="1"/>')
        label = short(stats["median"], unit) + (f" / {short(back['median'], unit)}" if back else "")
        end = max(hi, x + (back["median"] * scale if back else 0), x + width)
        out.append(f'<text x="{end + 4:.1f}" y="{y + 13}" font-size="10">{escape(label)}</text>')
    return out


def render(summary, layouts, meta):
    """The whole chart, a block of panels per layout, as SVG text."""
    m = meta["machine"]
    blocks, y = [], 50
    for layout in layouts:
        data = summary.get(layout, {})
        paths = [p for p in ["direct", "nginx", "bore", "rathole", "ssh", "capstan"] if p in data]
        panel_h = TOP + len(paths) * (BAR_H + GAP) + 14
        blocks.append(f'<text x="10" y="{y + 16}" font-size="14" font-weight="bold" fill="#333">'
                      f'{escape(layout.capitalize())} layout</text>')
        y += 26
        for i, (title, metric, pale, unit) in enumerate(PANELS):
            x0, y0 = 10 + (i % COLS) * PANEL_W, y + (i // COLS) * panel_h
            blocks += panel(x0, y0, title, metric, pale, unit, data, paths)
        y += -(-len(PANELS) // COLS) * panel_h + 10
    width, height = COLS * PANEL_W + 20, y
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="10" y="22" font-size="15" font-weight="bold">capstan and its peers by path '
            f'({escape(meta["mode"])} run, {escape(meta["date"][:10])})</text>',
            f'<text x="10" y="40" font-size="11" fill="#555">{escape(m["cpu"])}, {m["cores"]} cores. '
            f'Bars: median of {meta["settings"]["runs"]} runs; whiskers: min to max. '
            f'† forwards bytes without HTTP awareness.</text>']
    return "\n".join(head + blocks + ["</svg>"]) + "\n"
