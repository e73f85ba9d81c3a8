//! A kiosk's outbound queue (`limits.kiosk_queue` packets in socketioxide): how many packets wait
//! in it, and whether it is full. The hub asks before every delivery; the fleet shows it per
//! screen.

use socketioxide::extract::SocketRef;

/// Packets queued to a kiosk and not yet written to its connection: how far it is behind.
pub fn queue_depth(socket: &SocketRef) -> usize {
    socket.queue_len()
}

/// Whether a kiosk's queue has no room for one more packet.
pub fn queue_full(socket: &SocketRef) -> bool {
    socket.queue_len() >= socket.queue_capacity()
}
