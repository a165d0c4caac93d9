#!/usr/bin/env python3
"""bench/report.py: turn bench/run's raw lines into results JSON, tables and the chart.

Standard library only. Each metric is the median of its runs, with min and max, and its
ratio to the direct path measured in the same layout. Called by bench/run; to re-render
committed results, pass `--from bench/results/full.json` instead of --meta and --raw.
"""

import argparse
import json
import re
import statistics
from pathlib import Path

import chart

TICK_US = 10_000  # /proc/<pid>/stat counts in USER_HZ = 100 ticks per second
PATHS = ["direct", "nginx", "bore", "rathole", "ssh", "capstan"]
BYTES_ONLY = {"bore", "rathole", "ssh"}  # forward TCP bytes, with no HTTP awareness
RTT_SIZES = [(32, "32 B"), (4096, "4 KiB"), (65536, "64 KiB"), (1048576, "1 MiB")]


def cpu_per_request(line):
    """CPU µs of every tunnel process, per request of this run."""
    requests = line["result"].get("requests") or 0
    if not requests or "before" not in line:
        return None
    ticks = sum(line["after"][role]["cpu_ticks"] - line["before"][role]["cpu_ticks"]
                for role in ("gateway", "client"))
    return ticks * TICK_US / requests


def has_tunnel(line):
    return bool(line.get("before", {}).get("gateway", {}).get("processes"))


# Metric id -> (workload, label, unit, better, how to read one run's value).
METRICS = {
    "ka_rps": ("keepalive", "Keep-alive GET 1 KiB, req/s", "rps", "higher", lambda l: l["result"]["rps"]),
    "ka_p50": ("keepalive", "keep-alive p50", "us", "lower", lambda l: l["result"]["p50_us"]),
    "ka_p99": ("keepalive", "keep-alive p99", "us", "lower", lambda l: l["result"]["p99_us"]),
    "ka_cpu": ("keepalive", "CPU per keep-alive request", "cpu", "lower",
               lambda l: cpu_per_request(l) if has_tunnel(l) else None),
    "nc_rps": ("newconn", "New connection per GET, req/s", "rps", "higher", lambda l: l["result"]["rps"]),
    "nc_p50": ("newconn", "new-connection p50", "us", "lower", lambda l: l["result"]["p50_us"]),
    "nc_p99": ("newconn", "new-connection p99", "us", "lower", lambda l: l["result"]["p99_us"]),
    "nc_cpu": ("newconn", "CPU per new-connection request", "cpu", "lower",
               lambda l: cpu_per_request(l) if has_tunnel(l) else None),
    "get_10m": ("get_10m", "GET 10 MiB, MiB/s", "mibs", "higher", lambda l: l["result"]["mib_s"]),
    "get_100m": ("get_100m", "GET 100 MiB, MiB/s", "mibs", "higher", lambda l: l["result"]["mib_s"]),
    "post_10m": ("post_10m", "POST 10 MiB, MiB/s", "mibs", "higher", lambda l: l["result"]["mib_s"]),
    "sse_p50": ("sse", "SSE delay per event p50", "sse", "lower", lambda l: l["result"]["p50_us"]),
    "sse_p99": ("sse", "SSE delay per event p99", "sse", "lower", lambda l: l["result"]["p99_us"]),
}
for _size, _name in RTT_SIZES:
    for _q in ("p50", "p99"):
        METRICS[f"rtt_{_size}_{_q}"] = (
            "ws_rtt", f"WebSocket RTT {_name} {_q}", "us", "lower",
            lambda l, s=_size, q=_q: l["result"].get(f"size_{s}_{q}_us"))
