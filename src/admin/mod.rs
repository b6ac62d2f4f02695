//! The admin HTTP server, on `--admin-listen`.
//!
//! Endpoints (JSON unless noted; errors are `{"error": "..."}`):
//! - `GET /` — the live dashboard page (HTML; see `ui.rs`).
//! - `GET /ui/{asset}` — its script, style sheet and icon, embedded in the
//!   binary (`app.js`, `style.css`, `favicon.svg`).
//! - `GET /healthz` — 200 while the process serves (text).
//! - `GET /readyz` — 200 once serving with a healthy message log; 503 while
//!   starting or draining, while the log fails to store (text, with the
//!   storage error), or while a cluster node is left out of the cluster.
//! - `GET /metrics` — Prometheus text format.
//! - `GET /api/v1/bounds` — default bounds, per-thread overrides, recent changes.
//! - `PUT /api/v1/bounds/default` — change fields of the default bounds.
//! - `PUT /api/v1/bounds/threads/{id}` — set a thread's override.
//! - `DELETE /api/v1/bounds/threads/{id}` — remove a thread's override.
//! - `GET /api/v1/policies` — each policy's settings, the scale it applies
//!   and its recent decisions; the fields an operator pinned.
//! - `PUT /api/v1/policies/load` — turn the load policy on or off, or change
//!   its `target`, `max_staleness`, `max_numerical`, `max_order`.
//! - `DELETE /api/v1/policies/pins` — let policies move every bound again
//!   (bounds an operator set at runtime are pinned until then).
//! - `GET /api/v1/clients` — connected clients, laggiest first, a page at a
//!   time (`?limit=N&offset=M`, N ≤ 1000; beyond the first 20 it needs the
//!   token when one is configured).
//! - `GET /api/v1/stats` — totals, and the delivery-latency and
//!   acknowledgement-lag histograms (count, sum, cumulative buckets).
//! - `GET /api/v1/stats/history` — the last ten minutes of those, one a
//!   second, kept by the server for the dashboard's charts (`?seconds=N`).
//! - `PUT /api/v1/log-level` — replace the log filter.
//! - `GET /api/v1/openapi.json` — the OpenAPI document of all of the above.
//!
//! With an admin token configured, every mutating call (`PUT`, `DELETE`)
//! needs `Authorization: Bearer <token>`, else 401. `run` refuses a
//! non-loopback admin address without a token, and a blank token. Every
//! request must be addressed (`Host`) to an IP address, `localhost` or a
//! name given with `--admin-host` (else 403), and a `PUT` must say
//! `Content-Type: application/json` (else 415): see `guard.rs`.

mod api;
mod conn;
pub(crate) mod guard;
mod history;
mod openapi;
mod policy_api;
mod ui;

pub use conn::serve;

use crate::log::StorageHealth;
use crate::server::hub::Hub;
use crate::server::policies::Policies;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::tracing_setup::LogFilter;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Readiness as a latch: set when serving starts, cleared when draining.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the admin handlers can see.
#[derive(Clone)]
pub struct AdminState {
    /// Serving (set at start, cleared when draining).
    pub ready: Readiness,
    /// The message log's health: not ready while it cannot store.
    pub storage: Arc<StorageHealth>,
    /// The server's shared state: bounds, clients, stats.
    pub hub: Arc<Hub>,
    /// The policies' settings and recent decisions.
    pub policies: Arc<Policies>,
    /// The registry `/metrics` renders.
    pub metrics: Metrics,
    /// The bearer token mutating calls need, if one is configured.
    pub token: Option<Arc<str>>,
    /// Runtime control of the log filter.
    pub log_filter: LogFilter,
    /// When the server started, for uptime.
    pub started: std::time::Instant,
    /// Host names (besides IP addresses and `localhost`) requests may be
    /// addressed to.
    pub hosts: Arc<[String]>,
}

/// A JSON error response.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/{asset}", get(ui::asset))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(api::metrics))
        .route("/api/v1/bounds", get(api::get_bounds))
        .route("/api/v1/bounds/default", put(api::put_default))
        .route(
            "/api/v1/bounds/threads/{id}",
            put(api::put_thread).delete(api::delete_thread),
        )
        .route("/api/v1/policies", get(policy_api::get_policies))
        .route("/api/v1/policies/load", put(policy_api::put_load))
        .route(
            "/api/v1/policies/pins",
            axum::routing::delete(policy_api::delete_pins),
        )
        .route("/api/v1/clients", get(api::clients))
        .route("/api/v1/stats", get(api::stats))
        .route(
            "/api/v1/log-level",
            put(api::put_log_level).get(api::get_log_level),
        )
        .route("/api/v1/openapi.json", get(openapi::document))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /api/v1/openapi.json",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Ready = serving, the message log stores, and (a cluster node) the other
/// nodes count this one's clients.
async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    if !s.ready.get() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
    } else if !s.storage.is_healthy() {
        let why = s.storage.last_error().unwrap_or_default();
        let what = if s.storage.is_excluded() {
            "left out of the cluster"
        } else {
            "storage failing"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {what}: {why}\n"),
        )
    } else {
        (StatusCode::OK, "ready\n".into())
    }
}

/// Compares in time independent of where the strings differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request may do what needs the token: it presents the
/// configured token, or none is configured.
pub(crate) fn authorized(s: &AdminState, headers: &header::HeaderMap) -> bool {
    let Some(token) = &s.token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()))
}

/// 401 with a reason and the `WWW-Authenticate` challenge.
pub(crate) fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// Mutating calls need the bearer token when one is configured.
async fn require_token(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if mutating && !authorized(&s, req.headers()) {
        return unauthorized("this call needs Authorization: Bearer <admin token>");
    }
    next.run(req).await
}

/// The whole admin app: the router plus the stats history, every route
/// behind the Host check; and the task that samples the history (aborted
/// when serving ends).
pub(crate) fn app(state: AdminState) -> (Router, tokio::task::JoinHandle<()>) {
    let samples = history::SampleHistory::default();
    let sampler = tokio::spawn(history::run(state.clone(), samples.clone()));
    let app = router(state.clone())
        .merge(
            Router::new()
                .route("/api/v1/stats/history", get(history::get))
                .with_state(samples),
        )
        // Outermost: a request for a foreign host name is refused first.
        .layer(middleware::from_fn_with_state(state, guard::check_request));
    (app, sampler)
}
