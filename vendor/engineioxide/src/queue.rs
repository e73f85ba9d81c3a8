//! A socket's bounded packet queue (directus-relay patch 7, vendor/README.md).
//!
//! It replaces a `tokio::sync::mpsc` channel, which allocated a block of 32 slots and a
//! cache-padded shared state (1.5 KiB) for every socket before a single packet was sent. This
//! queue lives inside the socket and grows from empty: an idle socket holds none of it, and a
//! socket that fell behind gives its grown buffer back once it has caught up.
//!
//! The semantics are the channel's: a bounded number of places, reserved with a permit or
//! taken by `try_send`; one receiver at a time (the transport holding the socket's
//! `internal_rx` lock); `close` lets the receiver drain what is queued and refuses more.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};

use crate::socket::Queued;

/// A queue that grew past this many places while a client was behind is given back once it
/// is empty again.
const KEPT_PLACES: usize = 16;

/// A socket's bounded packet queue.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    max: usize,
    /// Wakes the receiver: something was queued, or the queue was closed.
    readable: Notify,
    /// Wakes senders waiting for a place, and waiters for the queue to close.
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Queued>,
    /// Places taken by permits not used yet.
    reserved: usize,
    closed: bool,
}

impl State {
    fn free(&self, max: usize) -> usize {
        max.saturating_sub(self.items.len() + self.reserved)
    }
}

/// A place in the queue, taken until the permit sends a packet or is dropped.
#[derive(Debug)]
pub(crate) struct QueuePermit<'a> {
    queue: &'a Queue,
}

impl QueuePermit<'_> {
    /// Queues `packets` in the place this permit holds.
    pub(crate) fn send(self, packets: Queued) {
        {
            let mut state = self.queue.lock();
            state.reserved -= 1;
            state.items.push_back(packets);
        }
        self.queue.readable.notify_one();
        std::mem::forget(self);
    }
}

impl Drop for QueuePermit<'_> {
    fn drop(&mut self) {
        let was_full = {
            let mut state = self.queue.lock();
            let was_full = state.free(self.queue.max) == 0;
            state.reserved -= 1;
            was_full
        };
        // Senders wait only for a full queue.
        if was_full {
            self.queue.changed.notify_waiters();
        }
    }
}

