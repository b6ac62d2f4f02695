#!/usr/bin/env python3
"""Overload ramp: offered load stepping from 0.5x to 3x of what the machine
sustains at the base bounds and back down, once without and once with the
load policy (`serve --load-policy`), REPS runs per arm.

Each run starts its own `dyconit-chat serve` (memory storage, the base
staleness), then one `dyconit-chat bench --server ... --rate-steps R,R,...`:
the same clients connect once (--ramp-up) and send at each step's rate for
STEP seconds in turn, with no gap between steps; each step's figures are
those of the messages scheduled in it. Meanwhile the server is scraped every
second (GET /api/v1/bounds for the staleness in force, GET /metrics for the
bound violations it counted).

Prints a Markdown table (medians over the runs of each arm) and writes an
SVG plot of offered load, accepted fraction and chosen staleness over time.

  python3 scripts/bench-ramp.py --sustained 200 --out bench-results/ramp
  python3 scripts/bench-ramp.py --calibrate 100,200,300,400 --out bench-results/ramp
  python3 scripts/bench-ramp.py --summarize bench-results/ramp   # again, no runs

Python standard library only (the plot is SVG text written here).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ARMS = ("off", "on")  # without / with --load-policy


class HelpFormat(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each flag's default."""


def args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormat)
    p.add_argument("--bin", default="target/release/dyconit-chat", help="the dyconit-chat binary")
    p.add_argument("--out", default="bench-results/ramp", help="directory for reports, table and plot")
    p.add_argument("--sustained", type=float, help="msg/s the machine sustains at the base bounds (1x)")
    p.add_argument("--calibrate", metavar="RATES",
                   help="instead of --sustained: try these msg/s (comma-separated, 15 s each, no policy, "
                        "one bench) and take the highest with >= 99%% accepted and p99 within the staleness")
    p.add_argument("--factors", default="0.5,1,2,3,2,1,0.5", help="offered load per step, times --sustained")
    p.add_argument("--step", type=float, default=20.0, help="seconds per step")
    p.add_argument("--reps", type=int, default=3, help="runs per arm (the table shows medians)")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--threads", type=int, default=50)
    p.add_argument("--size", type=int, default=100, help="bytes per message")
    p.add_argument("--staleness", default="100ms", help="the base (operator's) staleness bound: the floor")
    p.add_argument("--ramp-up", type=float, default=3.0, help="seconds each step's clients take to connect")
    p.add_argument("--server-arg", action="append", default=[], help="another serve flag (repeatable)")
    p.add_argument("--policy-config", metavar="FILE",
                   help="a config file for the server of the arm with the policy only (its [policy.load] table)")
    p.add_argument("--summarize", metavar="DIR", help="only summarise the runs already in DIR")
    return p


