//! Every open connection: the cap on their number (`limits.max_connections`), which one gives
//! way when it is full, and whether the process's descriptor limit fits the cap.
//!
//! The cap sits below the descriptor limit so that the relay can always accept: someone who
//! holds sockets open cannot lock out `/healthz`, the webhook or a new kiosk. When the cap is
//! reached, the connection idle the longest that is not a kiosk's WebSocket (one that has not
//! sent a request head yet, or is kept alive between requests) is closed to make room; idle
//! ones die by `limits.header_timeout` and `limits.idle_timeout` anyway. Only when every
//! connection is busy (a request in flight, or a kiosk's WebSocket) is the new one turned away,
//! with a plain `503` that names the limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::config::Limits;
use crate::connection::ConnectionHandle;
use prometheus_client::metrics::counter::Counter;

/// What a connection turned away at the cap is told, when it speaks plain HTTP.
const FULL_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
retry-after: 5\r\n\
connection: close\r\n\
content-length: 79\r\n\r\n\
too many open connections (limits.max_connections); try again in a few seconds\n";

/// The open connections, up to a cap.
#[derive(Debug)]
pub struct OpenConnections {
    max: usize,
    open: Mutex<HashMap<u64, ConnectionHandle>>,
    next_id: AtomicU64,
    /// Counts the connections closed to make room.
    evicted: Counter,
}

/// A connection's place among the open ones, given up when dropped (with the connection's IO,
/// so a kiosk's WebSocket keeps it).
#[derive(Debug)]
pub struct Place {
    id: u64,
    connections: Arc<OpenConnections>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

impl OpenConnections {
    /// Each connection closed to make room counts in `evicted`.
    pub fn new(max: usize, evicted: Counter) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            evicted,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ConnectionHandle>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A place for a new connection. At the cap, the connection idle the longest is closed to
    /// make room; with none idle, `None`: the caller turns the new one away.
    pub fn admit(self: &Arc<Self>, connection: &ConnectionHandle) -> Option<Place> {
        let mut open = self.lock();
        if open.len() >= self.max {
            let idlest = open
                .iter()
                .filter_map(|(id, c)| c.idle_since().map(|since| (since, *id)))
                .min()
                .map(|(_, id)| id)?;
            if let Some(evicted) = open.remove(&idlest) {
                debug!(
                    max_connections = self.max,
                    "closed the connection idle the longest to make room for a new one"
                );
                evicted.close();
                self.evicted.inc();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        open.insert(id, connection.clone());
        Some(Place {
            id,
            connections: self.clone(),
        })
    }
}

/// Turns away a connection accepted at the cap: a plain HTTP client reads why. (Best effort:
/// one write that does not wait; a TLS client only sees the connection close.)
pub fn turn_away(stream: TcpStream, plain: bool) {
    if plain {
        stream.try_write(FULL_ANSWER).ok();
    }
    stream.set_zero_linger().ok();
}

/// The soft `Max open files` limit of this process, from `/proc/self/limits` (Linux); `None`
/// when unknown or unlimited.
pub fn descriptor_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_descriptor_limit(&limits)
}

fn parse_descriptor_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Warns when the descriptor limit cannot fit `limits.max_connections` and the relay's other
/// descriptors: past it `accept` fails, and `/healthz`, the webhook and new kiosks wait.
pub fn check_descriptor_limit(limits: &Limits) {
    let needed = limits.descriptors_needed();
    match descriptor_limit() {
        Some(available) if available < needed => warn!(
            available,
            needed,
            max_connections = limits.max_connections(),
            "the descriptor limit (open files) cannot fit limits.max_connections and the relay's own files: raise LimitNOFILE= in the unit to at least {needed}, or lower limits.max_clients (or limits.max_connections)"
        ),
        Some(available) => debug!(available, needed, "the descriptor limit fits"),
        None => debug!("the descriptor limit is unknown or unlimited"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soft_limit_of_open_files() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            1024                 524288               files     \n";
        assert_eq!(parse_descriptor_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_descriptor_limit(unlimited), None);
        assert_eq!(parse_descriptor_limit(""), None);
    }

    #[test]
    fn the_answer_at_the_cap_has_the_length_it_announces() {
        let text = std::str::from_utf8(FULL_ANSWER).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }

    #[test]
    fn at_the_cap_the_connection_idle_the_longest_gives_way() {
        let upgrades = Arc::new(crate::connection::Upgrades::default());
        let evicted = Counter::default();
        let connections = OpenConnections::new(2, evicted.clone());
        let oldest = ConnectionHandle::new(upgrades.clone());
        let newer = ConnectionHandle::new(upgrades.clone());
        let _a = connections.admit(&oldest).expect("room");
        let _b = connections.admit(&newer).expect("room");
        let third = ConnectionHandle::new(upgrades);
        let _c = connections.admit(&third).expect("an idle one gives way");
        assert!(oldest.is_closed());
        assert!(!newer.is_closed());
        assert_eq!(evicted.get(), 1, "counted");
        assert_eq!(connections.len(), 2);
        drop(_c);
        assert_eq!(connections.len(), 1);
    }
}
