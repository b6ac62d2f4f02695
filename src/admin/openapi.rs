//! The OpenAPI document of the admin API, kept as JSON beside this file.

use axum::http::header;
use axum::response::IntoResponse;

/// `openapi.json`, embedded at build time.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
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
}
