//! The kiosk certificate as files: the PEM chain and private key that `[tls]` names, read and
//! checked into a rustls [`CertifiedKey`]. The config check and the listener's TLS both use it.

use std::path::Path;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const CERT_FILE: &str = "tls.cert_file";
const KEY_FILE: &str = "tls.key_file";

/// A certificate or key file that cannot be used, named by the config key of the file at fault
/// (`tls.cert_file` or `tls.key_file`); the message says what is wrong with the file.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct CertificateError {
    /// `tls.cert_file` or `tls.key_file`.
    pub key: &'static str,
    pub message: String,
}

/// A certificate problem, named by the key of the file at fault.
fn problem(key: &'static str, message: String) -> CertificateError {
    CertificateError { key, message }
}

/// Reads both files and checks they make a usable certificate and key: the certificate chain
/// in `cert_file` (the server's certificate first), and its private key in `key_file` (PKCS#8,
/// RSA or SEC1).
pub fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, CertificateError> {
    let certs = read_certs(cert_file).map_err(|m| problem(CERT_FILE, m))?;
    let key = read_key(key_file).map_err(|m| problem(KEY_FILE, m))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = provider.key_provider.load_private_key(key).map_err(|e| {
        problem(
            KEY_FILE,
            format!("{}: unusable private key: {e}", key_file.display()),
        )
    })?;
    let certified = CertifiedKey::new(certs, key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(problem(
                KEY_FILE,
                format!(
                    "{} is not the key of the certificate in {}",
                    key_file.display(),
                    cert_file.display()
                ),
            ))
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(problem(
            CERT_FILE,
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
