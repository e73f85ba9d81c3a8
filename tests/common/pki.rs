//! A test CA that issues server certificates for 127.0.0.1 and localhost, written as the PEM
//! files a `[tls]` section names. Shared by the root tests and kiosk-tests (`#[path]`).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct Pki {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// One issued certificate: its DER (what a client sees) and its key, as PEM.
pub struct Issued {
    pub der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `cert.pem` and `key.pem` into `dir` (replacing them) and returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// The `[tls]` section for files written by [`Issued::write`] into `dir`.
    pub fn section(&self, dir: &Path) -> String {
        let (cert, key) = self.write(dir);
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    }
}

impl Pki {
    pub fn new() -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "relay kiosk test CA");
        let cert = params.self_signed(&key).expect("CA cert");
        Pki {
            ca_pem: cert.pem(),
            ca_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost, named `name`.
    pub fn issue(&self, name: &str) -> Issued {
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        Issued {
            der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
