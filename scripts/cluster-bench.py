#!/usr/bin/env python3
"""Cluster benchmark: the rows of the "Cluster" section of docs/benchmarks.md.

Starts everything itself on loopback, one configuration at a time, and runs
`dyconit-chat bench` against it:

  memory   one chat node, messages in memory
  sqlite   one chat node, the durable SQLite log
  nats-r1  3 chat nodes on 1 nats-server (stream replicas 1)
  nats-r3  3 chat nodes on 3 clustered nats-servers (replicas 3)
  hot      nats-r3, one thread written through all 3 nodes, order bound 32
  fanout   nats-r3, readers on all 3 nodes at a stated staleness
  jetstream  no chat nodes: examples/jetstream_publish against 3 clustered
           nats-servers (R3), what JetStream alone stores on this machine
           (build it with `cargo build --release --examples`)

The first four run the same open-loop writer load (send-only writers on
SendMessages streams, one reader per node); hot and fanout use streaming
clients that acknowledge, so the order bound means what it says. Each
configuration gets fresh processes and a fresh JetStream store.

While the bench runs, every process's CPU time (utime + stime from
/proc/PID/stat) is sampled with the sum of the nodes'
chat_messages_accepted_total; the CPU figures are over the span in which
that counter moved (the send window, plus the tail of queued writes), so
they are per process: each chat node, each nats-server, and the bench.
Peak RSS is VmHWM from /proc/PID/status at the end.

At the end it prints finished Markdown table rows: medians of --reps runs
(each cell's median separately), then one line per run.

  scripts/cluster-bench.py                      # full scale, ~12 min on 2 cores
  scripts/cluster-bench.py --scale 0.05 --reps 1  # a quick check of the script
  scripts/cluster-bench.py --summary cluster-bench-results/summary.json  # tables again

Environment: DYCONIT_NATS_SERVER (default target/nats-venv/bin/nats-server),
BIN (default target/release/dyconit-chat). Python 3 standard library only.
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from ports import free_port  # nats-server ports; chat nodes bind port 0

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ["memory", "sqlite", "nats-r1", "nats-r3", "hot", "fanout", "jetstream"]


def cpu_seconds(pid):
    """utime + stime of a live process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces: fields start after its ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def metric_sum(admin, family, label=None):
    """Sum of a counter family on one node's /metrics (0 when absent)."""
    try:
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(family):
            continue
        name, _, value = line.rpartition(" ")
        if name != family and not name.startswith(family + "{"):
            continue
        if label and label not in name:
            continue
        total += float(value)
    return total


