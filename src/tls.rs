//! HTTPS and WSS for kiosks (`[tls]`): rustls with the ring provider, ALPN `http/1.1` (a
//! WebSocket upgrade needs HTTP/1.1), and a certificate that is re-read on SIGHUP without
//! dropping connected kiosks.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::certificate::{self, CertificateError};
use crate::config::TlsConfig;

/// Why the listener's TLS cannot be set up or its certificate re-read. The text names the
/// `tls.*` key to fix, as the config check does.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `tls.cert_file` or `tls.key_file` does not hold a usable certificate and key: fix the
    /// file, then reload (SIGHUP) or restart.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// rustls refused its own default protocol versions; not a problem of the files.
    #[error("tls.cert_file: TLS set-up failed: {0}")]
    SetUp(rustls::Error),
}

/// Reads `cert_file` and `key_file` into the certificate handed to handshakes.
fn load(config: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    crate::upstream::tls::install_provider();
    Ok(certificate::load(&config.cert_file, &config.key_file)?)
}

/// The certificate handed to each new handshake; [`Resolver::set`] replaces it for the next
/// ones while established connections keep theirs.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The listener's TLS: an acceptor, and the files to re-read on SIGHUP.
#[derive(Clone)]
pub struct KioskTls {
    config: TlsConfig,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for KioskTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KioskTls")
            .field("cert_file", &self.config.cert_file)
            .field("key_file", &self.config.key_file)
            .finish_non_exhaustive()
    }
}

impl KioskTls {
    pub fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(load(config)?)),
        });
        let mut server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(TlsError::SetUp)?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: config.clone(),
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Re-reads `cert_file` and `key_file`. On success new handshakes get the new certificate;
    /// on error the previous one stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(load(&self.config)?);
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    pub fn cert_file(&self) -> &Path {
        &self.config.cert_file
    }
}
