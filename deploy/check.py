#!/usr/bin/env python3
"""Consistency checks of the deployment files, which cannot be run here (no
container engine, no cluster): every YAML file parses, and the pieces agree
with each other and with the server.

    python3 deploy/check.py   # needs PyYAML (tests/e2e/check-deploy.sh makes a venv)

- Kubernetes: the probes hit /healthz and /readyz on the admin port; the
  Service selects the Deployment's pods and exposes the admin port; the
  ServiceMonitor selects the Service, scrapes /metrics on that port and
  names the job "dyconit-chat" (what the alerts select); the PrometheusRule
  holds exactly the groups of deploy/prometheus/rules/dyconit-chat.rules.yml;
  the kustomization lists every manifest.
- docker compose: the server exports traces to the trace backend over
  OTLP/gRPC; Prometheus scrapes the server's admin port with the rules
  mounted; Grafana gets the provisioning and the dashboards at the path the
  provider reads; the Grafana data source points at the Prometheus service.
- Dockerfile: a cargo builder stage and a slim runtime stage that copies the
  binary, without protoc.
- systemd: the unit starts `dyconit-chat serve`.
- cluster: docker-compose.cluster.yml, prometheus.cluster.yml and
  kubernetes/cluster/ agree (see `cluster()`).
"""

import pathlib
import re
import sys

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent
REPO = DEPLOY.parent
JOB = "dyconit-chat"
problems = []


def check(cond, msg):
    if not cond:
        problems.append(msg)
    return cond


def load_all(path):
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        problems.append(f"{path.relative_to(REPO)}: not YAML: {e}")
        return []


def kubernetes():
    k8s = DEPLOY / "kubernetes"
    docs = {}
    for path in sorted(k8s.glob("*.yaml")):
        for d in load_all(path):
            docs[d.get("kind")] = (path.name, d)
    kust = docs.get("Kustomization")
    if check(kust, "kubernetes: no kustomization.yaml"):
        listed = set(kust[1]["resources"])
        files = {p.name for p in k8s.glob("*.yaml")} - {"kustomization.yaml"}
        check(listed == files, f"kustomization resources {sorted(listed)} != manifests {sorted(files)}")
    for kind in ("Deployment", "Service", "ServiceMonitor", "PrometheusRule"):
        check(kind in docs, f"kubernetes: no {kind}")
    if problems:
        return
    dep, svc, mon, rule = (docs[k][1] for k in ("Deployment", "Service", "ServiceMonitor", "PrometheusRule"))

    pod = dep["spec"]["template"]
    check(dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(),
          "Deployment selector does not match its pod labels")
    check(dep["spec"].get("replicas") == 1,
          "Deployment must run one replica (sessions are in memory; one server per message log)")
    c = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = {e["name"]: e for e in c.get("env", [])}
    check(c.get("args") == ["serve"], f"container args {c.get('args')} != ['serve']")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path and get.get("port") == "admin",
              f"{probe} must GET {path} on port admin, has {get}")
    check("admin" in ports and "grpc" in ports, f"container ports {ports} need admin and grpc")
    admin_listen = env.get("DYCONIT_ADMIN_LISTEN", {}).get("value", "")
    check(admin_listen.endswith(f":{ports.get('admin')}"),
          f"DYCONIT_ADMIN_LISTEN {admin_listen!r} is not the admin containerPort {ports.get('admin')}")
    check(env.get("DYCONIT_LISTEN", {}).get("value", "").endswith(f":{ports.get('grpc')}"),
          "DYCONIT_LISTEN is not the grpc containerPort")
    check("secretKeyRef" in env.get("DYCONIT_ADMIN_TOKEN", {}).get("valueFrom", {}),
          "DYCONIT_ADMIN_TOKEN must come from a Secret (non-loopback admin address)")
    # The durable message log must be on the claimed volume, not the
    # (read-only) root filesystem.
    data_dir = env.get("DYCONIT_DATA_DIR", {}).get("value")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    claim = volumes.get(mounts.get(data_dir), {}).get("persistentVolumeClaim", {}).get("claimName")
    pvc = docs.get("PersistentVolumeClaim")
    check(data_dir and claim and pvc and pvc[1]["metadata"]["name"] == claim,
          f"DYCONIT_DATA_DIR {data_dir!r} must be a mount of the PersistentVolumeClaim in pvc.yaml")

    check(svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(),
          "Service selector does not match the pods")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    check(svc_ports.get("admin", {}).get("targetPort") in ("admin", ports.get("admin")),
          "Service port admin does not target the admin container port")

    check(mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(),
          "ServiceMonitor does not select the Service")
    ep = mon["spec"]["endpoints"][0]
    check(ep.get("port") in svc_ports and ep.get("port") == "admin", f"ServiceMonitor port {ep.get('port')}")
    check(ep.get("path", "/metrics") == "/metrics", "ServiceMonitor path is not /metrics")
    job = svc["metadata"]["labels"].get(mon["spec"].get("jobLabel", ""), svc["metadata"]["name"])
    check(job == JOB, f"ServiceMonitor job would be {job!r}, the alerts select job={JOB!r}")

    rules = yaml.safe_load((DEPLOY / "prometheus/rules/dyconit-chat.rules.yml").read_text())
    check(rule["spec"] == rules, "PrometheusRule spec differs from deploy/prometheus/rules/dyconit-chat.rules.yml")


