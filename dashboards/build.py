#!/usr/bin/env python3
"""Writes the Grafana dashboards in this folder from the definitions below.

    python3 dashboards/build.py          # rewrite dashboards/*.json
    python3 dashboards/build.py --check  # fail if the JSON files differ

The JSON files are what Grafana loads (deploy/grafana/provisioning); this
script is where they are edited, so that every panel follows the same
conventions: the data source is the `${datasource}` variable, every query
is filtered by the `$job` and `$instance` variables, and bound changes are
annotations. tests/e2e/prometheus_e2e.py runs every query of the JSON files
against a real Prometheus scraping a real server.
"""

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
# The label filter every query carries.
F = 'job=~"$job", instance=~"$instance"'


def target(expr, legend="", ref="A", instant=False, table=False):
    t = {
        "datasource": DS,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
    }
    if table:
        t["format"] = "table"
    return t


def targets(*pairs):
    """(expr, legend) pairs as targets A, B, C, ..."""
    return [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(pairs)]


def bound_style(regex):
    """Series whose name matches `regex` are bounds: dashed red lines."""
    return {
        "matcher": {"id": "byRegexp", "options": regex},
        "properties": [
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
            {
                "id": "custom.lineStyle",
                "value": {"fill": "dash", "dash": [10, 10]},
            },
            {"id": "custom.fillOpacity", "value": 0},
        ],
    }


def timeseries(title, description, tgts, unit="short", overrides=(), bars=False,
               threshold=None, stepped=False, width=12):
    custom = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 40 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "lineInterpolation": "stepAfter" if stepped else "linear",
    }
    steps = [{"color": "green", "value": None}]
    if threshold is not None:
        steps.append({"color": "red", "value": threshold})
        custom["thresholdsStyle"] = {"mode": "dashed"}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": tgts,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": custom,
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": list(overrides),
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "_w": width,
        "_h": 8,
    }


def stat(title, description, expr, unit="short", red=None, yellow=None, width=4):
    steps = [{"color": "green", "value": None}]
    if yellow is not None:
        steps.append({"color": "yellow", "value": yellow})
    if red is not None:
        steps.append({"color": "red", "value": red})
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
        },
        "_w": width,
        "_h": 4,
    }


def table(title, description, expr, width=24):
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, instant=True, table=True)],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True},
        "transformations": [
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value": "value"},
                },
            }
        ],
        "_w": width,
        "_h": 7,
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def layout(items):
    """Assigns ids and grid positions: rows span the width, panels flow left
    to right and wrap at 24 columns."""
    panels, x, y, line_h = [], 0, 0, 0
    for pid, p in enumerate(items, start=1):
        p = dict(p)
        if p["type"] == "row":
            y += line_h
            x, line_h = 0, 0
            p["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
            y += 1
        else:
            w, h = p.pop("_w"), p.pop("_h")
            if x + w > 24:
                y += line_h
                x, line_h = 0, 0
            p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            x += w
            line_h = max(line_h, h)
        p["id"] = pid
        panels.append(p)
    return panels


def variables(extra=()):
    def query_var(name, label, query):
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "definition": query,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2,
            "includeAll": True,
            "allValue": ".+",
            "multi": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
            "hide": 0,
            "regex": "",
            "options": [],
        }

    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "options": [],
                "refresh": 1,
                "regex": "",
            },
            query_var("job", "Job", "label_values(chat_bound, job)"),
            query_var("instance", "Instance", 'label_values(chat_bound{job=~"$job"}, instance)'),
            *[query_var(*v) for v in extra],
        ]
    }


