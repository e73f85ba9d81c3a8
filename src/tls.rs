//! HTTPS and WSS for kiosks (`[tls]`): rustls with the ring provider, ALPN `http/1.1` (a
//! WebSocket upgrade needs HTTP/1.1), and a certificate that is re-read on SIGHUP without
//! dropping connected kiosks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;

/// `[tls]`: the certificate kiosks see. Both files are PEM; the key may be PKCS#8, RSA
/// (PKCS#1) or SEC1 (EC).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain: the server's certificate first, then intermediates.
    pub cert_file: PathBuf,
    /// The private key of the first certificate.
    pub key_file: PathBuf,
}

impl TlsConfig {
    /// Reads both files and checks they make a usable certificate and key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.load().map(|_| ())
    }

    fn load(&self) -> Result<CertifiedKey, ConfigError> {
        certified_key(&self.cert_file, &self.key_file)
    }
}

/// A certificate problem, named by the key of the file at fault.
fn problem(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: format!("tls.{key}"),
        message,
    }
}

fn certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, ConfigError> {
    crate::upstream::tls::install_provider();
    let certs = read_certs(cert_file).map_err(|m| problem("cert_file", m))?;
    let key = read_key(key_file).map_err(|m| problem("key_file", m))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = provider.key_provider.load_private_key(key).map_err(|e| {
        problem(
            "key_file",
            format!("{}: unusable private key: {e}", key_file.display()),
        )
    })?;
    let certified = CertifiedKey::new(certs, key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(problem(
                "key_file",
                format!(
                    "{} is not the key of the certificate in {}",
                    key_file.display(),
                    cert_file.display()
                ),
            ))
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(problem(
            "cert_file",
            format!(
                "{}: the first certificate cannot be used: {e}",
                cert_file.display()
            ),
        )),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), pem_error(e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "{} is not a PEM certificate file: {}",
                path.display(),
                pem_error(e)
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!(
            "{} holds no PEM private key (PKCS#8, RSA or EC)",
            path.display()
        ),
        e => format!("cannot read {}: {}", path.display(), pem_error(e)),
    })
}

fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        e => format!("{e:?}"),
    }
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
    pub fn new(config: &TlsConfig) -> Result<Self, ConfigError> {
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(config.load()?)),
        });
        let mut server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| problem("cert_file", format!("TLS set-up failed: {e}")))?
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
    pub fn reload(&self) -> Result<(), ConfigError> {
        let fresh = Arc::new(self.config.load()?);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        }
    }

    fn message(result: Result<(), ConfigError>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn unusable_files_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = config(dir.path());
        let text = message(tls.validate());
        assert!(
            text.starts_with("tls.cert_file: cannot read ") && text.contains("No such file"),
            "{text}"
        );
        std::fs::write(&tls.cert_file, "not a certificate\n").expect("write");
        let text = message(tls.validate());
        assert!(
            text.starts_with("tls.cert_file: ") && text.contains("holds no PEM certificate"),
            "{text}"
        );
        std::fs::write(
            &tls.cert_file,
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let text = message(tls.validate());
        assert!(text.starts_with("tls.cert_file: "), "{text}");
    }
}
