//! The `directus-relay` binary as an operator runs it: configuration layering, config errors,
//! the zero-config start, systemd notifications and a clean exit on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::ws::next_text;
use common::{CREATE, SECRET, post_hook};

const BIN: &str = env!("CARGO_BIN_EXE_directus-relay");
const PATIENCE: Duration = Duration::from_secs(10);

fn relay() -> Command {
    let mut command = Command::new(BIN);
    // Only what each test sets reaches the relay.
    for (key, _) in std::env::vars() {
        if key.starts_with("RELAY_") || key == "NOTIFY_SOCKET" || key.starts_with("WATCHDOG_") {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "info");
    // Never the machine's /var/lib/directus-relay.
    let state = std::env::temp_dir().join(format!(
        "relay-binary-test-{}",
        directus_relay::random_hex(6)
    ));
    command.env("STATE_DIRECTORY", state);
    command
}

/// A running relay process whose stderr lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(mut command: Command) -> Running {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("relay starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `words` and returns it.
    fn wait_for(&mut self, words: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(words) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {words:?}; stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// The address from the "relay listening" log line.
    fn address(&mut self) -> SocketAddr {
        let line = self.wait_for("relay listening");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line}"));
        addr.parse().expect("socket address")
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "relay did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_config_layers_defaults_file_and_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        "listen = \"127.0.0.1:7000\"\nclients.allow_anonymous = true\n[webhook]\nsecret = \"file-secret-0123456789\"\n[[collections]]\nname = \"screens\"",
    );
    let output = relay()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("RELAY_LISTEN", "127.0.0.1:9999")
        .env("RELAY_WEBHOOK__SECRET", "env-secret-0123456789")
        .env("RELAY_LIMITS__KIOSK_QUEUE", "64")
        .env("RELAY_STATE_DIR", "")
        .env_remove("STATE_DIRECTORY")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        stdout.contains("listen = \"127.0.0.1:9999\""),
        "environment wins: {stdout}"
    );
    assert!(stdout.contains("kiosk_queue = 64"), "{stdout}");
    assert!(
        stdout.contains("state_dir = \"/var/lib/directus-relay\""),
        "empty variable ignored: {stdout}"
    );
    assert!(
        stdout.contains("name = \"screens\""),
        "file values kept: {stdout}"
    );
    assert!(stdout.contains("secret = \"********\""), "{stdout}");
    assert!(
        !stdout.contains("secret-0123456789"),
        "secret printed: {stdout}"
    );
}

#[test]
fn a_broken_config_exits_78_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "[limits]\nkiosk_queue = \"lots\"");
    let output = relay().arg("--config").arg(&path).output().expect("runs");
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("limits.kiosk_queue"), "{stderr}");

    let output = relay()
        .args(["--config", "/nonexistent/relay.toml"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("/nonexistent/relay.toml does not exist")
    );

    let output = relay()
        .env("RELAY_LISTEN", "nowhere")
        .arg("check-config")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("listen"));
}

#[test]
fn a_config_file_without_a_secret_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        "listen = \"127.0.0.1:0\"\nclients.allow_anonymous = true",
    );
    let output = relay().arg("--config").arg(&path).output().expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("webhook.secret is not set"), "{stderr}");
}

/// With no config file at all the relay starts in webhook mode on loopback with a secret and
/// a kiosk token it generates and prints, and only that secret is accepted.
#[tokio::test]
async fn zero_config_start_generates_and_prints_a_secret() {
    assert!(
        !Path::new(directus_relay::config::DEFAULT_CONFIG_PATH).exists(),
        "this test needs a machine without {}",
        directus_relay::config::DEFAULT_CONFIG_PATH
    );
    let mut command = relay();
    command.env("RELAY_LISTEN", "127.0.0.1:0");
    let mut running = Running::spawn(command);
    let line = running.wait_for("X-Relay-Secret:");
    let secret = line.rsplit(' ').next().expect("secret").trim().to_owned();
    assert_eq!(secret.len(), 32, "{line}");
    let line = running.wait_for("auth: { token:");
    let token = line.split('"').nth(1).expect("token").to_owned();
    assert_eq!(token.len(), 32, "{line}");
    assert_ne!(token, secret);
    let addr = running.address();
    assert_eq!(post_hook(addr, Some(&secret), CREATE).await.0, 202);
    assert_eq!(post_hook(addr, Some(SECRET), CREATE).await.0, 401);
    assert!(running.terminate().success());
    // The secret and the token are printed once, for the operator, and never logged.
    while let Ok(line) = running.lines.recv_timeout(Duration::from_millis(200)) {
        assert!(!line.contains(&secret), "secret logged: {line}");
        assert!(!line.contains(&token), "token logged: {line}");
    }
}