ANNOTATIONS = {
    "list": [
        {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        },
        {
            "name": "Bound changes",
            "datasource": DS,
            "enable": True,
            "hide": False,
            "iconColor": "orange",
            "expr": f"sum by (instance, scope) (changes(chat_bound_changes_total{{{F}}}[1m])) > 0",
            "step": "1m",
            "titleFormat": "Bounds changed",
            "textFormat": "{{scope}} bounds changed on {{instance}} (see GET /api/v1/bounds)",
            "tagKeys": "scope,instance",
            "useValueForTime": False,
        },
        {
            "name": "Policy steps",
            "datasource": DS,
            "enable": True,
            "hide": False,
            "iconColor": "purple",
            "expr": f"sum by (instance, policy, step) (changes(chat_policy_steps_total{{{F}}}[1m])) > 0",
            "step": "1m",
            "titleFormat": "Policy moved the bounds",
            "textFormat": "the {{policy}} policy took a {{step}} step on {{instance}} (see GET /api/v1/policies)",
            "tagKeys": "policy,step,instance",
            "useValueForTime": False,
        },
    ]
}


def dashboard(uid, title, description, panels, extra_vars=()):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["dyconit-chat"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "templating": variables(extra_vars),
        "annotations": ANNOTATIONS,
        "links": [
            {
                "title": "Dyconit Chat",
                "type": "dashboards",
                "tags": ["dyconit-chat"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "panels": layout(panels),
    }


def overview():
    return dashboard(
        "dyconit-chat-overview",
        "Dyconit Chat / Overview",
        "Clients, writes, deliveries and how close they run to the consistency bounds.",
        [
            row("Now"),
            stat("Connected clients", "Clients connected (waiting for or holding a stream).",
                 f"sum(chat_clients_connected{{{F}}})"),
            stat("Active clients", "Clients streaming and acknowledging in time.",
                 f"sum(chat_clients_active{{{F}}})"),
            stat("Accepted writes", "Messages committed per second (1m rate).",
                 f"sum(instance:chat_messages_accepted:rate1m{{{F}}})", unit="wps"),
            stat("Rejected writes", "Share of write attempts refused over the last minute, any reason. "
                 "Alert ChatRejectionRatioHigh fires above 25% (5m).",
                 f"max(instance:chat_messages_rejected:ratio_rate1m{{{F}}})",
                 unit="percentunit", yellow=0.1, red=0.25),
            stat("Bound violations", "Broken promises (staleness, lease) in the time range. Anything above 0 pages.",
                 f"sum(increase(chat_bound_violations_total{{{F}}}[$__range]))", red=1),
            stat("Clients dropped", "Clients disconnected for ack timeout, a full outbound buffer or lagging in the time range.",
                 f'sum(increase(chat_clients_dropped_total{{{F}, reason=~"ack_timeout|slow_consumer|laggard"}}[$__range]))',
                 yellow=1),
            row("Traffic"),
            timeseries("Clients", "Connected and active clients per server.", targets(
                (f"sum by (instance) (chat_clients_connected{{{F}}})", "{{instance}} connected"),
                (f"sum by (instance) (chat_clients_active{{{F}}})", "{{instance}} active"),
            )),
            timeseries("Message rate", "Writes accepted and refused per second.", targets(
                (f"sum by (instance) (rate(chat_messages_accepted_total{{{F}}}[$__rate_interval]))",
                 "{{instance}} accepted"),
                (f"sum by (instance) (rate(chat_messages_rejected_total{{{F}}}[$__rate_interval]))",
                 "{{instance}} rejected"),
            ), unit="wps"),
            timeseries("Deliveries", "Messages put on client streams (summed over clients) and Updates sent "
                       "(heartbeats included), per second.", targets(
                (f"sum by (instance) (rate(chat_messages_delivered_total{{{F}}}[$__rate_interval]))",
                 "{{instance}} messages delivered"),
                (f"sum by (instance) (rate(chat_updates_sent_total{{{F}}}[$__rate_interval]))",
                 "{{instance}} Updates sent"),
            ), unit="ops"),
            timeseries("Pending messages", "Committed messages not yet flushed, summed over streaming clients: "
                       "what the batching holds back right now.", targets(
                (f"sum by (instance) (chat_pending_messages{{{F}}})", "{{instance}}"),
            )),
            row("Consistency"),
            timeseries("Rejections by reason", "Writes refused per second: order, numerical and staleness are the "
                       "bounds at work; client is malformed input; internal is a storage failure.", targets(
                (f"sum by (reason) (rate(chat_messages_rejected_total{{{F}}}[$__rate_interval]))", "{{reason}}"),
            ), unit="wps"),
            timeseries("Rejection ratio", "Share of write attempts refused; the dashed line is the alert threshold.",
                       targets(
                           (f"max by (instance) (instance:chat_messages_rejected:ratio_rate1m{{{F}}})",
                            "{{instance}} 1m"),
                           (f"max by (instance) (instance:chat_messages_rejected:ratio_rate5m{{{F}}})",
                            "{{instance}} 5m"),
                       ), unit="percentunit", threshold=0.25),
            timeseries("Delivery latency vs staleness bound",
                       "Commit-to-flush time of the oldest message of each Update, against the staleness bound. "
                       "Latency above the bound is a staleness violation.", targets(
                (f"max by (quantile) (instance_quantile:chat_delivery_latency_seconds:histogram_quantile{{{F}}})",
                 "p{{quantile}} delivery latency"),
                (f'max(chat_bound{{{F}, bound="staleness_seconds", tier="default"}})',
                 "staleness bound (default)"),
                (f'min(chat_bound{{{F}, bound="staleness_seconds"}})', "staleness bound (tightest tier)"),
            ), unit="s", overrides=[bound_style(".*bound.*")]),
            timeseries("Ack lag vs numerical bound",
                       "Messages sent to a client and not acknowledged, against the numerical bound: when a "
                       "thread's numerical error reaches its bound, writes to it get NUMERICAL_ERROR.", targets(
                (f"max(chat_ack_lag_messages_max{{{F}}})", "largest lag now"),
                (f"max(instance_quantile:chat_ack_lag_messages:histogram_quantile{{{F}}})", "p99 lag at ack"),
                (f"max(chat_conit_numerical_error{{{F}}})", "numerical error (fullest tier)"),
                (f'max(chat_bound{{{F}, bound="numerical", tier="default"}})', "numerical bound (default)"),
            ), overrides=[bound_style(".*bound.*")]),
            timeseries("Ack lag (time)", "Age of the oldest unacknowledged Update, and the p99 time from an "
                       "Update being sent to its acknowledgement. Clients are dropped at the ack timeout.",
                       targets(
                           (f"max(chat_ack_lag_seconds_max{{{F}}})", "oldest unacknowledged Update"),
                           (f"max(instance_quantile:chat_ack_lag_seconds:histogram_quantile{{{F}}})",
                            "p99 Update to ack"),
                       ), unit="s"),
            timeseries("Batch sizes", "Messages per Update (heartbeats count as 0). A larger staleness bound "
                       "makes larger, fewer batches.", targets(
                (f"max by (quantile) (instance_quantile:chat_update_messages:histogram_quantile{{{F}}})",
                 "p{{quantile}}"),
                (f"max(instance:chat_update_messages:mean_rate1m{{{F}}})", "mean"),
            )),
            timeseries("Bound violations", "Promises broken, by bound (staleness: delivered later than the bound; "
                       "lease: an Update after the previous one expired).", targets(
                (f"sum by (bound) (increase(chat_bound_violations_total{{{F}}}[$__rate_interval]))", "{{bound}}"),
            ), bars=True),
            timeseries("Clients dropped", "Clients removed, by reason.", targets(
                (f"sum by (reason) (increase(chat_clients_dropped_total{{{F}}}[$__rate_interval]))", "{{reason}}"),
            ), bars=True),
            timeseries("Top laggards", "Acknowledgement lag of the laggiest clients by public handle "
                       "(never the id); GET /api/v1/clients has the full list.", targets(
                (f"topk(10, max by (client) (chat_client_ack_lag_messages{{{F}}}))", "{{client}}"),
            ), width=24),
            row("RPC"),
            timeseries("RPC rate", "Calls per second by method and gRPC code.", targets(
                (f"sum by (method, code) (rate(chat_rpc_requests_total{{{F}}}[$__rate_interval]))",
                 "{{method}} {{code}}"),
            ), unit="reqps", width=8),
            timeseries("RPC errors", "Calls per second that ended with a code other than OK.", targets(
                (f'sum by (method, code) (rate(chat_rpc_requests_total{{{F}, code!="OK"}}[$__rate_interval]))',
                 "{{method}} {{code}}"),
            ), unit="reqps", width=8),
            timeseries("RPC latency p99", "99th percentile latency by method (streams: until opened).", targets(
                (f"max by (method) (instance_method_quantile:chat_rpc_duration_seconds:histogram_quantile{{{F}}})",
                 "{{method}}"),
            ), unit="s", width=8),
            row("Cluster (--storage nats)"),
            timeseries("JetStream publish p99", "Publish to JetStream's acknowledgement (stored on a quorum), "
                       "99th percentile: every OK waits for it. About 1 ms on a healthy loopback cluster; "
                       "seconds during a stream leader election. Empty on a single node.", targets(
                (f"max by (instance) (instance_quantile:chat_nats_publish_seconds:histogram_quantile{{{F}}})",
                 "{{instance}}"),
            ), unit="s", width=8),
            timeseries("Publish errors and resends", "Failed publish attempts by kind, and publishes sent "
                       "again with the same Nats-Msg-Id (stored once); order conflicts are publishes refused "
                       "because their thread moved on, then decided again.", targets(
                (f"sum by (kind) (rate(chat_nats_publish_errors_total{{{F}}}[$__rate_interval]))", "error {{kind}}"),
                (f"sum(rate(chat_nats_publish_retries_total{{{F}}}[$__rate_interval]))", "resent"),
                (f"sum(rate(chat_nats_order_conflicts_total{{{F}}}[$__rate_interval]))", "order conflicts"),
            ), unit="ops", width=8),
            timeseries("Commit to apply p99 vs staleness", "Time from a commit being stored in the stream to "
                       "this node applying it, 99th percentile, beside the default staleness bound it eats into.",
                       targets(
                (f"max by (instance) (instance_quantile:chat_nats_apply_delay_seconds:histogram_quantile{{{F}}})",
                 "{{instance}}"),
                (f'max(chat_bound{{{F}, bound="staleness_seconds", tier="default"}})', "staleness bound"),
            ), unit="s", width=8),
            timeseries("Consumer lag", "Stream commits each node has not applied yet (probed every 500 ms).",
                       targets(
                (f"max by (instance) (chat_nats_consumer_lag_messages{{{F}}})", "{{instance}}"),
            ), width=8),
            timeseries("Ready", "1 while the node can commit (its log answers and it has caught up with the "
                       "stream); /readyz answers 503 while 0.", targets(
                (f"min by (instance) (chat_storage_healthy{{{F}}})", "{{instance}}"),
            ), width=8),
            timeseries("Contended threads", "Conflicts by what followed (retried after catching up, refused "
                       "by a bound decided again, gave up), and writes forwarded to their thread's owner node "
                       "by its answer (--nats-forward). no_answer: the owner did not answer within 1 s and the "
                       "writes were published here, each having waited that second.", targets(
                (f"sum by (then) (rate(chat_cluster_publish_conflicts_total{{{F}}}[$__rate_interval]))",
                 "conflict, then {{then}}"),
                (f"sum by (outcome) (rate(chat_cluster_forwarded_writes_total{{{F}}}[$__rate_interval]))",
                 "forwarded, {{outcome}}"),
            ), unit="ops", width=8),
            timeseries("Acknowledgement report age", "Each node reports its clients' lowest acknowledged "
                       "position every 250 ms for the numerical bound across nodes. own: since this node's "
                       "report last came back through the bucket; oldest other: the oldest report this node "
                       "still counts, in bucket time. At 2 s a report expires: its node's clients stop "
                       "counting.", targets(
                (f"max by (instance) (chat_cluster_own_ack_report_age_seconds{{{F}}})", "own, {{instance}}"),
                (f"max by (instance) (chat_cluster_ack_report_age_seconds{{{F}}})",
                 "oldest other, {{instance}}"),
            ), unit="s", width=12),
            timeseries("Other nodes counted", "Other nodes whose acknowledgement reports each node counts "
                       "(live within the 2 s lease): one less than the cluster's chat nodes when all is well.",
                       targets(
                (f"max by (instance) (chat_cluster_ack_reports_live{{{F}}})", "{{instance}}"),
            ), width=12),
            row("Process"),
            timeseries("CPU", "CPU time used, in cores.", targets(
                (f"sum by (instance) (rate(process_cpu_seconds_total{{{F}}}[$__rate_interval]))", "{{instance}}"),
            ), unit="percentunit", width=8),
            timeseries("Memory", "Resident memory.", targets(
                (f"sum by (instance) (process_resident_memory_bytes{{{F}}})", "{{instance}}"),
            ), unit="bytes", width=8),
            timeseries("Open file descriptors", "Sockets and files held open.", targets(
                (f"sum by (instance) (process_open_fds{{{F}}})", "{{instance}}"),
            ), width=8),
        ],
    )


def bounds():
    T = F + ', tier=~"$tier"'
    return dashboard(
        "dyconit-chat-bounds",
        "Dyconit Chat / Bounds and threads",
        "The bounds in force per conit tier (the defaults, or a thread with bounds of its own), the errors "
        "measured against them, and every change.",
        [
            row("Bounds in force"),
            table("Bounds by tier", "staleness_seconds, numerical and order per tier. A thread without bounds "
                  "of its own is in tier default; GET /api/v1/bounds lists the overrides.",
                  f"max by (tier, bound) (chat_bound{{{T}}})"),
            timeseries("Staleness bound", "Per tier.", targets(
                (f'max by (tier) (chat_bound{{{T}, bound="staleness_seconds"}})', "{{tier}}"),
            ), unit="s", stepped=True, width=8),
            timeseries("Numerical bound", "Per tier.", targets(
                (f'max by (tier) (chat_bound{{{T}, bound="numerical"}})', "{{tier}}"),
            ), stepped=True, width=8),
            timeseries("Order bound", "Per tier.", targets(
                (f'max by (tier) (chat_bound{{{T}, bound="order"}})', "{{tier}}"),
            ), stepped=True, width=8),
            row("Errors against the bounds"),
            timeseries("Numerical error", "Committed messages some active client has not acknowledged, in the "
                       "fullest thread of each tier.", targets(
                (f"max by (tier) (chat_conit_numerical_error{{{T}}})", "{{tier}}"),
            )),
            timeseries("Numerical error / bound", "At 100% writes to the tier get NUMERICAL_ERROR; alert "
                       "ChatAckLagNearNumericalBound fires above 80% for 5m.", targets(
                (f"max by (tier) (tier:chat_conit_numerical_error:bound_ratio{{{T}}})", "{{tier}}"),
            ), unit="percentunit", threshold=0.8),
            timeseries("Order error at admission", "Order error measured by the latest admission decision of "
                       "each tier, with the tier's order bound (dashed).", targets(
                (f"max by (tier) (chat_conit_order_error{{{T}}})", "{{tier}}"),
                (f'max by (tier) (chat_bound{{{T}, bound="order"}})', "{{tier}} bound"),
            ), overrides=[bound_style(".* bound")]),
            timeseries("Order error distribution", "Order errors of all admissions (every tier).", targets(
                (f"histogram_quantile(0.99, sum by (le) (rate(chat_admission_order_error_bucket{{{F}}}[$__rate_interval])))",
                 "p99"),
                (f"histogram_quantile(0.5, sum by (le) (rate(chat_admission_order_error_bucket{{{F}}}[$__rate_interval])))",
                 "p50"),
            )),
            row("Policies"),
            timeseries("Policy scale", "The factor each policy scales staleness and numerical bounds by (1 = the "
                       "operator's bounds); the dashed line is 1 while a policy is at its ceiling "
                       "(alert ChatPolicyAtCeiling after 10m).", targets(
                (f"max by (policy) (chat_policy_scale{{{F}}})", "{{policy}} scale"),
                (f"max by (policy) (chat_policy_at_ceiling{{{F}}})", "{{policy}} at ceiling"),
            ), overrides=[bound_style(".*ceiling")], width=8),
            timeseries("Policy pressure", "What the load policy measures: its pressure, the larger of two p90 "
                       "signals: flush_lateness in safety margins (1 = deliveries about to be late) and "
                       "write_age in shares of the staleness bound (1 = writes refused STALENESS).", targets(
                (f"max by (policy) (chat_policy_pressure{{{F}}})", "{{policy}}"),
                (f"max by (signal) (chat_policy_signal{{{F}}})", "{{signal}}"),
            ), width=8),
            timeseries("Flush lateness", "How late the flush scheduler ran after its deadlines, and the lead: "
                       "its largest delay of the last 8 s and half again, which flushes allow for by coming "
                       "due that much before their bound (at least the fixed margin, at most a quarter of "
                       "the bound). Core wait: how long per second the scheduler thread was ready but "
                       "waited for a busy core; lateness rising with it comes from CPU contention.", targets(
                (f"histogram_quantile(0.9, sum by (le) (rate(chat_flush_lateness_seconds_bucket{{{F}}}[$__rate_interval])))",
                 "p90"),
                (f"histogram_quantile(0.99, sum by (le) (rate(chat_flush_lateness_seconds_bucket{{{F}}}[$__rate_interval])))",
                 "p99"),
                (f"max(chat_flush_lead_seconds{{{F}}})", "lead"),
                (f"max(rate(chat_flush_scheduler_wait_seconds_total{{{F}}}[$__rate_interval]))",
                 "core wait per second"),
            ), unit="s", width=8),
            row("Changes and their effect"),
            stat("Bound changes", "Bound changes applied through the admin API in the time range.",
                 f"sum(increase(chat_bound_changes_total{{{F}}}[$__range]))", width=6),
            timeseries("Bound changes", "Changes per interval, by scope (default or thread). Each is also an "
                       "annotation.", targets(
                (f"sum by (scope) (increase(chat_bound_changes_total{{{F}}}[$__rate_interval]))", "{{scope}}"),
            ), bars=True, width=18),
            timeseries("Bound rejections", "Writes refused by a bound, per second: what tightening a bound costs.",
                       targets(
                           (f'sum by (reason) (rate(chat_messages_rejected_total{{{F}, reason=~"order|numerical|staleness"}}[$__rate_interval]))',
                            "{{reason}}"),
                       ), unit="wps"),
            timeseries("Delivery latency vs tightest staleness bound", "What loosening staleness buys: p99 "
                       "delivery latency grows toward the bound while batches grow.", targets(
                (f'max(instance_quantile:chat_delivery_latency_seconds:histogram_quantile{{{F}, quantile="0.99"}})',
                 "p99 delivery latency"),
                (f'min(chat_bound{{{T}, bound="staleness_seconds"}})', "tightest staleness bound"),
                (f'max(instance_quantile:chat_update_messages:histogram_quantile{{{F}, quantile="0.99"}})',
                 "p99 batch size (right axis)"),
            ), unit="s", overrides=[
                bound_style(".*bound.*"),
                {
                    "matcher": {"id": "byRegexp", "options": ".*batch.*"},
                    "properties": [
                        {"id": "unit", "value": "short"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                },
            ]),
        ],
        extra_vars=[("tier", "Tier", 'label_values(chat_bound{job=~"$job", instance=~"$instance"}, tier)')],
    )


DASHBOARDS = {
    "dyconit-chat-overview.json": overview,
    "dyconit-chat-bounds.json": bounds,
}


def render(build):
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv):
    check = "--check" in argv[1:]
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"dashboards out of date: {', '.join(stale)}; run python3 dashboards/build.py",
              file=sys.stderr)
        return 1
    if check:
        print(f"dashboards up to date: {', '.join(DASHBOARDS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
