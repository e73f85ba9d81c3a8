//! Secrets: the [`Secret`] type that never prints, and where each secret comes from: inline,
//! a `*_file`, or a systemd credential in `$CREDENTIALS_DIRECTORY`.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Config;
use super::error::{ConfigError, invalid};

/// Name of the systemd credential (`LoadCredential=webhook_secret:…`) read when neither
/// `webhook.secret` nor `webhook.secret_file` is set.
pub const WEBHOOK_SECRET_CREDENTIAL: &str = "webhook_secret";

/// Credential names for the Directus token and password.
pub const DIRECTUS_TOKEN_CREDENTIAL: &str = "directus_token";
pub const DIRECTUS_PASSWORD_CREDENTIAL: &str = "directus_password";

/// Shortest webhook secret or kiosk token accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// Credential name of the status page's admin token.
pub const ADMIN_TOKEN_CREDENTIAL: &str = "admin_token";

/// Credential name prefix for kiosk tokens given neither inline nor as a file:
/// `LoadCredential=kiosk_token_lobby:…` for the token named `lobby`.
pub const KIOSK_TOKEN_CREDENTIAL_PREFIX: &str = "kiosk_token_";

impl Config {
    /// Fills every secret from its `*_file` or its systemd credential when not given inline.
    pub(super) fn resolve_secrets(
        &mut self,
        credentials_dir: Option<&Path>,
    ) -> Result<(), ConfigError> {
        let webhook = &mut self.webhook;
        webhook.secret = resolve_secret(
            "webhook.secret",
            webhook.secret.take(),
            webhook.secret_file.as_deref(),
            credentials_dir,
            WEBHOOK_SECRET_CREDENTIAL,
        )?;
        if let Some(directus) = &mut self.directus {
            directus.token = resolve_secret(
                "directus.token",
                directus.token.take(),
                directus.token_file.as_deref(),
                credentials_dir,
                DIRECTUS_TOKEN_CREDENTIAL,
            )?;
            directus.password = resolve_secret(
                "directus.password",
                directus.password.take(),
                directus.password_file.as_deref(),
                credentials_dir,
                DIRECTUS_PASSWORD_CREDENTIAL,
            )?;
        }
        self.admin.token = resolve_secret(
            "admin.token",
            self.admin.token.take(),
            self.admin.token_file.as_deref(),
            credentials_dir,
            ADMIN_TOKEN_CREDENTIAL,
        )?;
        for (i, t) in self.clients.tokens.iter_mut().enumerate() {
            t.token = resolve_secret(
                &format!("clients.tokens[{i}].token"),
                t.token.take(),
                t.token_file.as_deref(),
                credentials_dir,
                &format!("{KIOSK_TOKEN_CREDENTIAL_PREFIX}{}", t.name),
            )?;
        }
        Ok(())
    }
}

fn resolve_secret(
    key: &str,
    inline: Option<Secret>,
    file: Option<&Path>,
    credentials_dir: Option<&Path>,
    credential: &str,
) -> Result<Option<Secret>, ConfigError> {
    let file_key = format!("{key}_file");
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(
            key,
            format!("set either {key} or {file_key}, not both"),
        )),
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(path)) => read_secret_file(path)
            .map(Some)
            .map_err(|message| invalid(file_key, message)),
        (None, None) => {
            let Some(dir) = credentials_dir else {
                return Ok(None);
            };
            let path = dir.join(credential);
            if !path.exists() {
                return Ok(None);
            }
            read_secret_file(&path).map(Some).map_err(|message| {
                invalid(key, format!("systemd credential {credential}: {message}"))
            })
        }
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(secret))
}

/// A secret value: never printed, compared in constant time.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// A fresh random secret of 32 hex characters.
    pub fn generate() -> Self {
        Self(crate::random_hex(16))
    }

    /// The secret itself. Only for comparing and for sending it to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with `candidate` in time independent of where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(candidate).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(********)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("********")
    }
}
