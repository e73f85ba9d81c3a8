//! The `directus-relay` command.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use directus_relay::config::{self, Config, Secret, Source};
use directus_relay::{Reload, boot_import};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// mimalloc in the static (musl) builds: less memory per kiosk than musl's malloc and faster
/// under threads; see `Cargo.toml`.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration error (`EX_CONFIG`), so systemd can be told not to restart
/// a relay whose config is broken (`RestartPreventExitStatus=78`).
const EXIT_CONFIG: u8 = 78;

const USAGE: &str = "\
Usage: directus-relay [COMMAND] [--config PATH]

Commands:
  run            serve kiosks (the default)
  check-config   validate the configuration and print it, secrets masked
  check          connect to Directus and check token, permissions, activity and WebSockets
  setup-flow     create or update the Directus Flow that POSTs changes to this relay:
                   --relay-url URL   the webhook URL as Directus reaches it
                   admin token from $DIRECTUS_ADMIN_TOKEN or --admin-token-file PATH
  import-boot-config
                 move relay.toml and credential files from the SD card's boot partition
                 into /etc/directus-relay once they check out (run by the package's
                 directus-relay-import.service before the relay):
                   --from DIR   default /boot/firmware/directus-relay
                   --to DIR     default /etc/directus-relay

Options:
  -c, --config PATH   config file (default: /etc/directus-relay/relay.toml if it exists)
  -h, --help          this help
  -V, --version       the version

Environment: RELAY_* variables override the file (RELAY_WEBHOOK__SECRET=..., RELAY_LISTEN=...);
RUST_LOG sets the log level (default: info).";