impl Queue {
    /// A queue of at most `max` places (at least one).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max: max.max(1),
            readable: Notify::new(),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing here panics while holding the lock; should it, the state is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place, if there is one.
    pub(crate) fn try_reserve(&self) -> Result<QueuePermit<'_>, TrySendError<()>> {
        let mut state = self.lock();
        if state.closed {
            return Err(TrySendError::Closed(()));
        }
        if state.free(self.max) == 0 {
            return Err(TrySendError::Full(()));
        }
        state.reserved += 1;
        Ok(QueuePermit { queue: self })
    }

    /// Queues `packets` if there is a place.
    pub(crate) fn try_send(&self, packets: Queued) -> Result<(), TrySendError<Queued>> {
        match self.try_reserve() {
            Ok(permit) => {
                permit.send(packets);
                Ok(())
            }
            Err(TrySendError::Full(())) => Err(TrySendError::Full(packets)),
            Err(TrySendError::Closed(())) => Err(TrySendError::Closed(packets)),
        }
    }

    /// Queues `packets`, waiting for a place; fails once the queue is closed.
    pub(crate) async fn send(&self, packets: Queued) -> Result<(), SendError<Queued>> {
        let mut packets = packets;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.try_send(packets) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(p)) => return Err(SendError(p)),
                Err(TrySendError::Full(p)) => packets = p,
            }
            changed.await;
        }
    }

    /// The places free now.
    pub(crate) fn capacity(&self) -> usize {
        self.lock().free(self.max)
    }

    /// The places in all.
    pub(crate) fn max_capacity(&self) -> usize {
        self.max
    }

    /// Whether the queue was closed: nothing more can be queued.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits until the queue is closed.
    pub(crate) async fn closed(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_closed() {
                return;
            }
            changed.await;
        }
    }

    /// Refuses anything more; what is queued can still be received.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_one();
        self.changed.notify_waiters();
    }

    /// The next packets, or `None` once the queue is closed and empty. For the one receiver.
    pub(crate) async fn recv(&self) -> Option<Queued> {
        loop {
            match self.try_recv() {
                Ok(packets) => return Some(packets),
                Err(TryRecvError::Disconnected) => return None,
                // A packet queued from here on leaves a permit if this task is not waiting yet.
                Err(TryRecvError::Empty) => self.readable.notified().await,
            }
        }
    }

    /// The next packets if some are queued. For the one receiver.
    pub(crate) fn try_recv(&self) -> Result<Queued, TryRecvError> {
        let (packets, was_full) = {
            let mut state = self.lock();
            let was_full = state.free(self.max) == 0;
            match state.items.pop_front() {
                Some(packets) => {
                    if state.items.is_empty() && state.items.capacity() > KEPT_PLACES {
                        state.items = VecDeque::new();
                    }
                    (packets, was_full)
                }
                None if state.closed => return Err(TryRecvError::Disconnected),
                None => return Err(TryRecvError::Empty),
            }
        };
        // A place came free: wake a sender waiting for one (senders wait only for a full
        // queue).
        if was_full {
            self.changed.notify_waiters();
        }
        Ok(packets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn message(text: &str) -> Queued {
        Queued::Message(text.to_owned().into())
    }

    fn text(queued: Queued) -> String {
        match queued {
            Queued::Message(m) => m.as_str().to_owned(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn places_are_bounded_and_reservations_count() {
        let queue = Queue::new(2);
        assert_eq!(queue.capacity(), 2);
        let permit = queue.try_reserve().unwrap();
        queue.try_send(message("a")).unwrap();
        assert!(matches!(
            queue.try_send(message("b")),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(queue.capacity(), 0);
        drop(permit);
        assert_eq!(queue.capacity(), 1, "a dropped permit gives its place back");
        queue.try_reserve().unwrap().send(message("b"));
        assert_eq!(text(queue.try_recv().unwrap()), "a");
        assert_eq!(text(queue.try_recv().unwrap()), "b");
        assert!(matches!(queue.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn a_closed_queue_drains_then_ends_and_refuses_more() {
        let queue = Queue::new(4);
        queue.try_send(message("a")).unwrap();
        queue.close();
        assert!(queue.is_closed());
        assert!(matches!(
            queue.try_send(message("b")),
            Err(TrySendError::Closed(_))
        ));
        assert!(matches!(queue.try_reserve(), Err(TrySendError::Closed(()))));
        assert_eq!(text(queue.try_recv().unwrap()), "a");
        assert!(matches!(queue.try_recv(), Err(TryRecvError::Disconnected)));
    }

    #[test]
    fn a_grown_queue_is_given_back_once_empty() {
        let queue = Queue::new(256);
        for i in 0..200 {
            queue.try_send(message(&i.to_string())).unwrap();
        }
        assert!(queue.lock().items.capacity() >= 200);
        while queue.try_recv().is_ok() {}
        assert_eq!(queue.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn the_receiver_and_senders_wake_each_other() {
        let queue = Arc::new(Queue::new(1));
        // A receiver waiting before anything is queued.
        let receiver = tokio::spawn({
            let queue = queue.clone();
            async move {
                let mut got = Vec::new();
                while let Some(packets) = queue.recv().await {
                    got.push(text(packets));
                }
                got
            }
        });
        // Senders waiting for the one place, in turn.
        for i in 0..50 {
            tokio::time::timeout(Duration::from_secs(10), queue.send(message(&i.to_string())))
                .await
                .expect("a place came free")
                .unwrap();
        }
        let closed = tokio::spawn({
            let queue = queue.clone();
            async move { queue.closed().await }
        });
        queue.close();
        closed.await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), receiver)
            .await
            .expect("the receiver saw the end")
            .unwrap();
        assert_eq!(got, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());
        assert!(queue.send(message("late")).await.is_err());
    }
}