METRICS.update({
    "ws_pipe": ("ws_pipe", "WebSocket pipelined 32 B, msgs/s", "rps", "higher", lambda l: l["result"]["msgs_s"]),
    "idle_sockets": ("ws_idle", "Idle WebSockets held", "count", "higher", lambda l: l["result"]["sockets"]),
    "idle_gw": ("ws_idle", "gateway memory per idle WebSocket", "bytes", "lower",
                lambda l: l["result"]["gateway_bytes_per_socket"] if has_tunnel(l) else None),
    "idle_cl": ("ws_idle", "client memory per idle WebSocket", "bytes", "lower",
                lambda l: l["result"]["client_bytes_per_socket"] if l["result"]["client_kib_before"] else None),
    "rss_gw_idle": ("rss_idle", "gateway RSS at rest", "kib", "lower",
                    lambda l: l["result"]["gateway"]["rss_kib"] or None),
    "rss_cl_idle": ("rss_idle", "client RSS at rest", "kib", "lower",
                    lambda l: l["result"]["client"]["rss_kib"] or None),
    "rss_gw_load": ("rss_after_load", "gateway RSS after load", "kib", "lower",
                    lambda l: l["result"]["gateway"]["rss_kib"] or None),
    "rss_cl_load": ("rss_after_load", "client RSS after load", "kib", "lower",
                    lambda l: l["result"]["client"]["rss_kib"] or None),
})


def summarize(raw):
    """{layout: {path: {metric: {median, min, max, n, ratio}}}} and the list of errors."""
    runs, errors = {}, []
    for line in raw:
        if "error" in line["result"]:
            errors.append(line)
            continue
        failed = (line["result"].get("errors") or 0) + (line["result"].get("status_errors") or 0)
        if failed:
            # The run still counts, but a path that drops requests should not hide it.
            errors.append({**line, "result": {"error": f"{failed:.0f} failed requests or sockets "
                                              f"(kept in the numbers): {line['result'].get('last_error', '')}"}})
        runs.setdefault((line["layout"], line["path"], line["workload"]), []).append(line)
    summary = {}
    for (layout, path, workload), lines in runs.items():
        for metric, (wl, *_rest, read) in METRICS.items():
            if wl != workload:
                continue
            values = [v for v in (read(l) for l in lines) if v is not None]
            if values:
                summary.setdefault(layout, {}).setdefault(path, {})[metric] = {
                    "median": statistics.median(values), "min": min(values),
                    "max": max(values), "n": len(values)}
    for paths in summary.values():
        direct = paths.get("direct", {})
        for stats in paths.values():
            for metric, s in stats.items():
                base = direct.get(metric, {}).get("median")
                s["ratio"] = s["median"] / base if base else None
    return summary, errors


def fmt(value, unit):
    """A value in its unit, short enough for a table cell."""
    if value is None:
        return "—"
    if unit in ("us", "sse"):
        return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.0f} µs"
    if unit == "cpu":
        return f"{value:.1f} µs"
    if unit == "rps":
        return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:,.0f}"
    if unit == "mibs":
        return f"{value:,.0f}"
    if unit == "bytes":
        return f"{value / 1024:.1f} KiB"
    if unit == "kib":
        return f"{value / 1024:.1f} MiB"
    return f"{value:,.0f}"


def cell(stats, unit, path):
    if not stats:
        return "—"
    text = f"**{fmt(stats['median'], unit)}**"
    if unit == "sse" and path != "direct" and stats["ratio"] is not None:
        base = stats["median"] / stats["ratio"]
        added = stats["median"] - base
        text = f"**{'+' if added >= 0 else '−'}{fmt(abs(added), unit)}**"
    elif stats["ratio"] is not None and path != "direct" and unit != "count":
        text += f" ×{stats['ratio']:.2f}"
    if stats["n"] > 1:
        text += f"<br><sub>{fmt(stats['min'], unit)}–{fmt(stats['max'], unit)}</sub>"
    return text


