//! The handlers of the admin API (see the module doc of `crate::admin`).

use super::guard::require_json;
use super::{AdminState, error};
use crate::consistency::{Bounds, BoundsOverride, DropReason, Rejection};
use crate::server::hub::{BoundsChange, ChangeError, ChangeRecord};
use crate::telemetry::metrics::VIOLATED_BOUNDS;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

pub async fn metrics(State(s): State<AdminState>) -> Response {
    s.hub.refresh_gauges();
    s.metrics.storage.observe(&s.storage);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Bounds as the API shows them.
pub fn bounds_json(b: &Bounds) -> Value {
    json!({
        "staleness": humantime::format_duration(b.staleness).to_string(),
        "staleness_ms": b.staleness.as_secs_f64() * 1000.0,
        "numerical": b.numerical,
        "order": b.order,
    })
}

fn override_json(o: &BoundsOverride) -> Value {
    json!({
        "staleness": o.staleness.map(|d| humantime::format_duration(d).to_string()),
        "numerical": o.numerical,
        "order": o.order,
    })
}

/// A time in microseconds since the epoch as RFC 3339 (UTC, microseconds),
/// shown beside the raw number so a reader need not convert it.
fn rfc3339(micros: i64) -> Value {
    let Ok(us) = u64::try_from(micros) else {
        return Value::Null;
    };
    let t = std::time::UNIX_EPOCH + Duration::from_micros(us);
    json!(humantime::format_rfc3339_micros(t).to_string())
}

/// Adds `<key>_rfc3339` beside each named microsecond field of an object.
fn with_rfc3339(mut v: Value, keys: &[&str]) -> Value {
    if let Value::Object(m) = &mut v {
        for key in keys {
            if let Some(us) = m.get(*key).and_then(Value::as_i64) {
                m.insert(format!("{key}_rfc3339"), rfc3339(us));
            }
        }
    }
    v
}

fn change_json(c: &ChangeRecord) -> Value {
    let v = serde_json::to_value(c).unwrap_or(Value::Null);
    let mut v = with_rfc3339(v, &["at"]);
    if let Value::Object(m) = &mut v {
        m.insert(
            "old".into(),
            c.old.as_ref().map_or(Value::Null, bounds_json),
        );
        m.insert(
            "new".into(),
            c.new.as_ref().map_or(Value::Null, bounds_json),
        );
    }
    v
}

/// `default` and each thread's `override` are the operator's bounds (what
/// `PUT` edits); `effective` is what is in force after policies scaled
/// them (the same while no policy is on).
pub async fn get_bounds(State(s): State<AdminState>) -> Json<Value> {
    let (table, changes) = s.hub.bounds();
    let control = s.hub.bounds_control();
    let base = control.base();
    let threads: Vec<Value> = base
        .overrides()
        .map(|(t, o, b)| {
            json!({
                "thread": t,
                "override": override_json(o),
                "base": bounds_json(b),
                "effective": bounds_json(&table.for_thread(t)),
            })
        })
        .collect();
    Json(json!({
        "default": bounds_json(&base.default_bounds()),
        "effective_default": bounds_json(&table.default_bounds()),
        "policy_scale": control.scale().staleness,
        "threads": threads,
        "policy_threads": policy_threads(&control, &table),
        "changes": changes.iter().map(change_json).collect::<Vec<_>>(),
    }))
}

/// The threads the size policy widens, with their factor and bounds in
/// force.
fn policy_threads(
    control: &crate::consistency::policy::BoundsControl,
    table: &crate::consistency::BoundsTable,
) -> Vec<Value> {
    control
        .thread_scale()
        .iter()
        .map(|(t, f)| {
            json!({
                "thread": t,
                "factor": f,
                "effective": bounds_json(&table.for_thread(t)),
            })
        })
        .collect()
}

/// Parses a bounds body: an object with any of `staleness` (a duration
/// string such as "300ms", or a number of milliseconds), `numerical` and
/// `order` (non-negative integers); a `null` field is not set.
///
/// What `GET /api/v1/bounds` shows is accepted back, so GET → edit → PUT
/// works: the `default` object (its read-only `staleness_ms` must agree with
/// `staleness`, else 400), and for a thread either its `override` object or
/// its whole entry (`thread` must name the thread in the path; `base` and
/// `effective` are computed and ignored).
fn parse_override(body: &[u8], thread: Option<&str>) -> Result<BoundsOverride, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err("body must be a JSON object".into());
    };
    let fields = match (thread, map.get("override")) {
        (Some(path_thread), Some(inner)) => thread_entry(&map, path_thread, inner)?,
        _ => &map,
    };
    let o = parse_fields(fields)?;
    if o.staleness.is_none() && o.numerical.is_none() && o.order.is_none() {
        return Err("nothing to change: give staleness, numerical and/or order".into());
    }
    Ok(o)
}

