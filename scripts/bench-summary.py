#!/usr/bin/env python3
"""Summarises the JSON reports of scripts/bench-suite.sh: per row, the value
of each run and the median; for the staleness comparison, the ratios of each
back-to-back pair and their median."""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
runs = defaultdict(dict)
for f in sorted(out.glob("*.json")):
    name, rep = f.stem.rsplit("-", 1)
    runs[name][int(rep)] = json.loads(f.read_text())


def row(name, label, fn, fmt="{:.3f}"):
    if name not in runs:
        return
    vals = [fn(runs[name][r]) for r in sorted(runs[name])]
    shown = ", ".join(fmt.format(v) for v in vals)
    print(f"  {label:<34} {shown:<40} median {fmt.format(statistics.median(vals))}")


def server(r, key):
    return (r.get("server") or {}).get(key) or 0.0


def loads(r):
    return f"{r['load_average'][0]:.1f}->{r['load_average'][1]:.1f}"


for name in sorted(runs):
    if name.startswith("cmp") or name.startswith("nats"):
        continue
    print(f"{name}:")
    row(name, "accepted/s", lambda r: r["accepted_per_s"], "{:.1f}")
    row(name, "rejections", lambda r: sum(r["rejections"].values()), "{:.0f}")
    row(name, "deliveries/s", lambda r: r["deliveries_per_s"], "{:.0f}")
    row(name, "deliveries per window s", lambda r: r["deliveries_per_window_s"], "{:.0f}")
    row(name, "Updates/s", lambda r: r["updates_per_s"], "{:.1f}")
    row(name, "messages per Update", lambda r: r["messages_per_update"], "{:.2f}")
    row(name, "acks/s", lambda r: r["acks_per_s"], "{:.1f}")
    for q in ("p50", "p90", "p99", "max"):
        row(name, f"latency {q} ms", lambda r, q=q: r["latency"][f"{q}_ms"], "{:.1f}")
    row(name, "send p99 ms", lambda r: r["send_latency"]["p99_ms"], "{:.1f}")
    row(name, "server cores", lambda r: server(r, "cores"))
    row(name, "server peak RSS MiB", lambda r: server(r, "peak_rss_bytes") / 2**20, "{:.1f}")
    row(name, "peak RSS per client KiB", lambda r: server(r, "peak_rss_per_client_bytes") / 1024, "{:.1f}")
    row(name, "generator cores", lambda r: r.get("generator_cores") or 0.0)
    row(name, "other processes' cores", lambda r: r.get("other_cores") or 0.0)
    row(name, "check passed", lambda r: 1.0 if r["check"]["passed"] else 0.0, "{:.0f}")
    print(f"  {'load average (start->end)':<34} " + ", ".join(loads(runs[name][r]) for r in sorted(runs[name])))

if "cmp500" in runs and "cmp1" in runs:
    print("staleness 500 ms vs 1 ms, back-to-back pairs:")
    for name in ("cmp500", "cmp1"):
        print(f" {name}:")
        row(name, "accepted/s", lambda r: r["accepted_per_s"], "{:.1f}")
        row(name, "rejections", lambda r: sum(r["rejections"].values()), "{:.0f}")
        row(name, "Updates/s", lambda r: r["updates_per_s"], "{:.1f}")
        row(name, "messages per Update", lambda r: r["messages_per_update"], "{:.2f}")
        row(name, "server cores", lambda r: server(r, "cores"))
        row(name, "latency p50 ms", lambda r: r["latency"]["p50_ms"], "{:.1f}")
        row(name, "latency p99 ms", lambda r: r["latency"]["p99_ms"], "{:.1f}")
        row(name, "generator cores", lambda r: r.get("generator_cores") or 0.0)
        row(name, "other processes' cores", lambda r: r.get("other_cores") or 0.0)
    reps = sorted(set(runs["cmp500"]) & set(runs["cmp1"]))

    def ratio(label, fn):
        vals = [fn(runs["cmp1"][r]) / max(fn(runs["cmp500"][r]), 1e-12) for r in reps]
        shown = ", ".join(f"{v:.1f}x" for v in vals)
        print(f"  {label:<34} {shown:<40} median {statistics.median(vals):.1f}x")

    ratio("Updates/s (1 ms / 500 ms)", lambda r: r["updates_per_s"])
    ratio("server CPU (1 ms / 500 ms)", lambda r: server(r, "cores"))
    ratio("Updates per accepted message", lambda r: r["updates_per_s"] / max(r["accepted_per_s"], 1e-9))
    ratio("server CPU per accepted message", lambda r: server(r, "cores") / max(r["accepted_per_s"], 1e-9))

if "nats" in runs:
    print("nats (core NATS fan-out, bench --spawn-nats):")
    row("nats", "deliveries/s", lambda r: r["deliveries_per_s"], "{:.0f}")
    row("nats", "deliveries of expected", lambda r: r["deliveries"] / max(r["expected_deliveries"], 1), "{:.4f}")
    row("nats", "latency p50 ms", lambda r: r["latency"]["p50_ms"], "{:.1f}")
    row("nats", "latency p99 ms", lambda r: r["latency"]["p99_ms"], "{:.1f}")
    row("nats", "latency max ms", lambda r: r["latency"]["max_ms"], "{:.1f}")
    row("nats", "server cores", lambda r: r["server_cores"] or 0.0)
    row("nats", "server CPU us per delivery", lambda r: r["server_cpu_us_per_delivery"] or 0.0, "{:.2f}")
    row("nats", "RSS per connection KiB", lambda r: (r["server_rss_per_connection_bytes"] or 0) / 1024, "{:.1f}")
    row("nats", "generator cores", lambda r: r["generator_cores"] or 0.0)
    row("nats", "load average (end)", lambda r: r["load_average"] or 0.0, "{:.2f}")
