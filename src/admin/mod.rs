//! The admin HTTP server, on `--admin-listen`.
//!
//! Endpoints:
//! - `GET /healthz` — 200 while the process serves.
//! - `GET /readyz` — 200 once serving with a healthy message log; 503 while
//!   starting or draining, or while the log fails to store (with the error).

use crate::log::StorageHealth;
use axum::{Router, extract::State, http::StatusCode, routing::get};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

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
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Ready = serving and the message log stores.
async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    if !s.ready.get() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
    } else if !s.storage.is_healthy() {
        let why = s.storage.last_error().unwrap_or_default();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: storage failing: {why}\n"),
        )
    } else {
        (StatusCode::OK, "ready\n".into())
    }
}

pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}
