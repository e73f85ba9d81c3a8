//! The snapshot budget: the bytes of snapshot answers queued to kiosks that have not read them
//! yet, bounded by `limits.snapshot_bytes` whatever the number of kiosks or subscribes.
//!
//! A subscribe that is answered with a snapshot is charged the size of its answer until the
//! kiosk has read it: for a kiosk on WebSocket, until its connection has handed that many more
//! bytes to the operating system; for one still on long-polling, until it upgrades to
//! WebSocket or disconnects, or [`POLLING_HOLD`] has passed (by then it has either polled the
//! answer, or Engine.IO's heartbeat has closed it and freed what it held). A snapshot that
//! does not fit waits, in the order the kiosks asked, and is answered when earlier ones have
//! been read. A kiosk whose connection writes nothing of its snapshot for [`SNAPSHOT_STALL`]
//! is cut off: it resumes later, and the kiosks behind it get their turn. A snapshot larger
//! than the whole budget is answered alone. Answers that replay events are not charged: they
//! are bounded by the kiosk's queue.

use std::collections::VecDeque;
use std::time::Duration;

use socketioxide::TransportType;
use socketioxide::extract::SocketRef;
use tokio::time::Instant;

use crate::connection;

/// A kiosk on WebSocket whose connection writes nothing of its snapshot for this long is cut
/// off.
pub const SNAPSHOT_STALL: Duration = Duration::from_secs(5);

/// How long a snapshot answer to a kiosk on long-polling is charged at most: Engine.IO's ping
/// interval and timeout (25 s and 20 s), after which a kiosk that has not polled is closed.
pub const POLLING_HOLD: Duration = Duration::from_secs(45);

/// How often the hub looks at what kiosks have read while anything is charged or waits.
pub const BUDGET_CHECK: Duration = Duration::from_millis(50);

/// An answer queued to a kiosk and not yet read.
#[derive(Debug)]
struct Charge {
    socket: SocketRef,
    bytes: usize,
    read: Reading,
}

/// How a charge is seen to be read.
#[derive(Debug)]
enum Reading {
    /// The kiosk's WebSocket connection had written `start` bytes when the answer was
    /// queued; it is read once `start + bytes` are written. `last` and `moved` track progress.
    WebSocket {
        start: u64,
        last: u64,
        moved: Instant,
    },
    /// A kiosk on long-polling, charged until it upgrades, disconnects, or `until`.
    Polling { until: Instant },
}

/// What the budget asks of the hub after a check.
#[derive(Debug, Default)]
pub(super) struct Checked {
    /// Kiosks that stopped reading their snapshot, and for how long: to be cut off.
    pub(super) stalled: Vec<(SocketRef, Duration)>,
}

/// The budget, its charges and the subscribes (`W`) waiting for it.
#[derive(Debug)]
pub(super) struct SnapshotBudget<W> {
    limit: usize,
    charged: usize,
    charges: Vec<Charge>,
    waiting: VecDeque<W>,
}

impl<W> SnapshotBudget<W> {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            charged: 0,
            charges: Vec::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Whether a snapshot answer of `bytes` may go out now: nobody waits before it, and it
    /// fits (or nothing else is charged).
    pub(super) fn admits(&self, bytes: usize) -> bool {
        self.waiting.is_empty() && self.fits(bytes)
    }

    /// Whether an answer of `bytes` fits now (or nothing else is charged), for a subscribe
    /// that has waited its turn already.
    pub(super) fn fits(&self, bytes: usize) -> bool {
        self.charged == 0 || self.charged + bytes <= self.limit
    }

    /// Bytes charged now.
    pub(super) fn charged(&self) -> usize {
        self.charged
    }

    /// Subscribes waiting now.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether the hub should check soon: something is charged or waits.
    pub(super) fn is_busy(&self) -> bool {
        !self.charges.is_empty() || !self.waiting.is_empty()
    }

    /// Queues a subscribe behind the others.
    pub(super) fn wait(&mut self, waiting: W) {
        self.waiting.push_back(waiting);
    }

    /// Puts back at the head a subscribe taken by [`SnapshotBudget::next_waiting`] that still
    /// does not fit.
    pub(super) fn wait_first(&mut self, waiting: W) {
        self.waiting.push_front(waiting);
    }

    /// The first waiting subscribe, when there is room for another answer.
    pub(super) fn next_waiting(&mut self) -> Option<W> {
        if self.charged >= self.limit {
            return None;
        }
        self.waiting.pop_front()
    }

    /// Charges an answer of `bytes` just queued to `socket`.
    pub(super) fn charge(&mut self, socket: &SocketRef, bytes: usize, now: Instant) {
        let read = match (socket.transport_type(), connection::bytes_written(socket)) {
            (TransportType::Websocket, Some(start)) => Reading::WebSocket {
                start,
                last: start,
                moved: now,
            },
            _ => Reading::Polling {
                until: now + POLLING_HOLD,
            },
        };
        self.charged += bytes;
        self.charges.push(Charge {
            socket: socket.clone(),
            bytes,
            read,
        });
    }

    /// Releases what kiosks have read (or can no longer hold), and names the kiosks that
    /// stopped reading.
    pub(super) fn check(&mut self, now: Instant) -> Checked {
        let mut checked = Checked::default();
        let mut charged = 0;
        self.charges.retain_mut(|charge| {
            let keep = match charge.socket.connected() {
                false => false,
                true => match &mut charge.read {
                    Reading::Polling { until } => {
                        charge.socket.transport_type() == TransportType::Polling && now < *until
                    }
                    Reading::WebSocket { start, last, moved } => {
                        match connection::bytes_written(&charge.socket) {
                            None => false,
                            Some(written) if written >= *start + charge.bytes as u64 => false,
                            Some(written) if written != *last => {
                                *last = written;
                                *moved = now;
                                true
                            }
                            Some(_) if now.duration_since(*moved) >= SNAPSHOT_STALL => {
                                checked
                                    .stalled
                                    .push((charge.socket.clone(), now.duration_since(*moved)));
                                false
                            }
                            Some(_) => true,
                        }
                    }
                },
            };
            if keep {
                charged += charge.bytes;
            }
            keep
        });
        self.charged = charged;
        checked
    }

    /// Drops every waiting subscribe that `gone` says no longer needs an answer.
    pub(super) fn forget(&mut self, gone: impl Fn(&W) -> bool) {
        self.waiting.retain(|w| !gone(w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_budget_admits_any_answer_and_a_full_one_only_what_fits() {
        let budget = SnapshotBudget::<()>::new(100);
        assert!(budget.admits(10));
        assert!(
            budget.admits(1_000),
            "larger than the budget: answered alone"
        );
        let budget = SnapshotBudget::<()> {
            charged: 60,
            ..SnapshotBudget::new(100)
        };
        assert!(budget.admits(40));
        assert!(!budget.admits(41));
        assert!(!budget.is_busy());
    }
}