def table(summary, layout):
    paths = [p for p in PATHS if p in summary.get(layout, {})]
    if not paths:
        return f"_No results for the {layout} layout._\n"
    head = ["metric"] + [p + ("†" if p in BYTES_ONLY else "") for p in paths]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows.append("| HTTP-aware | " + " | ".join(
        "n/a" if p == "direct" else ("no, bytes" if p in BYTES_ONLY else "yes") for p in paths) + " |")
    for metric, (_wl, label, unit, _better, _read) in METRICS.items():
        values = [summary[layout][p].get(metric) for p in paths]
        if any(values):
            rows.append(f"| {label} | " + " | ".join(cell(v, unit, p) for v, p in zip(values, paths)) + " |")
    return "\n".join(rows) + "\n"


def target_rows(summary, layout):
    """(target, capstan, reference, ratio, status) for each tracked target.

    The verdict uses medians. When the runs' ranges put the ratio on both sides of the
    line (capstan's worst run against the reference's best, and the other way round),
    the status says so: on a noisy machine such a verdict may flip from run to run.
    """
    s = summary.get(layout, {})

    def get(path, metric):
        return s.get(path, {}).get(metric)

    def const(value):
        return {"median": value, "min": value, "max": value}

    def add(name, value, ref, ref_label, unit, need, at_least, ref_text=None):
        if value is None or ref is None:
            rows.append((name, fmt(value and value["median"], unit), ref_label, "—", "not measured"))
            return
        ratio = value["median"] / ref["median"]
        low, high = value["min"] / ref["max"], value["max"] / ref["min"]
        met = ratio >= need if at_least else ratio <= need
        status = "met" if met else "**missed**"
        if low < need < high:
            status += ", runs straddle the line"
        rows.append((name, fmt(value["median"], unit), ref_text or f"{ref_label} {fmt(ref['median'], unit)}",
                     f"{ratio:.2f}", status))

    rows = []
    cap = lambda m: get("capstan", m)  # noqa: E731
    add("keep-alive req/s ≥ bore", cap("ka_rps"), get("bore", "ka_rps"), "bore", "rps", 1, True)
    add("keep-alive req/s ≥ rathole", cap("ka_rps"), get("rathole", "ka_rps"), "rathole", "rps", 1, True)
    add("new-connection req/s ≥ 2× bore", cap("nc_rps"), get("bore", "nc_rps"), "bore", "rps", 2, True)
    add("GET 10 MiB ≥ bore's MiB/s", cap("get_10m"), get("bore", "get_10m"), "bore", "mibs", 1, True)
    add("WebSocket pipelined ≥ 38,000 msgs/s", cap("ws_pipe"), const(38_000), "goal", "rps", 1, True)
    add("WebSocket 32 B p50 RTT ≤ 2× direct", cap("rtt_32_p50"), get("direct", "rtt_32_p50"),
        "direct", "us", 2, False)
    gw, cl = cap("idle_gw"), cap("idle_cl")
    both = {k: gw[k] + cl[k] for k in ("median", "min", "max")} if gw and cl else None
    add("gateway + client ≤ 16 KiB per idle WebSocket", both, const(16 * 1024), "goal", "bytes", 1, False)
    add("gateway RSS at rest ≤ 10 MB", cap("rss_gw_idle"), const(10_000_000 / 1024), "goal", "kib", 1,
        False, "goal 10 MB (9.5 MiB)")
    add("CPU per keep-alive request ≤ bore's", cap("ka_cpu"), get("bore", "ka_cpu"), "bore", "cpu", 1, False)
    return rows


def targets_md(summary, layouts):
    out = []
    for layout in layouts:
        out.append(f"**{layout.capitalize()} layout** (ratio = capstan ÷ reference)\n")
        out.append("| target | capstan | reference | ratio | status |\n|---|---|---|---|---|")
        out += ["| " + " | ".join(r) + " |" for r in target_rows(summary, layout)]
        out.append("")
    return "\n".join(out)