/// READY=1 once listening, STATUS=, WATCHDOG=1 while the hub is alive, STOPPING=1 on SIGTERM,
/// then exit 0.
#[tokio::test]
async fn systemd_hears_ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    notify.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let path = write_config(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\nclients.allow_anonymous = true\n[webhook]\nsecret = \"{SECRET}\""
        ),
    );
    let mut command = relay();
    command
        .arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000");
    let mut running = Running::spawn(command);

    // Messages come one datagram at a time, several lines each, and watchdog pings keep coming:
    // wait for a line that starts with `wanted`, reading at most until PATIENCE has passed.
    let mut messages = Vec::new();
    let receive_until = |wanted: &str, messages: &mut Vec<String>| {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 4096];
        loop {
            assert!(
                Instant::now() < deadline,
                "no {wanted:?} within {PATIENCE:?}; got {messages:?}"
            );
            let n = notify
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("waiting for {wanted}: {e}; got {messages:?}"));
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            messages.push(message.clone());
            if message.lines().any(|l| l.starts_with(wanted)) {
                return message;
            }
        }
    };
    let ready = receive_until("READY=1", &mut messages);
    assert!(ready.contains("STATUS=upstream live"), "{ready}");
    let addr = running.address();
    assert_eq!(post_hook(addr, Some(SECRET), CREATE).await.0, 202);
    // The status follows the hub: a STATUS= line with the new seq, in whichever datagram.
    let seq_seen = |messages: &[String]| {
        messages
            .iter()
            .any(|m| m.contains("STATUS=") && m.contains("seq 1"))
    };
    while !seq_seen(&messages) {
        receive_until("STATUS=", &mut messages);
    }
    receive_until("WATCHDOG=1", &mut messages);
    assert!(running.terminate().success(), "exit 0 after SIGTERM");
    receive_until("STOPPING=1", &mut messages);
}

fn hangup(running: &Running) {
    let status = Command::new("kill")
        .args(["-HUP", &running.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// A TLS client that trusts only the test CA and offers HTTP/1.1.
fn tls_connector(pki: &common::pki::Pki) -> tokio_rustls::TlsConnector {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(pki.ca_der.clone()))
        .expect("CA");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Each connection does a full handshake: a resumed session shows the certificate of the
    // session it resumes.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(addr: SocketAddr, connector: &tokio_rustls::TlsConnector) -> Tls {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("TLS handshake")
}

/// The name of the certificate the relay presented on `tls`, among `issued`.
fn presented<'a>(tls: &Tls, issued: &[(&'a str, &common::pki::Issued)]) -> &'a str {
    let der = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
    issued
        .iter()
        .find(|(_, i)| i.der == der)
        .map(|(name, _)| *name)
        .unwrap_or("an unknown certificate")
}

/// POSTs a webhook over `tls` with HTTP/1.1 and returns the status.
async fn https_post_hook(mut tls: Tls, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "POST /hooks/directus HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nX-Relay-Secret: {SECRET}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .ok();
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

fn tls_config_file(dir: &Path, section: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "listen = \"127.0.0.1:0\"\nclients.allow_anonymous = true\n[webhook]\nsecret = \"{SECRET}\"\n[[collections]]\nname = \"screens\"\n{section}"
        ),
    )
}

/// SIGHUP (`systemctl reload`) re-reads the certificate: new handshakes get the new one, a
/// kiosk connected before keeps receiving, and a bad file keeps the certificate in use.
#[tokio::test]
async fn sighup_rereads_the_certificate_and_keeps_connected_kiosks() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let pki = common::pki::Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let first = pki.issue("first");
    let path = tls_config_file(dir.path(), &first.section(dir.path()));
    let mut command = relay();
    command.arg("--config").arg(&path);
    let mut running = Running::spawn(command);
    let addr = running.address();
    let connector = tls_connector(&pki);

    // A kiosk on wss, with the first certificate.
    let tls = tls_connect(addr, &connector).await;
    assert_eq!(presented(&tls, &[("first", &first)]), "first");
    let url = format!(
        "wss://localhost:{}/socket.io/?EIO=4&transport=websocket",
        addr.port()
    );
    let (mut kiosk, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("WebSocket over TLS");
    assert!(next_text(&mut kiosk, PATIENCE).await.starts_with("0{"));
    kiosk.send(Message::text("40")).await.expect("join /");
    while !next_text(&mut kiosk, PATIENCE)
        .await
        .starts_with("42[\"relay.status\"")
    {}

    // The certificate is renewed; the relay is told.
    let second = pki.issue("second");
    second.write(dir.path());
    let both = [("first", &first), ("second", &second)];
    hangup(&running);
    running.wait_for("reloaded the TLS certificate");
    let tls = tls_connect(addr, &connector).await;
    assert_eq!(
        presented(&tls, &both),
        "second",
        "a new handshake gets the new certificate"
    );
    assert_eq!(https_post_hook(tls, CREATE).await, 202);

    // The kiosk connected before the reload still receives.
    let event = loop {
        let text = next_text(&mut kiosk, PATIENCE).await;
        if text.starts_with("42[\"data.create\"") {
            break text;
        }
    };
    assert!(event.contains("Lobby"), "{event}");

    // A broken file at the next reload: the relay keeps the certificate it has.
    std::fs::write(dir.path().join("cert.pem"), "-----BEGIN CERTIFICATE-----\n").expect("write");
    hangup(&running);
    let line = running.wait_for("kept the previous certificate");
    assert!(line.contains("tls.cert_file"), "{line}");
    let tls = tls_connect(addr, &connector).await;
    assert_eq!(presented(&tls, &both), "second");
    assert_eq!(https_post_hook(tls, CREATE).await, 202);

    assert!(running.terminate().success());
}

