//! Capped exponential backoff with full jitter, for every reconnect to Directus.

use std::time::Duration;

/// The first wait after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Waits that double from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], each drawn at random from its
/// upper half, so a fleet of relays does not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = BACKOFF_MIN
            .saturating_mul(1 << self.attempt.min(16))
            .min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        let mut byte = [0u8; 2];
        getrandom::fill(&mut byte).ok();
        let fraction = f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX);
        ceiling.mul_f64(0.5 + fraction / 2.0)
    }

    /// After a success: start again from the shortest wait.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| b.next_wait()).collect();
        for (i, w) in waits.iter().enumerate() {
            let ceiling = BACKOFF_MIN.saturating_mul(1 << i).min(BACKOFF_MAX);
            assert!(*w <= ceiling && *w >= ceiling / 2, "wait {i}: {w:?}");
        }
        assert!(waits[9] >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next_wait() <= BACKOFF_MIN);
    }
}
