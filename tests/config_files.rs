//! Every config file shipped in the repo parses, and every file in `tests/invalid-configs/`
//! fails with the error its first line announces (`# error: <words>`).

use std::fs;
use std::path::Path;

use directus_relay::Config;

fn toml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_config_parses() {
    let files: Vec<_> = ["examples", "systemd"]
        .iter()
        .flat_map(|d| toml_files(d))
        .collect();
    assert!(files.len() >= 3, "found {files:?}");
    let credentials = tempfile::tempdir().expect("tempdir");
    fs::write(
        credentials.path().join("webhook_secret"),
        "from-a-systemd-credential\n",
    )
    .expect("write credential");
    fs::write(
        credentials.path().join("kiosk_token_screens"),
        "kiosk-token-from-a-credential\n",
    )
    .expect("write credential");
    for file in files {
        let text = fs::read_to_string(&file).expect("read");
        // Files that point at secret files are checked with a stand-in for them.
        let stand_in = credentials
            .path()
            .join("webhook_secret")
            .display()
            .to_string();
        let text = text
            .replace("/etc/directus-relay/webhook_secret", &stand_in)
            .replace("/etc/directus-relay/directus_token", &stand_in)
            .replace("/etc/directus-relay/kiosk_token", &stand_in);
        let config = Config::from_toml_with_credentials(&text, Some(credentials.path()))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            config.webhook.secret.is_some(),
            "{}: no secret",
            file.display()
        );
    }
}

#[test]
fn every_invalid_config_fails_with_its_error() {
    let files = toml_files("tests/invalid-configs");
    assert!(files.len() >= 15, "found {files:?}");
    for file in files {
        let text = fs::read_to_string(&file).expect("read");
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# error: "))
            .unwrap_or_else(|| panic!("{}: first line must be '# error: ...'", file.display()));
        match Config::from_toml(&text) {
            Ok(_) => panic!("{} was accepted", file.display()),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains(expected),
                    "{}:\n  expected: {expected}\n  got: {message}",
                    file.display()
                );
            }
        }
    }
}

/// An error names the file by the path it was given, also when that path is under the working
/// directory (systemd starts the relay in "/", and "etc/directus-relay/relay.toml" is no path an
/// operator would look for).
#[test]
fn a_config_error_names_the_file_by_its_full_path() {
    let dir = tempfile::Builder::new()
        .prefix(".config-error-path")
        .tempdir_in(std::env::current_dir().expect("cwd"))
        .expect("tempdir");
    let path = dir.path().join("relay.toml");
    fs::write(&path, "listne = \"127.0.0.1:8080\"\n").expect("write");
    let message = Config::load(Some(&path))
        .expect_err("unknown key")
        .to_string();
    assert!(
        message.contains(&format!("listne: unknown key (from {})", path.display())),
        "{message}"
    );
}

#[test]
fn the_secret_can_come_from_a_systemd_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("webhook_secret"),
        "credential-secret-0123\n",
    )
    .expect("write");
    let config =
        Config::from_toml_with_credentials("clients.allow_anonymous = true", Some(dir.path()))
            .expect("valid");
    let secret = config.webhook.secret.expect("secret from the credential");
    assert_eq!(secret.expose(), "credential-secret-0123");
}

#[test]
fn secrets_never_show_in_debug_or_the_printed_config() {
    let config = Config::from_toml(
        "clients.allow_anonymous = true\n[webhook]\nsecret = \"very-secret-value-42\"",
    )
    .expect("valid");
    assert!(!format!("{config:?}").contains("very-secret-value-42"));
    let printed = config.to_toml();
    assert!(!printed.contains("very-secret-value-42"), "{printed}");
    assert!(printed.contains("secret = \"********\""), "{printed}");
}

#[test]
fn sizes_and_durations_read_as_written() {
    let config = Config::from_toml(
        "shutdown_grace = \"1500ms\"\nclients.allow_anonymous = true\n[limits]\nreplay_bytes = \"2MiB\"\nmirror_bytes = 4096\nwebhook_body_bytes = \"64 KiB\"",
    )
    .expect("valid");
    assert_eq!(
        config.shutdown_grace,
        std::time::Duration::from_millis(1500)
    );
    assert_eq!(config.limits.replay_bytes, 2 << 20);
    assert_eq!(config.limits.mirror_bytes, 4096);
    assert_eq!(config.limits.webhook_body_bytes, 64 << 10);
    // And print back in the same units.
    let printed = config.to_toml();
    assert!(printed.contains("replay_bytes = \"2MiB\""), "{printed}");
    assert!(printed.contains("shutdown_grace = \"1500ms\""), "{printed}");
    let again = Config::from_toml(&printed).expect("the printed config parses");
    assert_eq!(again.limits.replay_bytes, config.limits.replay_bytes);
    assert_eq!(again.shutdown_grace, config.shutdown_grace);
}

#[test]
fn event_shaping_reads_as_written_with_defaults_for_the_rest() {
    let config = Config::from_toml(
        r#"clients.allow_anonymous = true
[[collections]]
name = "menu"
namespace = "/menu"
event_name = "{collection}:{action}"
event_names = { update = "menu:changed", pre_delete = "menu:going" }
pre_delete = false
emit_fields = ["title", "image.url"]
emit_payload = false
[[collections]]
name = "tickers"
compact = true
[[collections]]
name = "screens"
"#,
    )
    .expect("valid");
    let menu = &config.collections[0];
    assert_eq!(menu.namespace, "/menu");
    assert_eq!(menu.event_template("create"), "{collection}:{action}");
    assert_eq!(menu.event_template("update"), "menu:changed");
    assert_eq!(menu.event_template("pre-delete"), "menu:going");
    assert!(!menu.pre_delete);
    assert_eq!(menu.emit_fields, ["title", "image.url"]);
    assert!(!menu.emit_payload && !menu.compact);
    assert!(config.collections[1].compact);
    let screens = &config.collections[2];
    assert_eq!(
        (
            screens.namespace.as_str(),
            screens.event_template("delete"),
            screens.pre_delete,
            screens.emit_payload,
            screens.compact
        ),
        ("/", "data.{action}", true, true, false)
    );
    assert!(screens.emit_fields.is_empty());
    // check-config prints them, and what it prints reads back the same.
    let printed = config.to_toml();
    assert!(printed.contains("pre-delete = \"menu:going\""), "{printed}");
    let again = Config::from_toml(&printed).expect("the printed config parses");
    assert_eq!(again.collections[0].event_names, menu.event_names);
    assert_eq!(again.collections[0].emit_fields, menu.emit_fields);
}
