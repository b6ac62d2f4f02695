//! The policy endpoints of the admin API: `GET /api/v1/policies`,
//! `PUT /api/v1/policies/load`, `DELETE /api/v1/policies/pins`.

use super::api::who;
use super::{AdminState, error};
use crate::consistency::policy::{LoadConfig, Pinned};
use crate::server::policies::LoadSetting;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

fn pinned_json(p: Pinned) -> Value {
    json!({ "staleness": p.staleness, "numerical": p.numerical, "order": p.order })
}

/// Each policy's settings, scale and recent decisions, and the pins.
pub async fn get_policies(State(s): State<AdminState>) -> Json<Value> {
    let control = s.hub.bounds_control();
    let pins = control.pins();
    let threads: serde_json::Map<String, Value> = pins
        .threads
        .iter()
        .map(|(t, p)| (t.clone(), pinned_json(*p)))
        .collect();
    Json(json!({
        "load": s.policies.load_view(),
        "interest": s.policies.interest_view(&s.hub),
        "size": s.policies.size_view(&s.hub),
        "pins": { "default": pinned_json(pins.default), "threads": threads },
    }))
}

/// The body of `PUT /api/v1/policies/load`: every field optional.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadChange {
    enabled: Option<bool>,
    target: Option<f64>,
    #[serde(
        default,
        with = "crate::consistency::bounds::humantime_serde_compat::option"
    )]
    max_staleness: Option<Duration>,
    max_numerical: Option<u64>,
    max_order: Option<u64>,
}

impl LoadChange {
    fn apply(self, mut s: LoadSetting) -> Result<LoadSetting, String> {
        s.enabled = self.enabled.unwrap_or(s.enabled);
        let c: &mut LoadConfig = &mut s.config;
        c.target = self.target.unwrap_or(c.target);
        c.max_staleness = self.max_staleness.unwrap_or(c.max_staleness);
        c.max_numerical = self.max_numerical.unwrap_or(c.max_numerical);
        c.max_order = self.max_order.unwrap_or(c.max_order);
        c.validate().map_err(|e| e.to_string())?;
        Ok(s)
    }
}

/// Turns the load policy on or off, or changes its settings.
pub async fn put_load(
    State(s): State<AdminState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let change: LoadChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
    };
    match change.apply(s.policies.load_setting()) {
        Ok(setting) => {
            s.policies.set_load(setting, &s.hub, &who(addr, &s));
            Json(json!({ "load": s.policies.load_view() })).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// Lets policies move every bound again.
pub async fn delete_pins(
    State(s): State<AdminState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
) -> Response {
    s.hub.clear_pins(&who(addr, &s));
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON numbers are read exactly: the double just below the smallest
    /// target is refused, as the OpenAPI document's `minimum` says (found
    /// by schemathesis: `0.049999999999999996` was read as 0.05).
    #[test]
    fn a_target_just_below_the_minimum_is_refused() {
        let change = |body: &str| -> LoadChange { serde_json::from_str(body).unwrap() };
        let below = change(r#"{"target": 0.049999999999999996}"#);
        assert_eq!(below.target, Some(0.05f64.next_down()));
        assert!(below.apply(LoadSetting::default()).is_err());
        let at = change(r#"{"target": 0.05}"#);
        assert!(at.apply(LoadSetting::default()).is_ok());
    }
}
