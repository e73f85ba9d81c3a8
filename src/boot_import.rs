//! `directus-relay import-boot-config`: a Raspberry Pi configured from its SD card.
//!
//! The only partition a laptop can write on a freshly flashed card is the FAT boot partition
//! (`/boot/firmware` on Raspberry Pi OS bookworm). Whoever sets up a site puts `relay.toml` and
//! the credential files into `/boot/firmware/directus-relay/`; at the next start the package's
//! oneshot unit runs this command before the relay. It checks the whole set first — every file
//! known, the config valid with the credentials it will have — and only then moves it into
//! `/etc/directus-relay/` with the right modes, removes the secrets from the FAT partition and
//! leaves a note there of what it did. A set that does not check out is left in place, untouched
//! and never half-applied, with the reason in the journal and in a note beside it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{
    ADMIN_TOKEN_CREDENTIAL, Config, DIRECTUS_PASSWORD_CREDENTIAL, DIRECTUS_TOKEN_CREDENTIAL,
    KIOSK_TOKEN_CREDENTIAL_PREFIX, WEBHOOK_SECRET_CREDENTIAL,
};

/// Where the files are looked for on a Raspberry Pi.
pub const BOOT_DIR: &str = "/boot/firmware/directus-relay";
/// Where they go.
pub const ETC_DIR: &str = "/etc/directus-relay";
/// The note left on the boot partition after an import (no secrets in it).
pub const DONE_NOTE: &str = "IMPORTED.txt";
/// The note left on the boot partition when the files were not imported.
pub const FAILED_NOTE: &str = "NOT-IMPORTED.txt";
/// The largest file imported.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// What an import did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No folder, or nothing in it to import.
    Nothing,
    /// These files were moved into place (names only).
    Imported(Vec<String>),
}

/// One file of the set.
#[derive(Debug)]
struct File {
    name: String,
    bytes: Vec<u8>,
    credential: bool,
}

/// Imports the set in `from` into `etc`; see the module's description. The error says, in
/// words for whoever prepared the card, why nothing was imported.
pub fn run(from: &Path, etc: &Path) -> Result<Outcome, String> {
    let files = match read_set(from) {
        Ok(files) if files.is_empty() => return Ok(Outcome::Nothing),
        Ok(files) => files,
        Err(e) => return Err(refuse(from, e)),
    };
    if let Err(e) = check(&files, etc) {
        return Err(refuse(from, e));
    }
    let names =
        apply(&files, etc).map_err(|e| format!("could not write {}: {e}", etc.display()))?;
    for file in &files {
        // The secrets leave the FAT partition; the note says what was there.
        fs::remove_file(from.join(&file.name)).ok();
    }
    fs::remove_file(from.join(FAILED_NOTE)).ok();
    let note = format!(
        "directus-relay imported these files into {} at {} and removed them from here:\n{}\n",
        etc.display(),
        crate::clock::now_rfc3339(),
        names.join("\n")
    );
    fs::write(from.join(DONE_NOTE), note).ok();
    Ok(Outcome::Imported(names))
}

/// Leaves a note beside the files saying why they were not imported; returns the reason.
fn refuse(from: &Path, reason: String) -> String {
    let note = format!(
        "directus-relay did not import the files in this folder ({}): {reason}\nNothing was changed. Fix the files and start the Pi again.\n",
        crate::clock::now_rfc3339()
    );
    fs::write(from.join(FAILED_NOTE), note).ok();
    reason
}

