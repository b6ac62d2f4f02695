//! Authentication of `Connect`: a JWT in `authorization: Bearer`, signed
//! with a shared secret (HS256) or with a key from a JWK set (RS256,
//! ES256). The display name comes from the token. No transport types here:
//! the service maps [`AuthError`] to its status.

use crate::access::{ThreadAccess, ThreadsClaim};
use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Clock difference tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 5;
/// Longest display name taken from a token, in characters (as for
/// `x-chat-name`).
const MAX_NAME_CHARS: usize = 64;

/// The claims the server reads. `name` is the display name (else `sub`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Per-thread permissions (see [`crate::access`]); none: every thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<ThreadsClaim>,
}

/// Who a valid token names, and what it may read and write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    /// `None`: every thread (the token has no `threads` claim).
    pub access: Option<Arc<ThreadAccess>>,
}

/// Why a token was refused; the text is the reason the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Connect needs `authorization: Bearer <token>` (this server checks JWTs)")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("no key for this token (kid {0:?}, alg {1})")]
    UnknownKey(Option<String>, String),
    #[error("the token names no user: give a name or sub claim of 1 to 64 printable characters")]
    NoName,
    #[error("the token is malformed: {0}")]
    Malformed(String),
}

impl AuthError {
    /// The metric label of the refusal.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::UnknownKey(..) => "unknown_key",
            AuthError::NoName => "no_name",
            AuthError::Malformed(_) => "malformed",
        }
    }
}

/// The keys tokens are checked against.
enum Keys {
    /// HS256 with one shared secret.
    Secret(DecodingKey),
    /// RS256 / ES256 with the keys of a JWK set, chosen by `kid`.
    Set(Vec<(Option<String>, Algorithm, DecodingKey)>),
}

/// Checks bearer tokens.
pub struct Verifier {
    keys: Keys,
    /// Where the keys came from, for the log.
    pub source: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("source", &self.source)
            .finish()
    }
}

/// Reads a secret file: its bytes, without the trailing newline an editor
/// adds. Refuses a secret shorter than 32 bytes (HS256 is only as strong
/// as its secret).
pub fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut secret = std::fs::read(path)
        .with_context(|| format!("reading the JWT secret {}", path.display()))?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    if secret.len() < 32 {
        anyhow::bail!(
            "the JWT secret in {} is {} bytes; use at least 32 random bytes",
            path.display(),
            secret.len()
        );
    }
    Ok(secret)
}

impl Verifier {
    /// HS256 tokens signed with the secret in `path`.
    pub fn from_secret_file(path: &Path) -> anyhow::Result<Verifier> {
        let secret = read_secret(path)?;
        Ok(Verifier {
            keys: Keys::Secret(DecodingKey::from_secret(&secret)),
            source: format!("HS256 secret {}", path.display()),
        })
    }

    /// RS256 and ES256 tokens signed with a key of the JWK set in `path`.
    pub fn from_jwks_file(path: &Path) -> anyhow::Result<Verifier> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the JWK set {}", path.display()))?;
        let set: JwkSet = serde_json::from_str(&text)
            .with_context(|| format!("parsing the JWK set {}", path.display()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk)
                .with_context(|| format!("a key of the JWK set {}", path.display()))?;
            keys.push((jwk.common.key_id.clone(), alg, key));
        }
        if keys.is_empty() {
            anyhow::bail!("no RSA or EC (P-256) key in the JWK set {}", path.display());
        }
        Ok(Verifier {
            source: format!("{} keys of {}", keys.len(), path.display()),
            keys: Keys::Set(keys),
        })
    }

    /// The user a `Bearer` token names, or why it is refused. `bearer` is
    /// the value of the `authorization` metadata, if any.
    pub fn verify(&self, bearer: Option<&str>) -> Result<String, AuthError> {
        self.identify(bearer).map(|i| i.name)
    }

    /// The user a `Bearer` token names and the threads it grants, or why it
    /// is refused.
    pub fn identify(&self, bearer: Option<&str>) -> Result<Identity, AuthError> {
        let token = bearer
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let (alg, key) = match &self.keys {
            Keys::Secret(k) => (Algorithm::HS256, k),
            Keys::Set(keys) => keys
                .iter()
                .find(|(kid, alg, _)| {
                    *alg == header.alg && (header.kid.is_none() || *kid == header.kid)
                })
                .map(|(_, alg, k)| (*alg, k))
                .ok_or_else(|| {
                    AuthError::UnknownKey(header.kid.clone(), format!("{:?}", header.alg))
                })?,
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => AuthError::BadSignature,
            _ => AuthError::Malformed(e.to_string()),
        })?;
        let c = data.claims;
        let access = match &c.threads {
            None => None,
            Some(claim) => Some(Arc::new(
                ThreadAccess::from_claim(claim).map_err(|e| AuthError::Malformed(e.to_string()))?,
            )),
        };
        let name = c
            .name
            .or(c.sub)
            .filter(|n| {
                let chars = n.chars().count();
                (1..=MAX_NAME_CHARS).contains(&chars) && !n.chars().any(char::is_control)
            })
            .ok_or(AuthError::NoName)?;
        Ok(Identity { name, access })
    }
}

