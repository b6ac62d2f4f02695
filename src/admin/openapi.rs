//! The OpenAPI document of the admin API, kept as JSON beside this file.

use super::AdminState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::Value;

/// `openapi.json`, embedded at build time.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// The document as this server answers: without an admin token configured,
/// no call needs one, so the bearer scheme and every 401 come out.
pub fn for_server(token_configured: bool) -> Value {
    let mut doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
    if token_configured {
        return doc;
    }
    if let Some(c) = doc["components"].as_object_mut() {
        c.remove("securitySchemes");
    }
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths.values_mut().filter_map(Value::as_object_mut) {
            for o in op.values_mut().filter_map(Value::as_object_mut) {
                o.remove("security");
                if let Some(r) = o.get_mut("responses").and_then(Value::as_object_mut) {
                    r.remove("401");
                }
            }
        }
    }
    doc
}

pub async fn document(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        for_server(s.token.is_some()).to_string(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_valid_json_listing_every_route() {
        let v: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        let paths = v["paths"].as_object().unwrap();
        for p in [
            "/",
            "/ui/{asset}",
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/v1/bounds",
            "/api/v1/bounds/default",
            "/api/v1/bounds/threads/{id}",
            "/api/v1/clients",
            "/api/v1/stats",
            "/api/v1/log-level",
            "/api/v1/openapi.json",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
    }

    #[test]
    fn without_a_token_no_call_declares_bearer_security() {
        let text = super::for_server(false).to_string();
        assert!(!text.contains("\"security\"") && !text.contains("\"401\""));
        assert!(!text.contains("securitySchemes"));
        let with = super::for_server(true).to_string();
        assert!(with.contains("\"security\"") && with.contains("securitySchemes"));
    }
}
