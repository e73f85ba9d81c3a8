//! Counters and a latency histogram shared by every kiosk task, lock-free.
//!
//! The histogram is log-linear: exact below 32 µs, then 32 buckets per power of two, so a
//! percentile is off by at most 1/32 (3 %) and the whole thing is 16 KiB however many kiosks
//! record into it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB as usize;

/// Latencies in microseconds.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros();
    let shift = exp - SUB_BITS;
    (((shift + 1) as u64) << SUB_BITS | ((value >> shift) & (SUB - 1))) as usize
}

/// The largest value that falls into bucket `index`.
fn bucket_top(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let shift = (index >> SUB_BITS) - 1;
    let low = (SUB | (index & (SUB - 1))) << shift;
    low + ((1u64 << shift) - 1)
}

impl Histogram {
    pub fn record(&self, micros: u64) {
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
    }

    /// Forgets every value recorded so far (the warm-up's, before the load).
    pub fn reset(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Ordering::Relaxed);
        }
        self.count.store(0, Ordering::Relaxed);
        self.max.store(0, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The value below or at which a fraction `q` (0..=1) of the recorded values lie, rounded up
    /// to the top of its bucket (and never above the largest value recorded); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return bucket_top(index).min(self.max());
            }
        }
        self.max()
    }
}

/// Which events one kiosk has seen, to tell new deliveries from duplicates.
#[derive(Debug, Default)]
pub struct Seen {
    words: Vec<u64>,
}

impl Seen {
    /// Marks event `n`; false when it was already marked.
    pub fn insert(&mut self, n: u64) -> bool {
        let (word, bit) = ((n / 64) as usize, n % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let fresh = self.words[word] & (1 << bit) == 0;
        self.words[word] |= 1 << bit;
        fresh
    }
}

/// A counter that any task may bump.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        let mut previous_top = None;
        for index in 0..BUCKETS - SUB as usize {
            let top = bucket_top(index);
            if let Some(p) = previous_top {
                assert!(top > p, "bucket {index}");
                assert_eq!(bucket_of(p + 1), index, "first value of bucket {index}");
            }
            assert_eq!(bucket_of(top), index, "last value of bucket {index}");
            previous_top = Some(top);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_within_bucket_precision() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for v in 1..=10_000 {
            h.record(v);
        }
        let cases = [(0.5, 5_000), (0.99, 9_900), (0.999, 9_990), (1.0, 10_000)];
        for (q, exact) in cases {
            let got = h.quantile(q);
            assert!(got >= exact, "q={q}: {got} < {exact}");
            assert!(
                got as f64 <= exact as f64 * (1.0 + 1.0 / SUB as f64),
                "q={q}: {got}"
            );
        }
        assert_eq!(h.max(), 10_000);
        assert_eq!(h.count(), 10_000);
    }

    #[test]
    fn small_values_are_exact_and_outliers_show_at_the_top() {
        let h = Histogram::default();
        for _ in 0..99 {
            h.record(7);
        }
        h.record(3_000_000);
        assert_eq!(h.quantile(0.5), 7);
        assert_eq!(h.quantile(0.99), 7);
        assert_eq!(h.quantile(1.0), 3_000_000);
        assert_eq!(h.max(), 3_000_000);
        h.reset();
        assert_eq!((h.count(), h.max(), h.quantile(0.5)), (0, 0, 0));
        h.record(9);
        assert_eq!(h.quantile(0.99), 9);
    }

    #[test]
    fn seen_tells_duplicates() {
        let mut seen = Seen::default();
        assert!(seen.insert(0));
        assert!(seen.insert(1000));
        assert!(!seen.insert(1000));
        assert!(seen.insert(63));
        assert!(!seen.insert(0));
    }
}
