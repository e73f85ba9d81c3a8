//! The built-in default of every config key that has one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Mode;

pub fn listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
/// systemd's `StateDirectory=` when it set one, else the usual place.
pub fn state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/directus-relay"))
}
pub fn shutdown_grace() -> Duration {
    Duration::from_secs(5)
}
/// The machine's host name (`directus-relay` when it cannot be read).
pub fn site_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "directus-relay".into())
}
pub fn missing_after() -> Duration {
    Duration::from_secs(5 * 60)
}
pub fn max_screens() -> usize {
    1000
}
pub fn persist_interval() -> Duration {
    Duration::from_secs(5)
}
pub fn webhook_path() -> String {
    "/hooks/directus".into()
}
pub fn key_field() -> String {
    "id".into()
}
pub fn allowed_origins() -> Vec<String> {
    vec!["*".into()]
}
pub fn fields() -> Vec<String> {
    vec!["*".into()]
}
pub fn namespace() -> String {
    "/".into()
}
pub fn event_name() -> String {
    "data.{action}".into()
}
pub fn yes() -> bool {
    true
}
pub fn mode() -> Mode {
    Mode::Websocket
}
pub fn poll_interval() -> Duration {
    Duration::from_secs(5)
}
pub fn reconcile_interval() -> Duration {
    Duration::from_secs(300)
}
pub fn request_timeout() -> Duration {
    Duration::from_secs(10)
}
pub fn hub_inbox() -> usize {
    1024
}
pub fn replay_events() -> usize {
    10_000
}
pub fn replay_bytes() -> usize {
    8 << 20
}
pub fn mirror_items() -> usize {
    10_000
}
pub fn mirror_bytes() -> usize {
    16 << 20
}
pub fn webhook_body_bytes() -> usize {
    1 << 20
}
pub fn kiosk_queue() -> usize {
    256
}
pub fn max_clients() -> usize {
    500
}
pub fn max_message_bytes() -> usize {
    64 << 10
}
pub fn max_event_bytes() -> usize {
    256 << 10
}
pub fn join_timeout() -> Duration {
    Duration::from_secs(5)
}
pub fn header_timeout() -> Duration {
    Duration::from_secs(10)
}
pub fn idle_timeout() -> Duration {
    Duration::from_secs(60)
}
pub fn kiosk_requests() -> usize {
    256
}
pub fn max_subscribe_targets() -> usize {
    64
}
pub fn snapshot_bytes() -> usize {
    16 << 20
}
pub fn site_path() -> String {
    "/app/".into()
}
pub fn log_level() -> String {
    "info".into()
}
pub fn all_collections() -> Vec<String> {
    vec!["*".into()]
}
pub fn wrong_token_limit() -> u32 {
    10
}
pub fn wrong_token_window() -> Duration {
    Duration::from_secs(60)
}
pub fn wrong_token_backoff() -> Duration {
    Duration::from_secs(10)
}
/// Sized for an SD card shared with the system.
pub fn assets_max_bytes() -> usize {
    1 << 30
}
pub fn assets_concurrency() -> usize {
    2
}
pub fn assets_hold_timeout() -> Duration {
    Duration::from_secs(10)
}
