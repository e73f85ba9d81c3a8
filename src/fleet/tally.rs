//! What the relay counts for one screen's connection while it is open, kept in its socket's
//! extensions: the hub counts deliveries and cut-offs, the fleet reads them when it closes and
//! for the status page. Imports nothing of the relay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Put on the socket of a kiosk that named its device.
#[derive(Debug, Clone)]
pub struct ScreenTag {
    pub device: Arc<str>,
    pub tally: Arc<Tally>,
}

#[derive(Debug, Default)]
pub struct Tally {
    delivered: AtomicU64,
    cut_off: AtomicBool,
}

impl Tally {
    /// `n` events were queued to this connection.
    pub fn delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// The relay is closing this connection because the screen did not read.
    pub fn cut_off(&self) {
        self.cut_off.store(true, Ordering::Relaxed);
    }

    pub fn delivered_so_far(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn was_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Relaxed)
    }
}
