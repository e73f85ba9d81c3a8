//! Loading: built-in defaults, then a TOML file, then `RELAY_*` environment variables, layered
//! by figment; then secrets are resolved and every value is validated.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

use super::defaults;
use super::error::ConfigError;
use super::{Config, Secret, TokenConfig};

/// Where the relay looks for its config file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/directus-relay/relay.toml";

/// The name of the kiosk token generated when the relay starts without a config file.
pub const GENERATED_TOKEN_NAME: &str = "generated";

/// Where a configuration came from, for the operator's benefit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A config file was read.
    File(PathBuf),
    /// No file: built-in defaults and environment only.
    Defaults,
}

impl Config {
    /// Loads the configuration: `path` if given (it must exist), else [`DEFAULT_CONFIG_PATH`]
    /// if it exists, else defaults only; then `RELAY_*` variables; then resolves secrets and
    /// validates.
    pub fn load(path: Option<&Path>) -> Result<(Config, Source), ConfigError> {
        let source = match path {
            Some(p) if !p.exists() => return Err(ConfigError::Missing { path: p.into() }),
            Some(p) => Source::File(p.into()),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Source::File(DEFAULT_CONFIG_PATH.into())
            }
            None => Source::Defaults,
        };
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Source::File(path) = &source {
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut config: Config = figment
            .merge(env_provider())
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        config.resolve_secrets(credentials.as_deref())?;
        if source == Source::Defaults && !config.clients.admits_anyone() {
            config.clients.tokens.push(TokenConfig {
                name: GENERATED_TOKEN_NAME.into(),
                token: Some(Secret::generate()),
                token_file: None,
                collections: defaults::all_collections(),
                devices: None,
            });
        }
        config.validate()?;
        Ok((config, source))
    }

    /// Parses a TOML document on its own (no environment), for tests and examples.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_with_credentials(text, None)
    }

    /// Parses a TOML document with secrets looked up in `credentials_dir` as systemd's
    /// `$CREDENTIALS_DIRECTORY` would provide them.
    pub fn from_toml_with_credentials(
        text: &str,
        credentials_dir: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        config.resolve_secrets(credentials_dir)?;
        config.validate()?;
        Ok(config)
    }
}

/// `RELAY_*` environment variables, `__` for nesting. Empty values count as unset (figment
/// alone would read `RELAY_X=` as an empty string).
fn env_provider() -> Env {
    Env::prefixed("RELAY_")
        .filter(|key| {
            let name = format!("RELAY_{}", key.as_str().to_ascii_uppercase());
            std::env::var_os(name).is_some_and(|v| !v.is_empty())
        })
        .split("__")
}

fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = key_path(&e.path);
            let origin = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    // The path as given: figment shows it relative to the working directory,
                    // which under systemd is "/" ("etc/directus-relay/relay.toml").
                    Some(figment::Source::File(path)) => format!(" (from {})", path.display()),
                    Some(source) => format!(" (from {source})"),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            let what = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    let expected = expected.join(", ");
                    let key = if key.is_empty() { field.clone() } else { key };
                    return format!("{key}: unknown key{origin}; expected one of: {expected}");
                }
                kind => kind.to_string(),
            };
            if key.is_empty() {
                format!("{what}{origin}")
            } else {
                format!("{key}: {what}{origin}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `["collections", "0", "name"]` → `collections[0].name`, as the README writes keys.
fn key_path(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if part.chars().all(|c| c.is_ascii_digit()) && !key.is_empty() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}
