#!/usr/bin/env python3
"""Interest benchmark: 1,000 clients, 50 threads, Zipf s=1 traffic (a few hot
rooms, many quiet ones), each client active in 1 thread, with and without the
interest policy (`serve --interest-policy`), REPS runs per arm, the arms
alternating. Every run is `dyconit-chat bench --spawn-server` (its own server,
memory storage) with --warm-up: each client writes once to its thread before
the window, so the server knows what each client takes part in from the
window's first second.

Prints a Markdown table (medians of each arm) and the ratios of the
back-to-back pairs, and writes OUT/interest.svg: the medians of Updates/s,
server cores and own-thread p99 without and with the policy, as bars. The
saving depends on the rate: at 200 msg/s most clients' own (hot) threads
have a message pending at every deadline anyway; at 10 msg/s (a message per
client every 100 s) they are mostly quiet.

  python3 scripts/bench-interest.py --out bench-results/interest
  python3 scripts/bench-interest.py --rate 10 --duration 60s --out bench-results/interest-10
  python3 scripts/bench-interest.py --summarize bench-results/interest   # again, no runs

Python standard library only.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ARMS = ("off", "on")  # without / with --interest-policy


class HelpFormat(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each flag's default."""


def args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormat)
    p.add_argument("--bin", default="target/release/dyconit-chat", help="the dyconit-chat binary")
    p.add_argument("--out", default="bench-results/interest", help="directory for the JSON reports")
    p.add_argument("--reps", type=int, default=3, help="runs per arm (the table shows medians)")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--threads", type=int, default=50)
    p.add_argument("--rate", type=float, default=200.0, help="aggregate msg/s")
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--staleness", default="500ms", help="the threads' own staleness bound")
    p.add_argument("--duration", default="30s", help="the send window")
    p.add_argument("--ramp-up", default="10s")
    p.add_argument("--no-warm-up", action="store_true", help="no write before the window (for comparison)")
    p.add_argument("--summarize", metavar="DIR", help="only summarise the runs already in DIR")
    return p