/// The `override` object of a thread entry as GET lists it, checked against
/// the thread in the path.
fn thread_entry<'a>(
    entry: &'a Map<String, Value>,
    path_thread: &str,
    inner: &'a Value,
) -> Result<&'a Map<String, Value>, String> {
    for (k, v) in entry {
        match k.as_str() {
            // Computed: the operator's resolved bounds and those in force.
            "override" | "base" | "effective" => {}
            "thread" if v.as_str() == Some(path_thread) => {}
            "thread" => {
                return Err(format!(
                    "thread {v} in the body contradicts thread {path_thread:?} in the path"
                ));
            }
            _ => {
                return Err(format!(
                    "unknown field {k:?}; expected thread, override, base, effective"
                ));
            }
        }
    }
    inner
        .as_object()
        .ok_or_else(|| "override must be a JSON object".to_owned())
}

/// The bound fields of one object (see [`parse_override`]).
fn parse_fields(map: &Map<String, Value>) -> Result<BoundsOverride, String> {
    let mut o = BoundsOverride::default();
    let mut staleness_ms = None;
    // An unknown field is refused even when null: the schema allows null
    // only for the bound fields (null keeps their value).
    for (k, v) in map {
        match k.as_str() {
            "staleness" | "staleness_ms" | "numerical" | "order" if v.is_null() => {}
            "staleness" => o.staleness = Some(parse_staleness(v)?),
            "staleness_ms" => staleness_ms = Some(parse_staleness_ms(v)?),
            "numerical" => o.numerical = Some(parse_count(k, v)?),
            "order" => o.order = Some(parse_count(k, v)?),
            _ => {
                return Err(format!(
                    "unknown field {k:?}; expected staleness, numerical, order"
                ));
            }
        }
    }
    match (o.staleness, staleness_ms) {
        // GET shows fractional milliseconds; a microsecond is rounding.
        (Some(d), Some(ms)) if d.abs_diff(ms) > Duration::from_micros(1) => Err(format!(
            "staleness_ms {} contradicts staleness {}",
            ms.as_secs_f64() * 1000.0,
            humantime::format_duration(d)
        )),
        (None, Some(ms)) => {
            o.staleness = Some(ms);
            Ok(o)
        }
        _ => Ok(o),
    }
}

fn parse_staleness_ms(v: &Value) -> Result<Duration, String> {
    match v {
        Value::Number(_) => parse_staleness(v),
        _ => Err(format!(
            "staleness_ms must be a number of milliseconds, got {v}"
        )),
    }
}

fn parse_staleness(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => {
            crate::consistency::time::parse_duration(s).map_err(|e| format!("staleness {s:?}: {e}"))
        }
        Value::Number(n) => n
            .as_f64()
            .filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms <= 3_600_000.0)
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            .ok_or_else(|| format!("staleness {n} ms is outside 0..=3600000")),
        _ => Err("staleness must be a duration string (\"300ms\") or milliseconds".into()),
    }
}

fn parse_count(name: &str, v: &Value) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("{name} must be a non-negative integer, got {v}"))
}

pub(super) fn who(addr: SocketAddr, s: &AdminState) -> String {
    match s.token {
        Some(_) => format!("{addr} (token)"),
        None => addr.to_string(),
    }
}

