//! The status page's mirror and kiosks per room, as the hub tells them every tick.

use std::sync::atomic::Ordering;

use futures_util::FutureExt;

use super::Hub;

/// The rooms' kiosk counts of the status page. Counting walks every kiosk of every room, which
/// at 10,000 kiosks cost as much every second as a broadcast; it is redone only after
/// [`Metrics::room_changes`] moved (twice: a kiosk that disconnects leaves its rooms just after
/// saying so), and every [`BOARD_RECOUNT`] ticks in any case.
#[derive(Debug, Default)]
pub(super) struct BoardRooms {
    /// `room_changes` when last counted.
    changes: u64,
    /// Counted twice without a change in between.
    settled: bool,
    /// Ticks since the last count.
    age: u32,
    rooms: Vec<(String, usize)>,
    kiosks: usize,
}

/// Ticks after which the status page's rooms are recounted even without a known change.
const BOARD_RECOUNT: u32 = 30;

impl Hub {
    /// Tells the status page about the mirror and the kiosks per room (rooms of a namespace
    /// other than `/` are prefixed with it); the rooms are recounted only when they may have
    /// changed (see [`BoardRooms`]).
    pub(super) fn publish_board(&mut self) {
        let changes = self.metrics.room_changes.load(Ordering::Acquire);
        let board = &self.board_rooms;
        let counted = changes == board.changes && board.settled && board.age + 1 < BOARD_RECOUNT;
        if counted {
            self.board_rooms.age += 1;
        } else {
            let (rooms, kiosks) = self.count_rooms();
            self.board_rooms = BoardRooms {
                settled: changes == self.board_rooms.changes,
                changes,
                age: 0,
                rooms,
                kiosks,
            };
        }
        let board = &self.board_rooms;
        self.metrics
            .board
            .set_kiosks(self.mirror.stats(), board.rooms.clone(), board.kiosks);
    }

    /// The kiosks of every room, and in all.
    fn count_rooms(&self) -> (Vec<(String, usize)>, usize) {
        let mut rooms: Vec<(String, usize)> = Vec::new();
        let mut kiosks = 0;
        for path in &self.namespaces {
            let Some(ns) = self.io.of(path.as_str()) else {
                continue;
            };
            let names = ns.clone().rooms().now_or_never().and_then(Result::ok);
            for room in names.unwrap_or_default() {
                let count = ns.clone().to(room.clone()).sockets().len();
                let label = match path.as_str() {
                    "/" => room.to_string(),
                    path => format!("{path} {room}"),
                };
                rooms.push((label, count));
            }
            kiosks += ns.sockets().len();
        }
        rooms.sort();
        (rooms, kiosks)
    }
}