fn is_credential(name: &str) -> bool {
    [
        WEBHOOK_SECRET_CREDENTIAL,
        DIRECTUS_TOKEN_CREDENTIAL,
        DIRECTUS_PASSWORD_CREDENTIAL,
        ADMIN_TOKEN_CREDENTIAL,
    ]
    .contains(&name)
        || name
            .strip_prefix(KIOSK_TOKEN_CREDENTIAL_PREFIX)
            .is_some_and(|token| {
                !token.is_empty()
                    && token
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
}

/// The files to import; none when the folder is missing or holds only the notes.
fn read_set(from: &Path) -> Result<Vec<File>, String> {
    let entries = match fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read the folder: {e}")),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read the folder: {e}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == DONE_NOTE || name == FAILED_NOTE {
            continue;
        }
        let credential = is_credential(&name);
        if name != "relay.toml" && !credential {
            return Err(format!(
                "{name:?} is not a file the relay imports: only relay.toml and the credential files {WEBHOOK_SECRET_CREDENTIAL}, {DIRECTUS_TOKEN_CREDENTIAL}, {DIRECTUS_PASSWORD_CREDENTIAL}, {ADMIN_TOKEN_CREDENTIAL} and {KIOSK_TOKEN_CREDENTIAL_PREFIX}<name>"
            ));
        }
        let meta = entry
            .metadata()
            .map_err(|e| format!("cannot read {name}: {e}"))?;
        if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "{name} is not a file of at most {MAX_FILE_BYTES} bytes"
            ));
        }
        let bytes = fs::read(entry.path()).map_err(|e| format!("cannot read {name}: {e}"))?;
        if credential && String::from_utf8_lossy(&bytes).trim().is_empty() {
            return Err(format!("{name} is empty"));
        }
        files.push(File {
            name,
            bytes,
            credential,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Checks that the config the relay will have after the import is valid, with the
/// credentials it will have (those installed now, replaced by those imported).
fn check(files: &[File], etc: &Path) -> Result<(), String> {
    // A folder of the relay's own beside the config, removed again: the secrets never go
    // through a shared temporary folder.
    let staging = etc.join(".import-check");
    fs::remove_dir_all(&staging).ok();
    let result = check_in(files, etc, &staging);
    fs::remove_dir_all(&staging).ok();
    result
}

fn check_in(files: &[File], etc: &Path, staging: &Path) -> Result<(), String> {
    let credentials = staging.join("credentials");
    fs::create_dir_all(staging)
        .and_then(|()| fs::set_permissions(staging, fs::Permissions::from_mode(0o700)))
        .and_then(|()| fs::create_dir(&credentials))
        .map_err(|e| format!("cannot check the files in {}: {e}", staging.display()))?;
    if let Ok(installed) = fs::read_dir(etc.join("credentials")) {
        for entry in installed.flatten() {
            fs::copy(entry.path(), credentials.join(entry.file_name())).ok();
        }
    }
    for file in files.iter().filter(|f| f.credential) {
        fs::write(credentials.join(&file.name), &file.bytes).map_err(|e| e.to_string())?;
    }
    let toml = match files.iter().find(|f| f.name == "relay.toml") {
        Some(file) => String::from_utf8(file.bytes.clone())
            .map_err(|_| "relay.toml is not UTF-8 text".to_owned())?,
        None => fs::read_to_string(etc.join("relay.toml"))
            .map_err(|e| format!("there is no relay.toml here or in {}: {e}", etc.display()))?,
    };
    let config = Config::from_toml_with_credentials(&toml, Some(&credentials))
        .map_err(|e| format!("relay.toml with these credentials is not valid: {e}"))?;
    if config.needs_webhook_secret() && config.webhook.secret.is_none() {
        return Err(format!(
            "webhook.secret is not set: put a file {WEBHOOK_SECRET_CREDENTIAL} holding it beside relay.toml"
        ));
    }
    Ok(())
}

/// Moves the files into place: credentials mode 0600 in `credentials/` (0700), `relay.toml`
/// mode 0644 (the service's dynamic user reads it), the one it replaces kept as
/// `relay.toml.before-import`. Each through a temporary file, fsync and rename.
fn apply(files: &[File], etc: &Path) -> std::io::Result<Vec<String>> {
    let credentials = etc.join("credentials");
    fs::create_dir_all(&credentials)?;
    fs::set_permissions(&credentials, fs::Permissions::from_mode(0o700))?;
    let mut names = Vec::new();
    for file in files {
        let (dir, mode) = if file.credential {
            (credentials.as_path(), 0o600)
        } else {
            let current = etc.join("relay.toml");
            if current.exists() {
                fs::copy(&current, etc.join("relay.toml.before-import"))?;
            }
            (etc, 0o644)
        };
        write_with_mode(dir, &file.name, &file.bytes, mode)?;
        names.push(dir.join(&file.name).display().to_string());
    }
    fs::File::open(&credentials)?.sync_all()?;
    fs::File::open(etc)?.sync_all()?;
    Ok(names)
}

fn write_with_mode(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp: PathBuf = dir.join(format!("{name}.importing"));
    {
        let mut file = fs::File::create(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "sd-card-secret-0123456789";

    fn valid_toml() -> String {
        "[webhook]\n[[collections]]\nname = \"screens\"\n[[clients.tokens]]\nname = \"screens\"\ncollections = [\"*\"]\n".into()
    }

    fn card(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            fs::write(dir.path().join(name), text).expect("write");
        }
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn a_valid_set_is_moved_into_place_with_its_modes_and_the_secrets_leave_the_card() {
        let toml = valid_toml();
        let boot = card(&[
            ("relay.toml", &toml),
            ("webhook_secret", SECRET),
            ("kiosk_token_screens", "kiosk-token-0123456789\n"),
        ]);
        let etc = tempfile::tempdir().expect("tempdir");
        fs::write(etc.path().join("relay.toml"), "# the package's example\n").expect("write");

        let outcome = run(boot.path(), etc.path()).expect("imported");
        let Outcome::Imported(names) = outcome else {
            panic!("nothing imported")
        };
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(
            fs::read_to_string(etc.path().join("relay.toml")).expect("read"),
            toml
        );
        assert_eq!(
            fs::read_to_string(etc.path().join("relay.toml.before-import")).expect("read"),
            "# the package's example\n"
        );
        assert_eq!(mode(&etc.path().join("relay.toml")), 0o644);
        assert_eq!(mode(&etc.path().join("credentials")), 0o700);
        let secret = etc.path().join("credentials/webhook_secret");
        assert_eq!(fs::read_to_string(&secret).expect("read"), SECRET);
        assert_eq!(mode(&secret), 0o600);
        assert_eq!(
            mode(&etc.path().join("credentials/kiosk_token_screens")),
            0o600
        );

        let left: Vec<String> = fs::read_dir(boot.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            vec![DONE_NOTE.to_owned()],
            "only the note stays on the card"
        );
        let note = fs::read_to_string(boot.path().join(DONE_NOTE)).expect("note");
        assert!(
            note.contains("webhook_secret") && !note.contains(SECRET),
            "{note}"
        );

        // The next start finds nothing to do.
        assert_eq!(run(boot.path(), etc.path()), Ok(Outcome::Nothing));
    }

    #[test]
    fn a_broken_config_is_reported_and_nothing_is_applied() {
        let broken = valid_toml().replace("[webhook]", "[webhook]\nsecrett = \"x\"");
        let boot = card(&[("relay.toml", &broken), ("webhook_secret", SECRET)]);
        let etc = tempfile::tempdir().expect("tempdir");
        let error = run(boot.path(), etc.path()).expect_err("refused");
        assert!(error.contains("secrett"), "names the wrong key: {error}");
        assert!(!etc.path().join("relay.toml").exists(), "nothing applied");
        assert!(!etc.path().join("credentials").exists(), "nothing applied");
        assert!(boot.path().join("relay.toml").exists(), "left in place");
        assert!(boot.path().join("webhook_secret").exists(), "left in place");
        let note = fs::read_to_string(boot.path().join(FAILED_NOTE)).expect("note");
        assert!(note.contains("secrett") && !note.contains(SECRET), "{note}");
    }

    #[test]
    fn a_missing_secret_or_an_unknown_file_is_refused() {
        let etc = tempfile::tempdir().expect("tempdir");
        let no_secret = card(&[
            ("relay.toml", &valid_toml()),
            ("kiosk_token_screens", "kiosk-token-0123456789"),
        ]);
        let error = run(no_secret.path(), etc.path()).expect_err("refused");
        assert!(error.contains("webhook.secret"), "{error}");

        let stray = card(&[("relay.toml", &valid_toml()), ("id_rsa", "key")]);
        let error = run(stray.path(), etc.path()).expect_err("refused");
        assert!(
            error.contains("\"id_rsa\" is not a file the relay imports"),
            "{error}"
        );
        assert!(stray.path().join("relay.toml").exists());
    }

    #[test]
    fn credentials_alone_join_the_installed_config() {
        let etc = tempfile::tempdir().expect("tempdir");
        fs::write(etc.path().join("relay.toml"), valid_toml()).expect("write");
        let boot = card(&[("webhook_secret", SECRET)]);
        let error = run(boot.path(), etc.path()).expect_err("the kiosk token is still missing");
        assert!(error.contains("kiosk_token_screens"), "{error}");
        fs::write(
            boot.path().join("kiosk_token_screens"),
            "kiosk-token-0123456789",
        )
        .expect("write");
        assert!(matches!(
            run(boot.path(), etc.path()),
            Ok(Outcome::Imported(_))
        ));
        assert_eq!(
            fs::read_to_string(etc.path().join("relay.toml")).expect("read"),
            valid_toml(),
            "the installed config stays"
        );
    }

    #[test]
    fn no_folder_is_nothing_to_do() {
        let etc = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            run(&etc.path().join("missing"), etc.path()),
            Ok(Outcome::Nothing)
        );
    }
}
