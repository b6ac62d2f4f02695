//! TLS for both ports (rustls): certificate and key from PEM files, an
//! optional client CA for mutual TLS, reloaded from the same files on
//! demand (SIGHUP) without dropping open connections.

use anyhow::Context;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};

/// Where the TLS material is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; with
    /// it, every client must present one (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// The TLS configuration in force for each port.
pub struct TlsState {
    files: TlsFiles,
    /// Lock rule: held only to clone or replace the `Arc`, never across an
    /// await or a handshake.
    configs: RwLock<Configs>,
}

struct Configs {
    grpc: Arc<ServerConfig>,
    admin: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("files", &self.files)
            .finish()
    }
}

fn server_config(files: &TlsFiles, alpn: &[u8]) -> anyhow::Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect())
        .with_context(|| format!("reading the certificate {}", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the private key {}", files.key.display()))?;
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading the client CA {}", ca.display()))?
            {
                roots
                    .add(c.with_context(|| format!("parsing the client CA {}", ca.display()))?)
                    .with_context(|| format!("the client CA {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("the client CA {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the certificate and the key do not form a usable pair")?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

fn load(files: &TlsFiles) -> anyhow::Result<Configs> {
    Ok(Configs {
        // gRPC is HTTP/2 only; the admin port speaks HTTP/1.1.
        grpc: Arc::new(server_config(files, b"h2")?),
        admin: Arc::new(server_config(files, b"http/1.1")?),
    })
}

impl TlsState {
    /// Reads the files; fails with the file and the reason.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<TlsState>> {
        let configs = load(&files)?;
        Ok(Arc::new(TlsState {
            files,
            configs: RwLock::new(configs),
        }))
    }

    /// Reads the files again and uses them for new connections. On any
    /// error the configuration in force stays (and the error is returned).
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = load(&self.files)?;
        *self.configs.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The acceptor for a new connection on the gRPC port.
    pub fn grpc(&self) -> TlsAcceptor {
        let g = self.configs.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(g.grpc.clone())
    }

    /// The acceptor for a new connection on the admin port.
    pub fn admin(&self) -> TlsAcceptor {
        let g = self.configs.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(g.admin.clone())
    }
}