/// Without `[tls]` SIGHUP has nothing to reload and must not end the relay (systemd's
/// `ExecReload=` sends it).
#[tokio::test]
async fn sighup_without_tls_leaves_the_relay_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tls_config_file(dir.path(), "");
    let mut command = relay();
    command.arg("--config").arg(&path);
    let mut running = Running::spawn(command);
    let addr = running.address();
    hangup(&running);
    running.wait_for("nothing to reload");
    assert_eq!(post_hook(addr, Some(SECRET), CREATE).await.0, 202);
    assert!(running.terminate().success(), "exit 0 after SIGTERM");
}

/// A certificate the relay cannot use is a configuration error (exit 78) that names the key,
/// for `check-config` and at start-up alike.
#[test]
fn an_unusable_certificate_is_a_config_error() {
    let pki = common::pki::Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let issued = pki.issue("relay");
    let path = tls_config_file(dir.path(), &issued.section(dir.path()));
    let output = relay()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(output.status.success(), "a good certificate passes");

    let cases: [(&str, &str, &str); 3] = [
        ("not a certificate\n", &issued.key_pem, "tls.cert_file: "),
        (&issued.cert_pem, "not a key\n", "tls.key_file: "),
        (
            &issued.cert_pem,
            &pki.issue("other").key_pem,
            "is not the key of the certificate",
        ),
    ];
    for (cert, key, expected) in cases {
        std::fs::write(dir.path().join("cert.pem"), cert).expect("write");
        std::fs::write(dir.path().join("key.pem"), key).expect("write");
        for command in [&["check-config"][..], &["run"][..]] {
            let output = relay()
                .args(command)
                .arg("--config")
                .arg(&path)
                .output()
                .expect("runs");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(78), "{command:?}: {stderr}");
            assert!(stderr.contains(expected), "{command:?}: {stderr}");
        }
    }
}

/// `log.format = "json"`: every stderr line is one JSON object with the level, the message and
/// its fields; `log.level` chooses what is logged when `RUST_LOG` is unset.
#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\nclients.allow_anonymous = true\n[webhook]\nsecret = \"{SECRET}\"\n[log]\nformat = \"json\"\nlevel = \"warn,directus_relay=info\""
        ),
    );
    let mut command = relay();
    command.arg("--config").arg(&path).env_remove("RUST_LOG");
    let mut running = Running::spawn(command);
    let line = running.wait_for("relay listening");
    let record: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(record["level"], "INFO", "{line}");
    assert_eq!(record["fields"]["message"], "relay listening", "{line}");
    let addr: SocketAddr = record["fields"]["addr"]
        .as_str()
        .expect("addr field")
        .parse()
        .expect("socket address");
    assert_eq!(
        post_hook(addr, Some("a-wrong-secret-0123"), CREATE).await.0,
        401
    );
    let line = running.wait_for("webhook refused");
    let record: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(record["level"], "WARN", "{line}");
    assert!(running.terminate().success());
    for line in running
        .seen
        .iter()
        .chain(running.lines.try_iter().collect::<Vec<_>>().iter())
    {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

/// A relay whose final save fails says so in an ERROR line and exits non-zero, promptly.
#[tokio::test]
async fn a_failed_final_save_is_an_error_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("state-is-a-file");
    std::fs::write(&not_a_dir, b"").expect("write");
    let path = write_config(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\nclients.allow_anonymous = true\n[webhook]\nsecret = \"{SECRET}\"\n[[collections]]\nname = \"screens\"\n",
            not_a_dir.display()
        ),
    );
    let mut command = relay();
    command.arg("--config").arg(&path);
    let mut running = Running::spawn(command);
    let addr = running.address();
    assert_eq!(post_hook(addr, Some(SECRET), CREATE).await.0, 202);
    let status = running.terminate();
    assert_eq!(
        status.code(),
        Some(1),
        "exit status after a failed final save"
    );
    let line = running.wait_for("the final save failed");
    assert!(line.contains("ERROR"), "{line}");
}