#[derive(Debug, PartialEq)]
enum Command {
    Run,
    CheckConfig,
    Check,
    SetupFlow {
        relay_url: String,
        admin_token_file: Option<PathBuf>,
    },
    ImportBootConfig {
        from: PathBuf,
        to: PathBuf,
    },
    Help,
    Version,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<(Command, Option<PathBuf>), String> {
    let mut command: Option<String> = None;
    let mut config = None;
    let mut relay_url = None;
    let mut admin_token_file = None;
    let mut from = None;
    let mut to = None;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok((Command::Help, None)),
            "-V" | "--version" => return Ok((Command::Version, None)),
            "-c" | "--config" => config = Some(PathBuf::from(value("--config")?)),
            "--relay-url" => relay_url = Some(value("--relay-url")?),
            "--admin-token-file" => {
                admin_token_file = Some(PathBuf::from(value("--admin-token-file")?))
            }
            "--from" => from = Some(PathBuf::from(value("--from")?)),
            "--to" => to = Some(PathBuf::from(value("--to")?)),
            "run" | "check-config" | "check" | "setup-flow" | "import-boot-config"
                if command.is_none() =>
            {
                command = Some(flag.clone())
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let command = match command.as_deref().unwrap_or("run") {
        "check-config" => Command::CheckConfig,
        "check" => Command::Check,
        "setup-flow" => Command::SetupFlow {
            relay_url: relay_url.ok_or(
                "setup-flow needs --relay-url URL (the webhook URL as Directus reaches it)",
            )?,
            admin_token_file,
        },
        "import-boot-config" => Command::ImportBootConfig {
            from: from.unwrap_or_else(|| boot_import::BOOT_DIR.into()),
            to: to.unwrap_or_else(|| boot_import::ETC_DIR.into()),
        },
        _ => Command::Run,
    };
    Ok((command, config))
}

fn main() -> ExitCode {
    let (command, config_path) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("directus-relay: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("directus-relay {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::ImportBootConfig { from, to } => return import_boot_config(&from, &to),
        _ => {}
    }
    let (config, source) = match Config::load(config_path.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("directus-relay: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if command == Command::CheckConfig {
        match &source {
            Source::File(path) => println!("# configuration OK: {}", path.display()),
            Source::Defaults => println!("# configuration OK: built-in defaults (no config file)"),
        }
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_tracing(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(%e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::Check => return runtime.block_on(check(&config)),
        Command::SetupFlow {
            relay_url,
            admin_token_file,
        } => return runtime.block_on(setup_flow(&config, &relay_url, admin_token_file)),
        _ => {}
    }
    match runtime.block_on(serve(config, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Imports the SD card's set of files; says what it did in the journal's words.
fn import_boot_config(from: &std::path::Path, to: &std::path::Path) -> ExitCode {
    match boot_import::run(from, to) {
        Ok(boot_import::Outcome::Nothing) => {
            println!("nothing to import from {}", from.display());
            ExitCode::SUCCESS
        }
        Ok(boot_import::Outcome::Imported(names)) => {
            for name in &names {
                println!("imported {name}");
            }
            println!(
                "removed them from {} (a note, {}, says so there)",
                from.display(),
                boot_import::DONE_NOTE
            );
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!(
                "directus-relay: did not import {}: {reason}; nothing was changed, the files are left in place (and {} there says why)",
                from.display(),
                boot_import::FAILED_NOTE
            );
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn check(config: &Config) -> ExitCode {
    let lines = directus_relay::upstream::check::run(config).await;
    let url = config.directus.as_ref().map(|d| &d.url);
    print!("{}", directus_relay::upstream::check::render(url, &lines));
    if lines.iter().all(|l| l.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn setup_flow(
    config: &Config,
    relay_url: &str,
    admin_token_file: Option<PathBuf>,
) -> ExitCode {
    use directus_relay::upstream::flow;
    let relay_url = match url::Url::parse(relay_url) {
        Ok(url) => url,
        Err(e) => {
            eprintln!("directus-relay: --relay-url {relay_url:?} is not a URL: {e}");
            return ExitCode::from(2);
        }
    };
    let token = match admin_token_file {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().to_owned(),
            Err(e) => {
                eprintln!("directus-relay: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => std::env::var("DIRECTUS_ADMIN_TOKEN").unwrap_or_default(),
    };
    if token.is_empty() {
        eprintln!(
            "directus-relay: setup-flow needs an admin token: set DIRECTUS_ADMIN_TOKEN or --admin-token-file"
        );
        return ExitCode::from(2);
    }
    if let Some(warning) = flow::deny_list_warning(&relay_url) {
        eprintln!("warning: {warning}");
    }
    let token = Secret::new(token);
    match flow::setup(config, token.clone(), &relay_url).await {
        Ok(flow::Outcome::Created(id)) => {
            println!(
                "created the Flow {:?} ({id}) posting to {relay_url}",
                flow::FLOW_NAME
            );
        }
        Ok(flow::Outcome::Updated(id)) => {
            println!(
                "updated the Flow {:?} ({id}) posting to {relay_url}",
                flow::FLOW_NAME
            );
        }
        Err(e) => {
            eprintln!("directus-relay: setup-flow failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    match flow::setup_heartbeat(config, token).await {
        Ok(Some(note)) => println!("{note}"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("directus-relay: setup-flow could not create the heartbeat collection: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

async fn serve(mut config: Config, source: Source) -> anyhow::Result<()> {
    if config.webhook.secret.is_none() && config.needs_webhook_secret() {
        if let Source::File(path) = &source {
            anyhow::bail!(
                "webhook.secret is not set in {}: set webhook.secret or webhook.secret_file, or provide the systemd credential {}",
                path.display(),
                config::WEBHOOK_SECRET_CREDENTIAL
            );
        }
        let secret = Secret::generate();
        eprintln!(
            "directus-relay: no config file, so webhook mode with a secret generated for this run.\n\
             \x20 Point the Directus Flow at: POST http://{}{}\n\
             \x20 with the header:           X-Relay-Secret: {}\n\
             \x20 The secret changes at every start; set webhook.secret in {} to keep one.",
            config.listen,
            config.webhook.path,
            secret.expose(),
            config::DEFAULT_CONFIG_PATH
        );
        config.webhook.secret = Some(secret);
    }
    if source == Source::Defaults
        && let Some(token) = config
            .clients
            .tokens
            .iter()
            .find(|t| t.name == config::GENERATED_TOKEN_NAME)
            .and_then(|t| t.token.as_ref())
    {
        eprintln!(
            "directus-relay: kiosks connect with a token generated for this run.\n\
             \x20 Socket.IO handshake:       auth: {{ token: \"{}\" }}\n\
             \x20 Example page:              examples/kiosk.html?token={}\n\
             \x20 Add [[clients.tokens]] in {} to keep one.",
            token.expose(),
            token.expose(),
            config::DEFAULT_CONFIG_PATH
        );
    }
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (listen): is another relay or service using that port?",
            config.listen
        )
    })?;
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    // Without a handler SIGHUP would end the relay; systemd's `ExecReload=` sends it.
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
        on_signal.cancel();
    });
    let reload = Reload::new();
    let on_hup = reload.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP received");
            on_hup.trigger();
        }
    });
    directus_relay::run_with_reload(config, listener, shutdown, reload).await
}

/// Logs to stderr: plain when under systemd's journal (which adds its own timestamps),
/// coloured on a terminal.
/// Logs to stderr as `log.format` says; `RUST_LOG` overrides `log.level`. Text under systemd
/// has no timestamp (the journal adds one) and no colours.
fn init_tracing(log: &config::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => {
            let builder = builder.with_ansi(std::io::stderr().is_terminal());
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                builder.without_time().init();
            } else {
                builder.init();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<(Command, Option<PathBuf>), String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_the_command_line() {
        assert_eq!(parse(&[]), Ok((Command::Run, None)));
        assert_eq!(
            parse(&["check-config", "--config", "a.toml"]),
            Ok((Command::CheckConfig, Some("a.toml".into())))
        );
        assert_eq!(
            parse(&["--config=b.toml"]),
            Ok((Command::Run, Some("b.toml".into())))
        );
        assert_eq!(
            parse(&["-c", "c.toml", "run"]),
            Ok((Command::Run, Some("c.toml".into())))
        );
        assert_eq!(parse(&["--help"]), Ok((Command::Help, None)));
        assert!(parse(&["--config"]).is_err());
        assert!(parse(&["serve"]).is_err());
        assert!(parse(&["run", "run"]).is_err());
        assert_eq!(parse(&["check"]), Ok((Command::Check, None)));
        assert_eq!(
            parse(&[
                "setup-flow",
                "--relay-url",
                "http://relay:8080/hooks/directus"
            ]),
            Ok((
                Command::SetupFlow {
                    relay_url: "http://relay:8080/hooks/directus".into(),
                    admin_token_file: None
                },
                None
            ))
        );
        assert!(parse(&["setup-flow"]).is_err(), "--relay-url is required");
        assert_eq!(
            parse(&["import-boot-config"]),
            Ok((
                Command::ImportBootConfig {
                    from: boot_import::BOOT_DIR.into(),
                    to: boot_import::ETC_DIR.into()
                },
                None
            ))
        );
        assert_eq!(
            parse(&["import-boot-config", "--from=/mnt/card", "--to", "/tmp/etc"]),
            Ok((
                Command::ImportBootConfig {
                    from: "/mnt/card".into(),
                    to: "/tmp/etc".into()
                },
                None
            ))
        );
    }
}
