//! The replay ring: the most recent events, bounded in count and bytes, for kiosks that resume.

use std::collections::VecDeque;
use std::sync::Arc;

use super::event::Event;

/// Recent events in seq order. When either bound is passed the oldest events are dropped; a
/// kiosk that resumes from before the oldest kept event gets a snapshot instead.
#[derive(Debug)]
pub struct ReplayRing {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    /// The seq of the newest event ever pushed (0 before the first).
    head: u64,
}

impl ReplayRing {
    pub fn new(max_events: usize, max_bytes: usize, head: u64) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_events: max_events.max(1),
            max_bytes,
            head,
        }
    }

    /// Appends an event; its seq must follow the previous one.
    pub fn push(&mut self, event: Arc<Event>) {
        debug_assert_eq!(
            event.seq,
            self.head + 1,
            "events enter the ring in seq order"
        );
        self.head = event.seq;
        self.bytes += event.weight();
        self.events.push_back(event);
        while self.events.len() > self.max_events
            || (self.bytes > self.max_bytes && self.events.len() > 1)
        {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.weight();
            }
        }
    }

    /// The events after `seq`, oldest first, or `None` when some of them were already dropped
    /// (or `seq` lies in the future).
    pub fn since(&self, seq: u64) -> Option<impl Iterator<Item = &Arc<Event>>> {
        if seq > self.head {
            return None;
        }
        let oldest = self.events.front().map_or(self.head + 1, |e| e.seq);
        if seq + 1 < oldest {
            return None;
        }
        let skip = (seq + 1 - oldest) as usize;
        Some(self.events.iter().skip(skip))
    }

    /// Every kept event, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.events.iter()
    }

    /// The seq of the newest event ever pushed.
    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::super::event::EventName;
    use super::*;
    use serde_json::value::RawValue;

    fn event(seq: u64, body: &str) -> Arc<Event> {
        Arc::new(Event {
            seq,
            action: EventName::Update,
            name: "data.update".into(),
            collection: "screens".into(),
            namespace: "/".into(),
            room: None,
            body: RawValue::from_string(format!("\"{body}\"")).expect("valid JSON"),
        })
    }

    fn seqs(ring: &ReplayRing, since: u64) -> Option<Vec<u64>> {
        ring.since(since).map(|it| it.map(|e| e.seq).collect())
    }

    #[test]
    fn replays_exactly_the_events_after_a_seq() {
        let mut ring = ReplayRing::new(10, 1 << 20, 0);
        assert_eq!(seqs(&ring, 0), Some(vec![]));
        for seq in 1..=5 {
            ring.push(event(seq, "x"));
        }
        assert_eq!(seqs(&ring, 0), Some(vec![1, 2, 3, 4, 5]));
        assert_eq!(seqs(&ring, 3), Some(vec![4, 5]));
        assert_eq!(seqs(&ring, 5), Some(vec![]));
        assert_eq!(
            seqs(&ring, 6),
            None,
            "a seq from the future cannot be resumed"
        );
    }

    #[test]
    fn drops_the_oldest_past_the_event_bound() {
        let mut ring = ReplayRing::new(3, 1 << 20, 0);
        for seq in 1..=5 {
            ring.push(event(seq, "x"));
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(seqs(&ring, 2), Some(vec![3, 4, 5]));
        assert_eq!(seqs(&ring, 1), None, "event 2 is gone");
    }

    #[test]
    fn drops_the_oldest_past_the_byte_bound() {
        let one = event(1, "0123456789").weight();
        let mut ring = ReplayRing::new(100, one * 2, 0);
        for seq in 1..=4 {
            ring.push(event(seq, "0123456789"));
        }
        assert_eq!(ring.len(), 2);
        assert!(ring.bytes() <= one * 2);
        assert_eq!(seqs(&ring, 2), Some(vec![3, 4]));
        assert_eq!(seqs(&ring, 1), None);
    }

    #[test]
    fn keeps_the_newest_event_even_when_it_alone_is_too_big() {
        let mut ring = ReplayRing::new(100, 10, 0);
        ring.push(event(1, "far too big for ten bytes"));
        assert_eq!(seqs(&ring, 0), Some(vec![1]));
    }

    #[test]
    fn a_ring_that_starts_at_a_later_seq_resumes_only_from_there() {
        let ring = ReplayRing::new(10, 1 << 20, 41);
        assert_eq!(seqs(&ring, 41), Some(vec![]));
        assert_eq!(seqs(&ring, 40), None);
    }
}