fn apply(s: &AdminState, change: BoundsChange, addr: SocketAddr) -> Response {
    match s.hub.change_bounds(change, &who(addr, s)) {
        Ok(record) => Json(change_json(&record)).into_response(),
        Err(e @ ChangeError::NoOverride(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

pub async fn put_default(
    State(s): State<AdminState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = require_json(&headers) {
        return refused;
    }
    match parse_override(&body, None) {
        Ok(o) => apply(&s, BoundsChange::SetDefault(o), addr),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

pub async fn put_thread(
    State(s): State<AdminState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = require_json(&headers) {
        return refused;
    }
    match parse_override(&body, Some(&id)) {
        Ok(o) => apply(&s, BoundsChange::SetThread(id, o), addr),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

pub async fn delete_thread(
    State(s): State<AdminState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    apply(&s, BoundsChange::RemoveThread(id), addr)
}

/// Most clients one page of `/api/v1/clients` lists. A page of 1000 is
/// about 110 KB of JSON; the unpaged list of 100,000 clients was 10.7 MB and
/// took up to 0.56 s to build, slowing the gRPC port while it did.
pub const CLIENTS_PAGE_MAX: usize = 1000;
/// Page size when `limit` is not given.
const CLIENTS_PAGE_DEFAULT: usize = 20;

/// Reads a non-negative integer query parameter.
pub(crate) fn query_count(
    q: &HashMap<String, String>,
    name: &str,
    default: usize,
) -> Result<usize, String> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| format!("{name} must be a non-negative integer, got {v:?}")),
    }
}

/// `GET /api/v1/clients?limit=N&offset=M`: one page of the clients,
/// laggiest first. Needs the token when one is configured: who is
/// connected, under which name, is for operators.
pub async fn clients(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (limit, offset) = match (
        query_count(&q, "limit", CLIENTS_PAGE_DEFAULT),
        query_count(&q, "offset", 0),
    ) {
        (Ok(l), Ok(o)) => (l, o),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    if limit > CLIENTS_PAGE_MAX {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit {limit} is above {CLIENTS_PAGE_MAX}; page with offset"),
        );
    }
    if !super::authorized(&s, &headers) {
        return super::unauthorized("listing clients needs Authorization: Bearer <admin token>");
    }
    let all = s.hub.clients();
    let total = all.len();
    let page: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|c| {
            let v = serde_json::to_value(c).unwrap_or(Value::Null);
            with_rfc3339(v, &["connected_since", "last_ack"])
        })
        .collect();
    let next = (offset + page.len() < total && !page.is_empty()).then_some(offset + page.len());
    Json(json!({ "total": total, "offset": offset, "next_offset": next, "clients": page }))
        .into_response()
}

/// A histogram as totals since start plus cumulative buckets (`[le, count]`,
/// the `+Inf` bucket being `count`), so a reader can derive the mean and
/// quantiles of any interval from two samples.
fn histogram_json(h: &prometheus::Histogram) -> Value {
    use prometheus::core::Metric;
    let m = h.metric();
    let h = m.get_histogram();
    let buckets: Vec<Value> = h
        .get_bucket()
        .iter()
        .map(|b| json!([b.upper_bound(), b.cumulative_count()]))
        .collect();
    json!({
        "count": h.get_sample_count(),
        "sum": h.get_sample_sum(),
        "buckets": buckets,
    })
}

pub async fn stats(State(s): State<AdminState>) -> Json<Value> {
    Json(stats_json(&s))
}

/// The body of `/api/v1/stats` (also the dashboard's history samples).
pub(super) fn stats_json(s: &AdminState) -> Value {
    let snap = s.hub.refresh_gauges();
    let m = &s.metrics;
    let by = |v: &prometheus::IntCounterVec, labels: &[&str]| -> Map<String, Value> {
        labels
            .iter()
            .map(|l| (l.to_string(), json!(v.with_label_values(&[l]).get())))
            .collect()
    };
    json!({
        "clients_connected": snap.clients_connected,
        "clients_active": snap.clients_active,
        "head": snap.head,
        "pending_messages": snap.pending_messages,
        "ack_lag_messages_max": snap.ack_lag_messages_max,
        "ack_lag_seconds_max": snap.ack_lag_seconds_max,
        "messages_accepted": m.messages_accepted.get(),
        "rejections": by(&m.messages_rejected, &Rejection::REASONS),
        "updates_sent": m.updates_sent.get(),
        "messages_delivered": m.messages_delivered.get(),
        "clients_dropped": by(
            &m.clients_dropped,
            &DropReason::ALL.map(DropReason::as_str),
        ),
        "bound_violations": by(&m.bound_violations, &VIOLATED_BOUNDS),
        "delivery_latency_seconds": histogram_json(&m.delivery_latency),
        "ack_lag_seconds": histogram_json(&m.ack_lag_seconds),
        "ack_timeout_seconds": s.hub.inspect(|e| e.settings().ack_timeout.as_secs_f64()),
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
        "ready": s.ready.get(),
        "draining": snap.draining,
    })
}

pub async fn get_log_level(State(s): State<AdminState>) -> Json<Value> {
    Json(json!({ "filter": s.log_filter.current() }))
}

/// Parses `{"filter": "<tracing filter>"}`: an object with a non-blank
/// `filter` string and nothing else.
fn parse_filter(body: &[u8]) -> Result<String, String> {
    const SHAPE: &str = "body must be {\"filter\": \"<tracing filter>\"}";
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("{SHAPE}: not JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err(format!("{SHAPE}, not a JSON {}", kind(&v)));
    };
    if let Some(k) = map.keys().find(|k| *k != "filter") {
        return Err(format!("unknown field {k:?}; {SHAPE}"));
    }
    match map.get("filter") {
        Some(Value::String(f)) if !f.trim().is_empty() => Ok(f.clone()),
        Some(Value::String(_)) => Err("filter is empty; give e.g. \"info\"".into()),
        _ => Err(format!("{SHAPE} (filter missing or not a string)")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub async fn put_log_level(
    State(s): State<AdminState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = require_json(&headers) {
        return refused;
    }
    let filter = match parse_filter(&body) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match s.log_filter.set(&filter) {
        Ok(old) => {
            tracing::info!(who = %who(addr, &s), %old, new = %filter, "log filter changed");
            Json(json!({ "old": old, "new": filter })).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, format!("invalid filter: {e}")),
    }
}
