//! Checks every admin request passes before its handler: the `Host` it was
//! sent to, and the content type of mutations.
//!
//! Why: a web page on another site can make the operator's browser send
//! requests to the loopback admin port (DNS rebinding: the attacker's name
//! resolves to 127.0.0.1, so the browser treats the port as the page's own
//! origin). Such requests carry the attacker's name in `Host`, so only IP
//! addresses, `localhost` and the names given with `--admin-host` are
//! served. A cross-site form can only send `text/plain` and the like without
//! a CORS preflight (which this port never grants), so a mutation must say
//! `Content-Type: application/json`.

use super::{AdminState, error};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::net::IpAddr;

/// The host part of a `Host` header value (`name`, `name:port`, `1.2.3.4:80`,
/// `[::1]:80`), lower-cased.
fn host_name(value: &str) -> String {
    let v = value.trim();
    let host = if let Some(rest) = v.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if v.matches(':').count() == 1 {
        v.split(':').next().unwrap_or("")
    } else {
        v
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a request addressed to `host` may be served.
pub(crate) fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = host_name(host);
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || names.iter().any(|n| n.eq_ignore_ascii_case(&name))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The 415 answer for a mutation whose body is not declared JSON, if it is
/// not. Called by the handlers that take a body, so that a method a path
/// does not have still gets 405.
pub(crate) fn require_json(headers: &HeaderMap) -> Option<Response> {
    (!is_json(headers)).then(|| {
        error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "this call needs Content-Type: application/json",
        )
    })
}

/// Refuses requests to foreign host names (403).
pub async fn check_request(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if let Some(host) = host.filter(|h| !host_allowed(h, &s.hosts)) {
        tracing::warn!(host = %host, path = %req.uri().path(), "admin request for a foreign host name refused");
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "Host {host:?} is not a name of this admin port: use its IP address or localhost, or start the server with --admin-host {}",
                host_name(&host)
            ),
        );
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_localhost_and_configured_names_pass() {
        let names = vec!["chat-admin.internal".to_owned()];
        for ok in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "[::1]:9090",
            "::1",
            "10.1.2.3:80",
            "localhost:9090",
            "LOCALHOST",
            "chat-admin.internal:9090",
            "Chat-Admin.Internal.",
        ] {
            assert!(host_allowed(ok, &names), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:9090",
            "localhost.attacker.example",
            "127.0.0.1.nip.io:9090",
            "",
        ] {
            assert!(!host_allowed(bad, &names), "{bad}");
        }
    }
}