def noise(meta):
    """Other work on the machine during the run, the main source of noise."""
    other, wall, cores = meta["machine"].get("other_cpu_s"), meta.get("wall_s"), meta["machine"]["cores"]
    if other is None or not wall:
        return "- Other work on the machine during the run: not recorded."
    return (f"- Other work on the machine during the run: {other} CPU-seconds over {wall} s, "
            f"{100 * other / (wall * cores):.0f}% of its {cores} cores.")


def summary_md(meta):
    m, v, s = meta["machine"], meta["versions"], meta["settings"]
    busy = "" if meta["mode"] == "full" else f" (**{meta['mode']} mode**: shorter runs)"
    lines = [
        f"Run of {meta['date']}{busy}, {meta['profile']} builds, {s['runs']} runs per number "
        f"after a {s['warmup_s']} s warm-up, {s['seconds']} s per throughput run, {s['connections']} "
        f"connections.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}, {m['kernel']}; "
        f"load average {m['load_start']} at the start and {m['load_end']} at the end.",
        noise(meta),
        "- Versions: " + "; ".join(f"{k} `{val}`" for k, val in v.items() if val) + ".",
    ]
    return "\n".join(lines) + "\n"


def tables_md(summary, meta):
    out = []
    for layout in meta["layouts"]:
        out.append(f"#### {layout.capitalize()} layout\n")
        out.append(table(summary, layout))
    out.append("Each cell: **median** ×ratio to direct, and min–max of the runs beneath. SSE "
               "cells other than direct show the delay added over direct. † forwards TCP bytes "
               "with no HTTP awareness: no Host routing, one tunnel stream per visitor "
               "connection. CPU is summed over every process of the path (gateway and client "
               "side), from `/proc/<pid>/stat`.\n")
    return "\n".join(out)


def replace_section(text, name, body):
    pattern = re.compile(rf"(<!-- bench:{name}:start -->\n).*?(<!-- bench:{name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"docs: no bench:{name} markers")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meta", help="meta.json written by bench/run")
    ap.add_argument("--raw", help="raw.jsonl written by bench/run")
    ap.add_argument("--from", dest="source", help="an earlier results JSON instead of --meta/--raw")
    ap.add_argument("--json", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("--docs")
    args = ap.parse_args()

    if args.source:
        earlier = json.loads(Path(args.source).read_text())
        meta, raw = earlier["meta"], earlier["raw"]
    elif args.meta and args.raw:
        meta = json.loads(Path(args.meta).read_text())
        raw = [json.loads(line) for line in Path(args.raw).read_text().splitlines() if line.strip()]
    else:
        ap.error("give --from, or --meta and --raw")
    summary, errors = summarize(raw)
    primary = meta["layouts"][0]
    result = {"meta": meta, "summary": summary, "errors": errors, "raw": raw,
              "targets": {layout: [dict(zip(("target", "capstan", "reference", "ratio", "status"), r))
                                   for r in target_rows(summary, layout)] for layout in meta["layouts"]}}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")

    failures = ""
    if errors:
        failures = "\nFailed runs, or runs with failed requests:\n\n" + "\n".join(
            f"- {e['layout']}/{e['path']}/{e['workload']}: {e['result']['error']}" for e in errors) + "\n"
    sections = {"summary": summary_md(meta), "table": tables_md(summary, meta) + failures,
                "targets": targets_md(summary, meta["layouts"])}
    md = "\n".join(sections.values())
    md += "\nCommands:\n\n```\n" + "\n".join(meta["commands"]) + "\n```\n"
    Path(args.table).write_text(md)
    Path(args.svg).write_text(chart.render(summary, meta["layouts"], meta))
    if args.docs:
        doc = Path(args.docs)
        text = doc.read_text()
        for name, body in sections.items():
            text = replace_section(text, name, body)
        doc.write_text(text)
    print(tables_md(summary, {"layouts": [primary]}))
    print(targets_md(summary, [primary]))
    for e in errors:
        print(f"failed: {e['layout']}/{e['path']}/{e['workload']}: {e['result']['error']}")


if __name__ == "__main__":
    main()