def keep_metrics(setup, prefix):
    """Saves each chat node's /metrics after a run, as PREFIX-NODE.metrics."""
    for name, _, _, admin in setup.chat:
        try:
            with urllib.request.urlopen(f"http://{admin}/metrics", timeout=2) as r:
                text = r.read()
        except OSError as e:
            print(f"   could not read {name}'s metrics: {e}", file=sys.stderr)
            continue
        with open(f"{prefix}-{name}.metrics", "wb") as f:
            f.write(text)


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class Setup:
    """The processes of one configuration: nats-servers and chat nodes."""

    def __init__(self, args, work, nats_servers, chat_nodes, storage, serve_flags):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="cbench-", dir=work)
        self.nats = []  # (name, Popen)
        self.chat = []  # (name, Popen, grpc, admin)
        try:
            self.urls = self._start_nats(nats_servers) if nats_servers else []
            for i in range(chat_nodes):
                self._start_chat(i, storage, self.urls, serve_flags)
        except BaseException:
            # Nothing else would stop what did start.
            self.stop()
            raise

    def _log(self, name):
        return open(os.path.join(self.dir, name + ".log"), "w")

    def _start_nats(self, n):
        ports = [(free_port(), free_port(), free_port()) for _ in range(n)]
        routes = ",".join(f"nats://127.0.0.1:{c}" for _, c, _ in ports)
        for i, (port, cport, mport) in enumerate(ports):
            cmd = [self.args.nats_server, "-n", f"n{i}", "-a", "127.0.0.1", "-p", str(port),
                   "-m", str(mport), "-js", "-sd", os.path.join(self.dir, f"n{i}")]
            if n > 1:
                cmd += ["--cluster_name", "cbench", "--cluster", f"nats://127.0.0.1:{cport}",
                        "--routes", routes]
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log(f"nats-n{i}"))
            self.nats.append((f"n{i}", p))
        # JetStream is usable once the meta leader is elected: /healthz says so.
        deadline = time.time() + 60
        for _, _, mport in ports:
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=1).read()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise SystemExit(f"nats-server not healthy after 60 s; logs in {self.dir}")
                    time.sleep(0.1)
        return [f"nats://127.0.0.1:{p}" for p, _, _ in ports]

    def _start_chat(self, i, storage, urls, serve_flags):
        name = "chat-" + "abc"[i]
        ready = os.path.join(self.dir, name + ".ready")
        cmd = [self.args.bin, "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
               "--ready-file", ready, "--storage", storage] + serve_flags
        if storage == "nats":
            cmd += ["--nats-url", ",".join(urls), "--node-name", name]
        if storage == "durable":
            cmd += ["--data-dir", os.path.join(self.dir, name + "-data")]
        # The node logs to stdout: keep it, for a node that does not start.
        p = subprocess.Popen(cmd, stdout=self._log(name), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not os.path.exists(ready):
            if p.poll() is not None or time.time() > deadline:
                how = "timed out" if p.returncode is None else f"exit status {p.returncode}"
                with open(os.path.join(self.dir, name + ".log"), errors="replace") as f:
                    tail = "".join(f.readlines()[-5:])
                raise SystemExit(f"{name} did not start ({how}); its log ends:\n{tail}")
            time.sleep(0.05)
        with open(ready) as f:
            info = json.load(f)
        self.chat.append((name, p, info["grpc"], info["admin"]))

    def pids(self):
        return [(n, p.pid) for n, p, _, _ in self.chat] + [(n, p.pid) for n, p in self.nats]

    def counter(self, family, label=None):
        values = [metric_sum(admin, family, label) for _, _, _, admin in self.chat]
        return sum(v for v in values if v is not None)

    def stop(self):
        for _, p, _, _ in self.chat:
            p.send_signal(signal.SIGTERM)
        for _, p, _, _ in self.chat:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for _, p in self.nats:
            p.send_signal(signal.SIGTERM)
        for _, p in self.nats:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class Sampler(threading.Thread):
    """CPU seconds of every process and the nodes' accepted count, 4 times a second."""

    def __init__(self, setup, bench_pid):
        super().__init__(daemon=True)
        self.setup = setup
        self.pids = setup.pids() + [("bench", bench_pid)]
        self.samples = []  # (time, accepted, {name: cpu})
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            t = time.monotonic()
            accepted = self.setup.counter("chat_messages_accepted_total")
            cpu = {n: cpu_seconds(pid) for n, pid in self.pids}
            self.samples.append((t, accepted, cpu))
            self.stopped.wait(0.25)

    def busy_span(self):
        """Cores per process over the span in which accepted moved."""
        moved = [i for i in range(1, len(self.samples))
                 if self.samples[i][1] > self.samples[i - 1][1]]
        if not moved:
            return {}, 0.0
        a, b = self.samples[moved[0] - 1], self.samples[moved[-1]]
        span = b[0] - a[0]
        cores = {}
        for name in a[2]:
            if a[2][name] is not None and b[2].get(name) is not None:
                cores[name] = (b[2][name] - a[2][name]) / span
        return cores, span


def bench_flags(args, row):
    """bench flags and serve flags of a row, scaled by --scale."""
    s = args.scale
    dur = f"{max(2.0, args.duration * min(1.0, s * 4)):.0f}s"
    if row in ("memory", "sqlite", "nats-r1", "nats-r3"):
        rate = {"memory": args.rate_memory, "sqlite": args.rate_sqlite}.get(row, args.rate_nats)
        bench = ["--clients", "3", "--writers", "48", "--send-only-writers", "--mode", "stream",
                 "--rate", str(int(rate * s)), "--threads", "64", "--size", "100",
                 "--duration", dur, "--ramp-up", "1s", "--drain", "15s"]
        serve = ["--order", "1000000", "--numerical", "1000000", "--ack-timeout", "1h",
                 "--max-outbound-bytes", "1073741824", "--history", "0"]
        return bench, serve
    if row == "hot":
        bench = ["--clients", "6", "--writers", "6", "--mode", "stream",
                 "--rate", str(int(args.rate_hot * s)), "--threads", "1", "--size", "100",
                 "--duration", dur, "--ramp-up", "1s", "--drain", "15s"]
        serve = ["--order", "32", "--staleness", args.hot_staleness,
                 "--numerical", str(args.hot_numerical), "--history", "0"]
        return bench, serve
    clients = max(3, int(args.fanout_clients * s) // 3 * 3)
    bench = ["--clients", str(clients), "--rate", str(max(10, int(args.fanout_rate * s))),
             "--threads", "50", "--size", "100", "--duration", dur, "--ramp-up", "5s",
             "--drain", "15s"]
    serve = ["--staleness", args.fanout_staleness, "--history", "0"]
    return bench, serve


# The yardstick's runs in the jetstream row: (key, flags, what the table says).
YARDSTICK = [
    ("window", ["--mode", "window"], "up to 1,024 publishes in flight over 64 subjects"),
    ("per-subject", ["--mode", "per-subject"],
     "one publish in flight per subject (64), each with its expected last subject sequence"),
    ("per-subject-3", ["--mode", "per-subject", "--consumers", "3"],
     "the same, with 3 ordered consumers reading the whole stream (as 3 chat nodes do)"),
    ("batch-8-3", ["--mode", "batch", "--batch", "8", "--consumers", "3"],
     "atomic batches of 8 per subject (64), the first message with the check; 3 consumers"),
]


def run_jetstream(args, rep, work):
    """JetStream alone: examples/jetstream_publish against 3 fresh servers, R3,
    in each of the YARDSTICK configurations (see its header)."""
    setup = Setup(args, work, 3, 0, "nats", [])
    try:
        load = load_average()
        dur = f"{max(2.0, args.duration * min(1.0, args.scale * 4)):.0f}"
        pids = ",".join(str(p.pid) for _, p in setup.nats)
        modes = {}
        for mode, flags, _ in YARDSTICK:
            cmd = [args.yardstick, "--url", ",".join(setup.urls), "--replicas", "3",
                   *flags, "--seconds", dur, "--watch-pids", pids]
            print(f"== jetstream run {rep}: {' '.join(cmd[1:])}", file=sys.stderr)
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                raise SystemExit(f"jetstream_publish failed: {out.stderr.strip()}")
            rate = float(re.search(r": (\d+) msg/s", out.stdout).group(1))
            cores = [float(c) for c in
                     re.search(r"publisher ([\d. /]+)", out.stdout).group(1).split(" / ")]
            modes[mode] = {"rate": rate, "publisher": cores[0], "nats": cores[1:]}
        return {"row": "jetstream", "modes": modes, "load": load}
    finally:
        setup.stop()


def run_row(args, row, rep, work):
    if row == "jetstream":
        return run_jetstream(args, rep, work)
    storage = {"memory": "memory", "sqlite": "durable"}.get(row, "nats")
    nats_servers = {"memory": 0, "sqlite": 0, "nats-r1": 1}.get(row, 3)
    nodes = 1 if storage != "nats" else 3
    bench, serve = bench_flags(args, row)
    setup = Setup(args, work, nats_servers, nodes, storage, serve)
    try:
        chat = setup.chat[:args.hot_nodes] if row == "hot" else setup.chat
        servers = ",".join(f"http://{g}" for _, _, g, _ in chat)
        out = os.path.join(args.out, f"{row}-{rep}.json")
        cmd = [args.bin, "bench", "--quiet", "--server", servers,
               "--admin", f"http://{setup.chat[0][3]}", "--json", out] + bench
        print(f"== {row} run {rep}: {' '.join(cmd[1:])}", file=sys.stderr)
        load = load_average()
        conflicts0 = {t: setup.counter("chat_cluster_publish_conflicts_total", f'then="{t}"')
                      for t in ("retried", "refused", "gave_up")}
        with open(os.path.join(args.out, f"{row}-{rep}.txt"), "w") as txt:
            p = subprocess.Popen(cmd, stdout=txt, stderr=subprocess.STDOUT)
            sampler = Sampler(setup, p.pid)
            sampler.start()
            p.wait()
            sampler.stopped.set()
            sampler.join()
        if not os.path.exists(out):
            raise SystemExit(f"bench failed (exit {p.returncode}): see {txt.name}; "
                             f"the processes' logs are in {setup.dir} (kept with --keep)")
        rss = {n: peak_rss_mib(pid) for n, pid in setup.pids()}
        keep_metrics(setup, os.path.join(args.out, f"{row}-{rep}"))
        conflicts = {t: setup.counter("chat_cluster_publish_conflicts_total", f'then="{t}"')
                     - conflicts0[t] for t in conflicts0}
        with open(out) as f:
            report = json.load(f)
        cores, span = sampler.busy_span()
        return {"row": row, "report": report, "cores": cores, "span_s": span, "rss": rss,
                "conflicts": conflicts, "load": load, "flags": bench + ["serve:"] + serve}
    finally:
        setup.stop()


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def cores_cell(runs, prefix):
    """Median cores of each process named prefix*, e.g. '0.61 / 0.58 / 0.60'."""
    names = sorted(n for n in runs[0]["cores"] if n.startswith(prefix))
    if not names:
        return "–"
    return " / ".join(fmt(med([r["cores"].get(n) for r in runs]), 2) for n in names)


def rss_cell(runs, prefix):
    names = sorted(n for n in runs[0]["rss"] if n.startswith(prefix))
    if not names:
        return "–"
    return " / ".join(fmt(med([r["rss"].get(n) for r in runs]), 0) for n in names)


def rejections(r):
    rej = r["report"]["rejections"]
    return ", ".join(f"{k} {v}" for k, v in sorted(rej.items())) or "0"


def common_cells(runs):
    return [cores_cell(runs, "chat-"), cores_cell(runs, "n"), fmt(med([r["cores"].get("bench")
            for r in runs]), 2), rss_cell(runs, "chat-"), rss_cell(runs, "n"),
            ", ".join(fmt(r["load"], 1) for r in runs)]


def table_throughput(results):
    if not any(results.get(r) for r in ("memory", "sqlite", "nats-r1", "nats-r3")):
        return
    print("| storage | chat nodes | offered msg/s | accepted msg/s | send p99 ms | rejections "
          "(median run) | chat node cores | nats-server cores | bench cores "
          "| chat node peak RSS MiB | nats-server peak RSS MiB | load average at start |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    names = {"memory": "memory, single node", "sqlite": "SQLite, single node",
             "nats-r1": "NATS R1 (1 server)", "nats-r3": "NATS R3 (3 servers)"}
    for row in ("memory", "sqlite", "nats-r1", "nats-r3"):
        runs = results.get(row)
        if not runs:
            continue
        acc = [r["report"]["accepted_per_s"] for r in runs]
        mid = runs[acc.index(med(acc))] if len(acc) % 2 else runs[0]
        print("| " + " | ".join([
            names[row], str(sum(1 for n in runs[0]["rss"] if n.startswith("chat-"))),
            fmt(runs[0]["report"]["config"]["rate_per_s"]), f"**{fmt(med(acc))}**",
            fmt(med([r["report"]["send_latency"]["p99_ms"] for r in runs]), 1),
            rejections(mid)] + common_cells(runs)) + " |")


def table_hot(results):
    runs = results.get("hot")
    if not runs:
        return
    print("| offered msg/s | accepted msg/s | conflicts/s retried / refused / gave up "
          "| rejections (median run) | send p99 ms | chat node cores | nats-server cores "
          "| bench cores | chat node peak RSS MiB | nats-server peak RSS MiB "
          "| load average at start |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    acc = [r["report"]["accepted_per_s"] for r in runs]
    mid = runs[acc.index(med(acc))] if len(acc) % 2 else runs[0]
    conf = " / ".join(fmt(med([r["conflicts"][t] / r["report"]["window_s"] for r in runs]), 0)
                      for t in ("retried", "refused", "gave_up"))
    print("| " + " | ".join([
        fmt(runs[0]["report"]["config"]["rate_per_s"]), f"**{fmt(med(acc))}**", conf,
        rejections(mid), fmt(med([r["report"]["send_latency"]["p99_ms"] for r in runs]), 1)]
        + common_cells(runs)) + " |")


def table_fanout(args, results):
    runs = results.get("fanout")
    if not runs:
        return
    print("| clients (per node) | msg/s | staleness | deliveries/s | commit→receive p50 / p99 / "
          "max ms | check passed | chat node cores | nats-server cores | bench cores "
          "| chat node peak RSS MiB | nats-server peak RSS MiB | load average at start |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    c = runs[0]["report"]["config"]
    lat = [med([r["report"]["latency"][k] for r in runs]) for k in ("p50_ms", "p99_ms", "max_ms")]
    print("| " + " | ".join([
        f"{c['clients']} ({c['clients'] // 3})", fmt(c["rate_per_s"]), args.fanout_staleness,
        fmt(med([r["report"]["deliveries_per_s"] for r in runs])),
        f"{fmt(lat[0], 1)} / **{fmt(lat[1], 1)}** / {fmt(lat[2], 1)}",
        f"{sum(r['report']['check']['passed'] for r in runs)} of {len(runs)}"]
        + common_cells(runs)) + " |")


def ms_of(duration):
    """'100ms' or '0.5s' in milliseconds."""
    m = re.fullmatch(r"([0-9.]+)(ms|s)", duration)
    if not m:
        return None
    return float(m.group(1)) * (1 if m.group(2) == "ms" else 1000)


def median_of(runs, f):
    return med([f(r) for r in runs]) if runs else None


def table_targets(args, results):
    """The cluster targets of docs/benchmarks.md, each against its median."""
    r3 = median_of(results.get("nats-r3"), lambda r: r["report"]["accepted_per_s"])
    hot = median_of(results.get("hot"), lambda r: r["report"]["accepted_per_s"])
    p99 = median_of(results.get("fanout"), lambda r: r["report"]["latency"]["p99_ms"])
    bound = ms_of(args.fanout_staleness)
    bound = bound + 50 if bound is not None else None

    def verdict(v, ok):
        return "–" if v is None else ("met" if ok(v) else "missed")

    print("| target | measured (median) | |")
    print("|---|---|---|")
    print(f"| ≥ 30,000 msg/s accepted through 3 nodes on R3 | {fmt(r3)} msg/s | "
          f"{verdict(r3, lambda v: v >= 30000)} |")
    print(f"| ≥ 5,000 msg/s on one hot thread across 3 nodes, order bound 32 | {fmt(hot)} msg/s | "
          f"{verdict(hot, lambda v: v >= 5000)} |")
    print(f"| cross-node p99 ≤ staleness + 50 ms ({fmt(bound)} ms) | {fmt(p99, 1)} ms | "
          f"{verdict(p99, lambda v: bound is not None and v <= bound)} |")


def sum_cores(r, prefix):
    return sum(v for n, v in r["cores"].items() if n.startswith(prefix))


def model_inputs(results):
    """The per-node figures docs/cluster.md's capacity model takes, in CPU µs."""
    print("| capacity model input | value (median) | from |")
    print("|---|---|---|")
    r3 = results.get("nats-r3")
    if r3:
        node = median_of(r3, lambda r: sum_cores(r, "chat-") / 3 / r["report"]["accepted_per_s"])
        nats = median_of(r3, lambda r: sum_cores(r, "n") / r["report"]["accepted_per_s"])
        print(f"| c_w: chat-node CPU per accepted message, per node | {fmt(node * 1e6, 1)} µs "
              "| NATS R3 row: mean chat-node cores / accepted msg/s |")
        print(f"| nats-server CPU per message, all 3 servers | {fmt(nats * 1e6, 1)} µs "
              "| NATS R3 row: sum of nats-server cores / accepted msg/s |")
    fan = results.get("fanout")
    if fan:
        d = median_of(fan, lambda r: sum_cores(r, "chat-") / max(1, r["report"]["deliveries_per_s"]))
        print(f"| c_d: chat-node CPU per delivery | {fmt(d * 1e6, 2)} µs "
              "| fan-out row: sum of chat-node cores / deliveries/s |")


# The capacity example of docs/cluster.md: nodes like the benchmark machine
# run at half their capacity; memory and CPU per idle client are the
# "10k idle, own connection" row of docs/benchmarks.md.
NODE_CORES, NODE_MEMORY, UTILISATION = 2, 24 * 2**30, 0.5
CLIENTS, MSGS, FANOUT = 1_000_000, 100_000, 100
CLIENT_BYTES, CLIENT_CPU = 27.5 * 1024, 0.162 / 10_000


def capacity(results):
    """docs/cluster.md's model for CLIENTS clients and MSGS msg/s, from the medians."""
    r3, fan = results.get("nats-r3"), results.get("fanout")
    if not r3 or not fan:
        return
    c_w = median_of(r3, lambda r: sum_cores(r, "chat-") / 3 / r["report"]["accepted_per_s"])
    c_l = median_of(r3, lambda r: max(v for n, v in r["cores"].items() if n.startswith("n"))
                    / r["report"]["accepted_per_s"])
    c_d = median_of(fan, lambda r: sum_cores(r, "chat-") / max(1, r["report"]["deliveries_per_s"]))
    uk = UTILISATION * NODE_CORES
    by_memory = CLIENTS * CLIENT_BYTES / (UTILISATION * NODE_MEMORY)
    room = MSGS * c_w
    print(f"| capacity, {CLIENTS:,} clients, {MSGS:,} msg/s, u = {UTILISATION}, "
          f"nodes of {NODE_CORES} cores | value |")
    print("|---|---|")
    print(f"| c_l: busiest nats-server's CPU per message | {fmt(c_l * 1e6, 1)} µs |")
    print(f"| nodes for the clients' memory | {math.ceil(by_memory)} |")
    print(f"| stream on each node, W·c_w | {fmt(room, 2)} cores |")
    print(f"| one stream's cap per node, u·K / c_w | {fmt(uk / c_w)} msg/s |")
    print(f"| one stream's cap per leader, u·K / c_l | {fmt(uk / c_l)} msg/s |")
    print(f"| deliveries, every client every message (F = C) | {fmt(MSGS * CLIENTS * c_d)} cores |")
    need = CLIENTS * CLIENT_CPU + MSGS * FANOUT * c_d
    nodes = (f"{max(math.ceil(by_memory), math.ceil(need / (uk - room)))}" if room < uk
             else "none: W·c_w ≥ u·K, the stream alone exceeds a node")
    print(f"| rooms of {FANOUT} (F = {FANOUT}): deliveries {fmt(MSGS * FANOUT * c_d, 1)} cores; "
          f"nodes on one stream | {nodes} |")


def table_jetstream(results):
    runs = results.get("jetstream")
    if not runs:
        return
    print("| JetStream alone, 3 servers, R3 | stored msg/s | nats-server cores | "
          "publisher cores | load average at start |")
    print("|---|---|---|---|---|")
    for mode, _, text in YARDSTICK:
        if any(mode not in r["modes"] for r in runs):
            continue
        rates = [r["modes"][mode]["rate"] for r in runs]
        nats = " / ".join(fmt(med([r["modes"][mode]["nats"][i] for r in runs]), 2)
                          for i in range(3))
        pub = fmt(med([r["modes"][mode]["publisher"] for r in runs]), 2)
        each = ", ".join(fmt(v) for v in rates)
        loads = ", ".join(f"{r['load']:.1f}" for r in runs)
        print(f"| {text} | **{fmt(med(rates))}** ({each}) | {nats} | {pub} | {loads} |")


def per_run_lines(results):
    for row in ROWS:
        for i, r in enumerate(results.get(row, []), 1):
            if row == "jetstream":
                m = r["modes"]
                rates = ", ".join(f"{k} {v['rate']:.0f}" for k, v in m.items())
                print(f"jetstream run {i}: msg/s {rates} | load {r['load']:.1f}")
                continue
            rep = r["report"]
            cores = " ".join(f"{n} {v:.2f}" for n, v in sorted(r["cores"].items()))
            extra = ""
            if row == "hot":
                extra = " conflicts " + "/".join(str(int(r["conflicts"][t]))
                                                  for t in ("retried", "refused", "gave_up"))
            print(f"{row} run {i}: accepted/s {rep['accepted_per_s']:.0f} deliveries/s "
                  f"{rep['deliveries_per_s']:.0f} p99 {rep['latency']['p99_ms']:.1f} ms "
                  f"rejections {rejections(r)}{extra} | cores over {r['span_s']:.1f} s: {cores} "
                  f"| load {r['load']:.1f} | check {'passed' if rep['check']['passed'] else 'FAILED'}")


def machine():
    """nproc, CPU model and memory, for the report's header."""
    model, mem = "?", "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.0f} GiB"
                break
    return f"nproc {os.cpu_count()}, {model}, {mem}"


def nats_version(args):
    try:
        return subprocess.run([args.nats_server, "--version"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.environ.get("BIN", os.path.join(
        ROOT, "target/release/dyconit-chat")), help="the dyconit-chat binary")
    p.add_argument("--nats-server", default=os.environ.get("DYCONIT_NATS_SERVER", os.path.join(
        ROOT, "target/nats-venv/bin/nats-server")), help="the nats-server binary (>= 2.12)")
    p.add_argument("--out", default="cluster-bench-results",
                   help="directory for each run's bench JSON and text report")
    p.add_argument("--reps", type=int, default=3, help="runs of each row (medians over them)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " +
                   ", ".join(ROWS))
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply rates and clients (and shorten runs below 0.25) to check "
                   "the script on a debug build")
    p.add_argument("--duration", type=float, default=10, help="send window of each run, s")
    p.add_argument("--yardstick", help="examples/jetstream_publish, for the jetstream row "
                   "(default: beside --bin, in its examples/ directory)")
    p.add_argument("--rate-memory", type=int, default=200000, help="offered msg/s, memory row")
    p.add_argument("--rate-sqlite", type=int, default=100000, help="offered msg/s, SQLite row")
    p.add_argument("--rate-nats", type=int, default=40000, help="offered msg/s, NATS rows")
    p.add_argument("--rate-hot", type=int, default=8000, help="offered msg/s, hot thread")
    p.add_argument("--hot-staleness", default="5ms",
                   help="staleness bound, hot thread: a writer sees others' commits within it, so "
                   "order bound 32 caps the thread near 32 / staleness (6,400 msg/s at 5 ms)")
    p.add_argument("--hot-numerical", type=int, default=256,
                   help="numerical bound, hot thread (clients are flushed at half of it)")
    p.add_argument("--hot-nodes", type=int, default=3, choices=(1, 2, 3),
                   help="nodes the hot thread's writers connect to (the first N; all 3 "
                        "still run and apply every commit): 1 shows the thread without "
                        "nodes racing on it")
    p.add_argument("--fanout-clients", type=int, default=999, help="readers, fan-out row")
    p.add_argument("--fanout-rate", type=int, default=200, help="msg/s, fan-out row")
    p.add_argument("--fanout-staleness", default="100ms", help="staleness bound, fan-out row")
    p.add_argument("--summary", metavar="FILE",
                   help="print the tables again from a run's summary.json, running nothing "
                   "(with the same --fanout-staleness)")
    p.add_argument("--keep", action="store_true", help="keep the processes' logs and stores")
    return p.parse_args()


def main():
    args = parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; rows are {', '.join(ROWS)}")
    if args.summary:
        with open(args.summary) as f:
            print_tables(args, json.load(f))
        return
    if args.yardstick is None:
        args.yardstick = os.path.join(os.path.dirname(args.bin), "examples", "jetstream_publish")
    needed = [(args.bin, "BIN / --bin"), (args.nats_server, "--nats-server")]
    if "jetstream" in rows:
        needed.append((args.yardstick, "--yardstick (cargo build --release --examples)"))
    for path, what in needed:
        if not os.access(path, os.X_OK):
            raise SystemExit(f"{path} is not an executable; set {what}")
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="cluster-bench-")
    started = time.time()
    results = {}
    try:
        for rep in range(1, args.reps + 1):
            for row in rows:
                results.setdefault(row, []).append(run_row(args, row, rep, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\ncommand: {' '.join(sys.argv)}")
    print(f"{args.reps} runs of each row in {time.time() - started:.0f} s; {machine()}; "
          f"{args.bin}; {nats_version(args)}\n")
    print_tables(args, results)


def print_tables(args, results):
    for table in (table_throughput, table_hot, table_jetstream):
        table(results)
        print()
    for table in (table_fanout, table_targets):
        table(args, results)
        print()
    model_inputs(results)
    print()
    capacity(results)
    print()
    per_run_lines(results)

if __name__ == "__main__":
    main()