/// Counts authentication outcomes (`chat_auth_total{result}`).
#[derive(Clone)]
pub struct AuthMetrics {
    pub outcomes: prometheus::IntCounterVec,
}

impl AuthMetrics {
    /// Registers the counter in `r`, every result at 0.
    pub fn new(r: &prometheus::Registry) -> AuthMetrics {
        let outcomes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "chat_auth_total",
                "Connect authentications by result: ok, or why refused (missing, expired, not_yet_valid, bad_signature, unknown_key, no_name, malformed, name_header).",
            ),
            &["result"],
        )
        .expect("valid metric");
        r.register(Box::new(outcomes.clone()))
            .expect("unique metric");
        for l in [
            "ok",
            "missing",
            "expired",
            "not_yet_valid",
            "bad_signature",
            "unknown_key",
            "no_name",
            "malformed",
            "name_header",
        ] {
            outcomes.with_label_values(&[l]);
        }
        AuthMetrics { outcomes }
    }
}

/// An HS256 token for `name`, valid for `ttl` from now (the `token`
/// command: for development and scripts).
pub fn hs256_token(secret: &[u8], name: &str, ttl: Duration) -> anyhow::Result<String> {
    hs256_token_with(secret, name, ttl, None)
}

/// [`hs256_token`] with a `threads` claim (none: every thread).
pub fn hs256_token_with(
    secret: &[u8],
    name: &str,
    ttl: Duration,
    threads: Option<ThreadsClaim>,
) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        name: Some(name.to_owned()),
        sub: Some(name.to_owned()),
        exp: now + ttl.as_secs().max(1),
        nbf: Some(now),
        iat: Some(now),
        threads,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        Verifier {
            keys: Keys::Secret(DecodingKey::from_secret(SECRET)),
            source: "test".into(),
        }
    }

    fn token(claims: &Claims, secret: &[u8]) -> String {
        let key = EncodingKey::from_secret(secret);
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap();
        format!("Bearer {t}")
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn names_come_from_valid_tokens_and_every_refusal_says_why() {
        let v = verifier();
        let t = format!(
            "Bearer {}",
            hs256_token(SECRET, "ada", Duration::from_secs(60)).unwrap()
        );
        assert_eq!(v.verify(Some(&t)), Ok("ada".into()));
        assert_eq!(v.verify(None), Err(AuthError::Missing));
        assert_eq!(v.verify(Some("Basic x")), Err(AuthError::Missing));
        let claims = |exp, nbf, name: Option<&str>| Claims {
            name: name.map(str::to_owned),
            sub: None,
            exp,
            nbf,
            iat: None,
            threads: None,
        };
        let expired = token(&claims(now() - 60, None, Some("a")), SECRET);
        assert_eq!(v.verify(Some(&expired)), Err(AuthError::Expired));
        let early = token(&claims(now() + 600, Some(now() + 300), Some("a")), SECRET);
        assert_eq!(v.verify(Some(&early)), Err(AuthError::NotYetValid));
        let forged = token(
            &claims(now() + 60, None, Some("a")),
            b"another secret of 32 bytes......",
        );
        assert_eq!(v.verify(Some(&forged)), Err(AuthError::BadSignature));
        let nameless = token(&claims(now() + 60, None, None), SECRET);
        assert_eq!(v.verify(Some(&nameless)), Err(AuthError::NoName));
        assert!(matches!(
            v.verify(Some("Bearer not.a.jwt")),
            Err(AuthError::Malformed(_))
        ));
    }
}
