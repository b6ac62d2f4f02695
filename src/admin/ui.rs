//! The dashboard: one page and its assets, embedded in the binary at build
//! time (no CDN, no build step) and served at `GET /` and `GET /ui/{asset}`.
//!
//! Caching: the page itself is `no-cache` with an `ETag` (a browser always
//! revalidates, so a new binary's page shows at once, and an unchanged one
//! costs a 304). The page refers to its assets with a `?v=<content hash>`
//! query; under the current hash an asset is `immutable` for a year, under
//! any other (or none) it is `no-cache` like the page.

use super::error;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;

/// One embedded file.
struct Asset {
    /// Its name under `/ui/`.
    name: &'static str,
    /// The `Content-Type` it is served with.
    content_type: &'static str,
    /// Its bytes, from `src/admin/ui/` at build time.
    body: &'static [u8],
}

/// Every file under `/ui/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("ui/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("ui/favicon.svg"),
    },
];

/// The page as written, with `{{name}}` where an asset's versioned URL goes.
const INDEX_TEMPLATE: &str = include_str!("ui/index.html");

/// The policy of the page: nothing but its own scripts, styles and API.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// FNV-1a, 64 bits: a content hash for ETags and asset versions (not a
/// security boundary, only a cache key).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

fn version(body: &[u8]) -> String {
    format!("{:016x}", fnv1a(body))
}

/// The page with every `{{name}}` replaced by `/ui/name?v=<hash>`.
static INDEX: LazyLock<String> = LazyLock::new(|| {
    ASSETS.iter().fold(INDEX_TEMPLATE.to_owned(), |page, a| {
        page.replace(
            &format!("{{{{{}}}}}", a.name),
            &format!("/ui/{}?v={}", a.name, version(a.body)),
        )
    })
});

/// Whether `If-None-Match` names `etag` (or is `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// A 200 (or 304) for `body` with the caching and safety headers.
fn respond(
    headers: &HeaderMap,
    body: &'static [u8],
    content_type: &'static str,
    cache: &'static str,
    html: bool,
) -> Response {
    let etag = format!("\"{}\"", version(body));
    let mut out = if not_modified(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = body.into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = out.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    out
}

/// `GET /`: the dashboard page.
pub async fn index(headers: HeaderMap) -> Response {
    respond(
        &headers,
        INDEX.as_bytes(),
        "text/html; charset=utf-8",
        "no-cache",
        true,
    )
}

/// The `?v=` of an asset URL.
#[derive(serde::Deserialize)]
pub struct AssetQuery {
    /// The content hash the page asked for; the asset is immutable under it.
    v: Option<String>,
}

/// `GET /ui/{asset}`: a file of the page.
pub async fn asset(
    Path(name): Path<String>,
    Query(q): Query<AssetQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return error(StatusCode::NOT_FOUND, format!("no asset {name:?}"));
    };
    let cache = if q.v.as_deref() == Some(version(a.body).as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    respond(&headers, a.body, a.content_type, cache, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_placeholder_is_filled_and_every_asset_is_used() {
        assert!(!INDEX.contains("{{"), "unfilled placeholder in the page");
        for a in ASSETS {
            let url = format!("/ui/{}?v={}", a.name, version(a.body));
            assert!(
                INDEX.contains(&url),
                "{} not referenced by the page",
                a.name
            );
        }
    }

    #[test]
    fn if_none_match_lists_and_weak_tags_match() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"a\", W/\"b\""),
        );
        assert!(not_modified(&h, "\"b\""));
        assert!(not_modified(&h, "\"a\""));
        assert!(!not_modified(&h, "\"c\""));
        assert!(!not_modified(&HeaderMap::new(), "\"a\""));
    }
}