def compose():
    docs = load_all(DEPLOY / "docker-compose.yml")
    if not check(docs, "docker-compose.yml is empty"):
        return
    services = docs[0]["services"]
    for name in ("dyconit-chat", "prometheus", "grafana", "jaeger"):
        check(name in services, f"compose: no service {name}")
    if problems:
        return
    server = services["dyconit-chat"]
    cmd = " ".join(server["command"])
    check(cmd.startswith("serve"), f"compose server command {cmd!r} does not start with serve")
    m = re.search(r"--otlp-endpoint[= ]http://(\w[\w-]*):(\d+)", cmd)
    check(m and m.group(1) == "jaeger" and m.group(2) == "4317",
          f"compose server must export OTLP/gRPC to jaeger:4317: {cmd!r}")
    check(services["jaeger"].get("environment", {}).get("COLLECTOR_OTLP_ENABLED") == "true",
          "compose jaeger: COLLECTOR_OTLP_ENABLED must be true")
    admin = re.search(r"--admin-listen[= ][\d.]+:(\d+)", cmd)
    check("DYCONIT_ADMIN_TOKEN" in server.get("environment", {}),
          "compose server listens on 0.0.0.0 and needs DYCONIT_ADMIN_TOKEN")
    check(server["build"]["context"] == ".." and (REPO / server["build"]["dockerfile"]).exists(),
          "compose server must build the repository's Dockerfile")

    prom = services["prometheus"]
    check("./prometheus:/etc/prometheus:ro" in prom["volumes"], "compose prometheus must mount ./prometheus")
    check("--config.file=/etc/prometheus/prometheus.yml" in prom["command"],
          "compose prometheus must run /etc/prometheus/prometheus.yml")
    cfg = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    check(JOB in jobs, f"prometheus.yml has no job {JOB}")
    if JOB in jobs and admin:
        targets = [t for sc in jobs[JOB]["static_configs"] for t in sc["targets"]]
        check(targets == [f"dyconit-chat:{admin.group(1)}"],
              f"prometheus.yml targets {targets} != the compose server's admin port {admin.group(1)}")
    check(cfg.get("rule_files") == ["rules/*.yml"], "prometheus.yml must load rules/*.yml")

    graf = services["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in graf["volumes"] if v.startswith("."))
    check(mounts.get("./grafana/provisioning") == "/etc/grafana/provisioning",
          "compose grafana must mount ./grafana/provisioning")
    provider = load_all(DEPLOY / "grafana/provisioning/dashboards/dyconit-chat.yml")[0]["providers"][0]
    check(mounts.get("../dashboards") == provider["options"]["path"],
          f"dashboards mounted at {mounts.get('../dashboards')}, provider reads {provider['options']['path']}")
    home = graf.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    check(home.startswith(provider["options"]["path"] + "/")
          and (REPO / "dashboards" / pathlib.Path(home).name).exists(),
          f"home dashboard {home!r} is not one of dashboards/")
    sources = load_all(DEPLOY / "grafana/provisioning/datasources/datasources.yml")[0]["datasources"]
    promds = [s for s in sources if s["type"] == "prometheus"]
    check(len(promds) == 1 and promds[0]["url"] == "http://prometheus:9090" and promds[0].get("isDefault"),
          "Grafana needs one default prometheus data source at http://prometheus:9090")


def cluster():
    """The cluster files: docker-compose.cluster.yml (3 NATS servers with
    JetStream and monitoring, an exporter scraping each, 2+ chat nodes on
    all three with --storage nats), prometheus.cluster.yml (scrapes every
    chat node under the alerts' job and every exporter), and
    kubernetes/cluster/ (chat nodes on NATS, probes, monitor, kustomization)."""
    docs = load_all(DEPLOY / "docker-compose.cluster.yml")
    if not check(docs, "docker-compose.cluster.yml is empty"):
        return
    services = docs[0]["services"]
    nats = sorted(n for n in services if re.fullmatch(r"nats-\d", n))
    chats = sorted(n for n in services if re.fullmatch(r"chat-\d", n))
    exporters = sorted(n for n in services if n.startswith("nats-exporter-"))
    check(len(nats) == 3, f"compose cluster: {len(nats)} NATS servers, need 3")
    check(len(chats) >= 2, f"compose cluster: {len(chats)} chat nodes, need 2 or more")
    for n in nats:
        args = services[n]["command"]
        check("-js" in args and "-m" in args and "--cluster_name" in args,
              f"compose {n}: needs -js, -m (monitoring) and --cluster_name: {args}")
        routes = args[args.index("--routes") + 1] if "--routes" in args else ""
        check(all(f"nats://{m}:6222" in routes for m in nats), f"compose {n}: routes {routes!r}")
    monitored = {c.rsplit("/", 1)[-1].split(":")[0] for e in exporters for c in services[e]["command"]
                 if c.startswith("http://")}
    check(monitored == set(nats), f"compose cluster: exporters watch {sorted(monitored)}, not {nats}")
    for c in chats:
        env = services[c]["environment"]
        check(env.get("DYCONIT_STORAGE") == "nats", f"compose {c}: DYCONIT_STORAGE is not nats")
        urls = env.get("DYCONIT_NATS_URL", "")
        check(all(f"nats://{n}:4222" in urls for n in nats), f"compose {c}: DYCONIT_NATS_URL {urls!r}")
        check("DYCONIT_ADMIN_TOKEN" in env, f"compose {c}: admin on 0.0.0.0 needs DYCONIT_ADMIN_TOKEN")
    prom = services.get("prometheus", {})
    check("--config.file=/etc/prometheus/prometheus.cluster.yml" in prom.get("command", []),
          "compose cluster prometheus must run prometheus.cluster.yml")
    cfg = yaml.safe_load((DEPLOY / "prometheus/prometheus.cluster.yml").read_text())
    targets = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]]
               for j in cfg["scrape_configs"]}
    check(targets.get(JOB) == [f"{c}:9090" for c in chats],
          f"prometheus.cluster.yml job {JOB} targets {targets.get(JOB)} != the chat nodes")
    check(sorted(t.split(":")[0] for t in targets.get("nats", [])) == exporters,
          "prometheus.cluster.yml job nats must scrape every exporter")
    check(cfg.get("rule_files") == ["rules/*.yml"], "prometheus.cluster.yml must load rules/*.yml")

    k8s = DEPLOY / "kubernetes/cluster"
    kinds = {}
    for path in sorted(k8s.glob("*.yaml")):
        for d in load_all(path):
            kinds[d.get("kind")] = d
    kust = kinds.get("Kustomization")
    if check(kust, "kubernetes/cluster: no kustomization.yaml"):
        files = {p.name for p in k8s.glob("*.yaml")} - {"kustomization.yaml", "nats-values.yaml"}
        check(set(kust["resources"]) == files, f"kubernetes/cluster: kustomization lists {kust['resources']}")
    dep = kinds.get("Deployment")
    if check(dep, "kubernetes/cluster: no Deployment"):
        c = dep["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in c.get("env", [])}
        check(env.get("DYCONIT_STORAGE", {}).get("value") == "nats", "kubernetes/cluster: storage is not nats")
        check(env.get("DYCONIT_NATS_URL", {}).get("value", "").startswith("nats://"),
              "kubernetes/cluster: DYCONIT_NATS_URL missing")
        check(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz",
              "kubernetes/cluster: the readiness probe must GET /readyz")
    values = load_all(k8s / "nats-values.yaml")
    check(values and values[0]["config"]["jetstream"]["enabled"] and values[0]["config"]["cluster"]["replicas"] >= 3,
          "nats-values.yaml: JetStream on a cluster of 3+")


def dockerfile():
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    check(len(stages) >= 2, "Dockerfile must be multi-stage")
    check(any("rust:" in s[0] for s in stages[:-1]), "Dockerfile builder must be a rust image")
    check("slim" in stages[-1][0], f"Dockerfile runtime {stages[-1][0]} is not slim")
    check(re.search(r"cargo build --release --locked --bin dyconit-chat", text),
          "Dockerfile must cargo build --release --locked the server")
    check(re.search(r"COPY --from=builder \S+ /usr/local/bin/dyconit-chat", text),
          "Dockerfile runtime must copy the binary from the builder")
    check("protoc" not in text.replace("No protoc", "").replace("no protoc", ""),
          "Dockerfile installs protoc, which protox makes unnecessary")
    ignore = (REPO / ".dockerignore").read_text().split()
    check("target/" in ignore, ".dockerignore must exclude target/")


def systemd():
    text = (DEPLOY / "systemd/dyconit-chat.service").read_text()
    check(re.search(r"^ExecStart=/usr/local/bin/dyconit-chat serve$", text, re.M),
          "systemd unit must ExecStart dyconit-chat serve")
    check(re.search(r"^KillSignal=SIGTERM$", text, re.M), "systemd unit must stop with SIGTERM (drain)")
    check(re.search(r"^StateDirectory=dyconit-chat$", text, re.M)
          and re.search(r"^Environment=DYCONIT_DATA_DIR=/var/lib/dyconit-chat$", text, re.M),
          "systemd unit must keep the message log in its StateDirectory")


def main():
    kubernetes()
    compose()
    cluster()
    dockerfile()
    systemd()
    if problems:
        print("deploy check FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("deploy check: kubernetes, compose, the cluster files, grafana provisioning, Dockerfile and systemd agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