def one_run(a, arm, rep):
    out = Path(a.out)
    cmd = [a.bin, "bench", "--spawn-server", "--quiet", "--json", str(out / f"{arm}-{rep}.json"),
           "--clients", str(a.clients), "--threads", str(a.threads), "--rate", f"{a.rate:g}",
           "--zipf", f"{a.zipf:g}", "--active-threads-per-client", "1", "--size", "100",
           "--staleness", a.staleness, "--duration", a.duration, "--ramp-up", a.ramp_up]
    cmd += [] if a.no_warm_up else ["--warm-up"]
    cmd += ["--server-arg=--interest-policy"] if arm == "on" else []
    print(f"== {arm} run {rep} (load average {os.getloadavg()[0]:.2f}): {' '.join(cmd)}", file=sys.stderr)
    with open(out / f"{arm}-{rep}.txt", "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)


def load_runs(out):
    runs = {arm: {} for arm in ARMS}
    for f in sorted(Path(out).glob("*-*.json")):
        arm, rep = f.stem.rsplit("-", 1)
        if arm in runs:
            runs[arm][int(rep)] = json.loads(f.read_text())
    return runs


COLUMNS = [
    ("Updates/s", lambda r: r["updates_per_s"], "{:.0f}"),
    ("Update MB/s", lambda r: r["update_bytes_per_s"] / 1e6, "{:.2f}"),
    ("messages per Update", lambda r: r["messages_per_update"], "{:.2f}"),
    ("server cores", lambda r: (r.get("server") or {}).get("cores") or 0.0, "{:.3f}"),
    ("own-thread p99 ms", lambda r: (r.get("own_thread_latency") or {}).get("p99_ms") or 0.0, "{:.0f}"),
    ("all-threads p99 ms", lambda r: r["latency"]["p99_ms"], "{:.0f}"),
    ("accepted/s", lambda r: r["accepted_per_s"], "{:.1f}"),
    ("bound violations in the window", lambda r: window_violations(r), "{:.0f}"),
    ("bound violations before it", lambda r: before_window(r), "{:.0f}"),
]


def before_window(r):
    """The server's violations while clients connected and warmed up (0 in
    reports of benches that did not read them separately)."""
    return (r.get("server_counters") or {}).get("violations_before_window") or 0


def window_violations(r):
    return r["check"]["server_violations"] - before_window(r)


def summarize(out):
    runs = load_runs(out)
    if not all(runs.values()):
        sys.exit(f"runs of both arms are needed in {out}")
    head = "| interest policy | " + " | ".join(c[0] for c in COLUMNS) + " | runs | load average (start->end) |"
    lines = [head, "|---|" + "---:|" * len(COLUMNS) + "---:|---|"]
    for arm in ARMS:
        rs = [runs[arm][k] for k in sorted(runs[arm])]
        cells = [fmt.format(statistics.median(fn(r) for r in rs)) for _, fn, fmt in COLUMNS]
        loads = ", ".join(f"{r['load_average'][0] or 0:.1f}->{r['load_average'][1] or 0:.1f}" for r in rs)
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {len(rs)} | {loads} |")
    print("\n".join(lines))
    reps = sorted(set(runs["off"]) & set(runs["on"]))
    print("\n| without / with the policy (each pair; median) | ratio |\n|---|---:|")
    for label, fn, _ in COLUMNS[:4] + COLUMNS[4:5]:
        vals = [fn(runs["off"][k]) / max(fn(runs["on"][k]), 1e-12) for k in reps]
        shown = ", ".join(f"{v:.2f}" for v in vals)
        print(f"| {label} ({shown}) | {statistics.median(vals):.2f}× |")
    plot(runs, Path(out) / "interest.svg")
    print(f"\nplot: {Path(out) / 'interest.svg'}")


PLOTTED = (0, 3, 4)  # Updates/s, server cores, own-thread p99 ms


def plot(runs, path):
    """Bars of the medians of the PLOTTED columns, one panel each: without
    (grey) and with (blue) the policy. SVG text, no library."""
    w, h, top, base = 240, 260, 52, 220
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * len(PLOTTED)}" height="{h}" '
             'font-family="sans-serif">', '<rect width="100%" height="100%" fill="white"/>']
    for i, col in enumerate(PLOTTED):
        label, fn, fmt = COLUMNS[col]
        meds = [statistics.median(fn(r) for r in runs[arm].values()) for arm in ARMS]
        scale = (base - top) / max(max(meds), 1e-12)
        x0 = i * w
        parts.append(f'<text x="{x0 + w / 2}" y="24" font-size="14" text-anchor="middle">{label}</text>')
        parts.append(f'<line x1="{x0 + 30}" x2="{x0 + w - 30}" y1="{base}" y2="{base}" stroke="#999"/>')
        for j, (arm, v) in enumerate(zip(ARMS, meds)):
            bx, bh = x0 + 50 + j * 80, v * scale
            color = "#999" if arm == "off" else "#3b73b9"
            parts.append(f'<rect x="{bx}" y="{base - bh:.1f}" width="60" height="{bh:.1f}" fill="{color}"/>')
            parts.append(f'<text x="{bx + 30}" y="{base - bh - 4:.1f}" font-size="12" '
                         f'text-anchor="middle">{fmt.format(v)}</text>')
            parts.append(f'<text x="{bx + 30}" y="{base + 16}" font-size="12" text-anchor="middle">'
                         f'{"without" if arm == "off" else "with"}</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n")


def main():
    a = args_parser().parse_args()
    if a.summarize:
        summarize(a.summarize)
        return
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for rep in range(1, a.reps + 1):
        for arm in ARMS:
            one_run(a, arm, rep)
    summarize(a.out)


if __name__ == "__main__":
    main()