def get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def violations(metrics_text):
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("chat_bound_violations_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scraper(admin, samples, stop):
    """Every second: (wall time, effective default staleness ms, violations)."""
    while not stop.is_set():
        t = time.time()
        try:
            bounds = json.loads(get(f"http://{admin}/api/v1/bounds"))
            eff = bounds["effective_default"]["staleness_ms"]
            v = violations(get(f"http://{admin}/metrics"))
            samples.append({"t": t, "staleness_ms": eff, "violations": v})
        except Exception as e:  # a missed sample is a gap in the plot, not a failed run
            print(f"scrape failed: {e}", file=sys.stderr)
        stop.wait(max(0.0, 1.0 - (time.time() - t)))


def warn_lost(report, clients):
    """Says so when not every client took part (the figures are then of
    fewer clients than asked for)."""
    try:
        check = json.loads(Path(report).read_text())["check"]
    except (OSError, ValueError, KeyError) as e:
        print(f"warning: no bench report {report}: {e}", file=sys.stderr)
        return
    if check["clients_lost"] or check["clients_complete"] < clients:
        print(f"warning: {report}: {check['clients_complete']} of {clients} clients got every "
              f"accepted message, {check['clients_lost']} lost; first error: "
              f"{check.get('first_error')}", file=sys.stderr)


def start_server(a, arm, run_dir):
    ready = run_dir / "ready.json"
    ready.unlink(missing_ok=True)
    # Every client connects from this one address: lift the per-address
    # Connect rate limit (100/s), which would refuse a fifth of 1,000
    # clients connecting in 3 s.
    cmd = [a.bin, "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
           "--ready-file", str(ready), "--storage", "memory", "--staleness", a.staleness,
           "--max-connects-per-second", "0"]
    cmd += ["--load-policy"] if arm == "on" else []
    if arm == "on" and a.policy_config:
        cmd += ["--config", a.policy_config]
    cmd += a.server_arg
    log = open(run_dir / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while not ready.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            sys.exit(f"the server did not start: see {run_dir / 'server.log'}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return proc, info, cmd


def one_run(a, arm, rep, factors):
    run_dir = Path(a.out) / f"{arm}-{rep}"
    run_dir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    proc, info, cmd = start_server(a, arm, run_dir)
    samples, stop = [], threading.Event()
    scrape = threading.Thread(target=scraper, args=(info["admin"], samples, stop), daemon=True)
    scrape.start()
    t0 = time.time()
    rates = ",".join(f"{f * a.sustained:g}" for f in factors)
    bench = [a.bin, "bench", "--quiet", "--server", f"http://{info['grpc']}",
             "--admin", f"http://{info['admin']}", "--server-pid", str(info["pid"]),
             "--clients", str(a.clients), "--threads", str(a.threads), "--size", str(a.size),
             "--rate-steps", rates, "--duration", f"{a.step:g}s",
             "--ramp-up", f"{a.ramp_up:g}s", "--drain", "5s",
             "--json", str(run_dir / "bench.json")]
    with open(run_dir / "bench.txt", "w") as out:
        subprocess.run(bench, stdout=out, stderr=subprocess.STDOUT)
    warn_lost(run_dir / "bench.json", a.clients)
    time.sleep(2)  # a last look at the bounds after the load is gone
    stop.set()
    scrape.join()
    proc.terminate()
    proc.wait(timeout=30)
    meta = {"arm": arm, "rep": rep, "factors": factors, "sustained": a.sustained,
            "step_s": a.step, "base_staleness": a.staleness, "server": cmd,
            "load_average_start": load, "load_average_end": os.getloadavg()[0], "t0": t0}
    (run_dir / "run.json").write_text(json.dumps({"meta": meta, "samples": samples}, indent=1))
    print(f"{arm} run {rep}: done in {time.time() - t0:.0f} s (load average {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f})", file=sys.stderr)


# ---- summary ---------------------------------------------------------------

def load_runs(out):
    runs = {arm: [] for arm in ARMS}
    for d in sorted(Path(out).glob("*-*")):
        if not (d / "run.json").exists():
            continue
        run = json.loads((d / "run.json").read_text())
        bench = d / "bench.json"
        steps = json.loads(bench.read_text())["steps"] if bench.exists() else []
        n = len(run["meta"]["factors"])
        run["steps"] = (steps + [None] * n)[:n]
        runs[run["meta"]["arm"]].append(run)
    return runs


def step_figures(run, k):
    """One step of one run: the bench's figures for the step's messages and
    what the scrapes saw during the step."""
    r = run["steps"][k]
    if r is None:
        return None
    start, end = (x / 1e6 for x in r["window_wall_micros"])
    inside = [s for s in run["samples"] if start <= s["t"] <= end]
    before = [s for s in run["samples"] if s["t"] <= start]
    v0 = before[-1]["violations"] if before else 0.0
    v1 = inside[-1]["violations"] if inside else v0
    stal = [s["staleness_ms"] for s in inside] or [float("nan")]
    return {
        "offered": r["rate_per_s"],
        "accepted_fraction": r["accepted"] / max(r["sent"], 1),
        "staleness_rejections": r["rejections"].get("STALENESS", 0),
        "order_rejections": r["rejections"].get("ORDER_ERROR", 0),
        "violations": v1 - v0,
        "p99_ms": r["latency"]["p99_ms"],
        "staleness_median_ms": statistics.median(stal),
        "staleness_max_ms": max(stal),
        "window": (start, end),
    }


def back_at_floor(run):
    """Seconds from the load dropping (the start of the first step at or
    below 1x after the peak) until the staleness in force is the floor."""
    factors = run["meta"]["factors"]
    peak = factors.index(max(factors))
    drop = next((k for k in range(peak + 1, len(factors)) if factors[k] <= 1.0), None)
    if drop is None or run["steps"][drop] is None:
        return None
    t_drop = run["steps"][drop]["window_wall_micros"][0] / 1e6
    floor = min(s["staleness_ms"] for s in run["samples"])
    for s in run["samples"]:
        if s["t"] >= t_drop and s["staleness_ms"] <= floor * 1.001:
            return s["t"] - t_drop
    return float("inf")


def med(xs, fmt):
    xs = [x for x in xs if x is not None]
    return fmt.format(statistics.median(xs)) if xs else "-"


def table(runs):
    lines = ["| step | offered | load policy | accepted | STALENESS rejections "
             "| ORDER_ERROR rejections | bound violations "
             "| commit→receive p99 ms | staleness in force ms (median / max) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    any_run = next(r for arm in ARMS for r in runs[arm])
    factors, sustained = any_run["meta"]["factors"], any_run["meta"]["sustained"]
    for k, f in enumerate(factors):
        for arm in ARMS:
            figs = [step_figures(r, k) for r in runs[arm]]
            figs = [x for x in figs if x]
            if not figs:
                continue
            col = lambda key, fmt: med([x[key] for x in figs], fmt)
            lines.append(
                f"| {k + 1} | {f:g}× = {f * sustained:g} msg/s | {arm} "
                f"| {med([x['accepted_fraction'] * 100 for x in figs], '{:.1f}%')} "
                f"| {col('staleness_rejections', '{:.0f}')} | {col('order_rejections', '{:.0f}')} "
                f"| {col('violations', '{:.0f}')} "
                f"| {col('p99_ms', '{:.0f}')} "
                f"| {col('staleness_median_ms', '{:.0f}')} / {col('staleness_max_ms', '{:.0f}')} |")
    return "\n".join(lines)


def verdicts(runs):
    out = []
    for arm in ARMS:
        if not runs[arm]:
            continue
        peak = []
        for r in runs[arm]:
            factors = r["meta"]["factors"]
            ks = [k for k, f in enumerate(factors) if f == max(factors)]
            figs = [step_figures(r, k) for k in ks]
            figs = [x for x in figs if x]
            if figs:
                peak.append(min(x["accepted_fraction"] for x in figs) * 100)
        total_v = [r["samples"][-1]["violations"] - r["samples"][0]["violations"]
                   for r in runs[arm] if r["samples"]]
        floor = [back_at_floor(r) for r in runs[arm]]
        loads = ", ".join(f"{r['meta']['load_average_start']:.1f}->{r['meta']['load_average_end']:.1f}"
                          for r in runs[arm])
        shown = ", ".join("never" if x == float("inf") else "-" if x is None else f"{x:.0f}"
                          for x in floor)
        back = f"{med(floor, '{:.0f}')} ({shown})" if arm == "on" else "-"
        out.append(
            f"| load policy {arm} | {med(peak, '{:.1f}%')} | {med(total_v, '{:.0f}')} "
            f"| {back} | {len(runs[arm])} | {loads} |")
    head = ["| arm | accepted at the peak (worst peak step) | bound violations, whole run "
            "| seconds back at the floor after the load drops (each run) | runs | load average (start->end) |",
            "|---|---:|---:|---:|---:|---|"]
    return "\n".join(head + out)


# ---- plot --------------------------------------------------------------------

COLORS = {"off": "#c0392b", "on": "#2471a3"}


def polyline(points, color, width=1.5, opacity=1.0):
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return (f'<polyline fill="none" stroke="{color}" stroke-width="{width}" '
            f'stroke-opacity="{opacity}" points="{pts}"/>')


def panel(y0, h, title, series, t_max, y_max, y_label):
    """One panel: series is [(arm, [(t, y)], opacity)], step lines."""
    x0, w = 70, 760
    sx = lambda t: x0 + w * t / max(t_max, 1e-9)
    sy = lambda v: y0 + h - h * min(v, y_max) / max(y_max, 1e-9)
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
           f'<text x="{x0}" y="{y0 - 6}" font-size="13">{title}</text>']
    for i in range(5):
        v = y_max * i / 4
        out.append(f'<text x="{x0 - 6}" y="{sy(v) + 4:.1f}" font-size="10" text-anchor="end">{v:g}</text>')
        out.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#eee"/>')
    out.append(f'<text x="14" y="{y0 + h / 2}" font-size="10" transform="rotate(-90 14 {y0 + h / 2})" '
               f'text-anchor="middle">{y_label}</text>')
    for arm, pts, opacity in series:
        out.append(polyline([(sx(t), sy(v)) for t, v in pts], COLORS[arm], 1.5, opacity))
    return out


def plot(runs, path):
    series_load, series_acc, series_stal = [], [], []
    t_max, stal_max = 1.0, 1.0
    for arm in ARMS:
        for i, r in enumerate(runs[arm]):
            t0 = r["meta"]["t0"]
            opacity = 1.0 if i == 0 else 0.45
            load_pts, acc_pts = [], []
            for k in range(len(r["meta"]["factors"])):
                x = step_figures(r, k)
                if not x:
                    continue
                a, b = (t - t0 for t in x["window"])
                load_pts += [(a, x["offered"]), (b, x["offered"])]
                acc_pts += [(a, x["accepted_fraction"] * 100), (b, x["accepted_fraction"] * 100)]
                t_max = max(t_max, b)
            stal = [(s["t"] - t0, s["staleness_ms"]) for s in r["samples"]]
            stal_max = max([stal_max] + [v for _, v in stal])
            t_max = max([t_max] + [t for t, _ in stal])
            if i == 0:
                series_load.append((arm, load_pts, 1.0))
            series_acc.append((arm, acc_pts, opacity))
            series_stal.append((arm, stal, opacity))
    offered_max = max([1.0] + [v for _, pts, _ in series_load for _, v in pts])
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="860" height="640" font-family="sans-serif">',
           '<rect width="100%" height="100%" fill="white"/>']
    svg += panel(30, 150, "offered load (msg/s)", series_load, t_max, offered_max * 1.1, "msg/s")
    svg += panel(230, 150, "accepted fraction per step (%)", series_acc, t_max, 100, "%")
    svg += panel(430, 150, "staleness in force, scraped each second (ms)", series_stal, t_max,
                 stal_max * 1.1, "ms")
    svg.append(f'<text x="450" y="610" font-size="11" text-anchor="middle">seconds since the run started '
               f'(each run drawn; the first solid)</text>')
    for i, arm in enumerate(ARMS):
        svg.append(f'<rect x="{620 + i * 110}" y="618" width="14" height="4" fill="{COLORS[arm]}"/>')
        svg.append(f'<text x="{638 + i * 110}" y="624" font-size="11">policy {arm}</text>')
    svg.append("</svg>")
    Path(path).write_text("\n".join(svg) + "\n")


def summarize(out):
    runs = load_runs(out)
    if not any(runs.values()):
        sys.exit(f"no runs in {out}")
    svg = Path(out) / "ramp.svg"
    plot(runs, svg)
    print(table(runs))
    print()
    print(verdicts(runs))
    print(f"\nplot: {svg}")


def millis(text):
    """A duration flag's value (e.g. 100ms, 1.5s) in milliseconds."""
    for unit, scale in (("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text) * 1000.0


def calibrate(a):
    """The highest of the rates tried that the server sustains at the base
    bounds: one bench whose clients send at each rate in turn (ascending,
    15 s each, no policy, as the ramp's own steps), and of the steps with
    >= 99% of their writes accepted and a commit->receive p99 within the
    base staleness, the highest."""
    rates = sorted(float(x) for x in a.calibrate.split(","))
    out = Path(a.out) / "calibrate.json"
    proc, info, _ = start_server(a, "off", Path(a.out))
    try:
        subprocess.run([a.bin, "bench", "--quiet", "--json", str(out),
                        "--server", f"http://{info['grpc']}", "--admin", f"http://{info['admin']}",
                        "--server-pid", str(info["pid"]), "--clients", str(a.clients),
                        "--threads", str(a.threads), "--size", str(a.size),
                        "--rate-steps", ",".join(f"{r:g}" for r in rates),
                        "--duration", "15s", "--ramp-up", f"{a.ramp_up:g}s", "--drain", "5s"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    warn_lost(out, a.clients)
    r = json.loads(out.read_text())
    bound = millis(a.staleness)
    best = None
    for step in r["steps"]:
        accepted = step["accepted"] / max(step["sent"], 1)
        p99 = step["latency"]["p99_ms"]
        ok = accepted >= 0.99 and p99 <= bound
        print(f"calibration: {step['rate_per_s']:g} msg/s: {100 * accepted:.1f}% accepted, "
              f"p99 {p99:.0f} ms -> {'sustained' if ok else 'not sustained'}", file=sys.stderr)
        if ok:
            best = step["rate_per_s"]
    print(f"calibration: {r['check']['server_violations']} bound violations counted over all steps "
          f"(load average {os.getloadavg()[0]:.2f})", file=sys.stderr)
    if best is None:
        sys.exit("none of the --calibrate rates is sustained: try lower ones")
    return best


def main():
    a = args_parser().parse_args()
    if a.summarize:
        summarize(a.summarize)
        return
    Path(a.out).mkdir(parents=True, exist_ok=True)
    if a.calibrate:
        a.sustained = calibrate(a)
    if not a.sustained:
        sys.exit("give --sustained MSG_PER_S (the rate the machine sustains at the base bounds) or --calibrate")
    print(f"1x = {a.sustained:g} msg/s", file=sys.stderr)
    factors = [float(x) for x in a.factors.split(",")]
    for rep in range(1, a.reps + 1):
        for arm in ARMS:  # alternate the arms, so slow drift in the machine hits both
            one_run(a, arm, rep, factors)
    summarize(a.out)


if __name__ == "__main__":
    main()
