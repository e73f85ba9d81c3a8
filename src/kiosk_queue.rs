//! A kiosk's outbound queue (`limits.kiosk_queue` packets in socketioxide): whether it is full.
//! The hub asks before every delivery; the fleet shows it per screen.

use socketioxide::extract::SocketRef;

/// Whether a kiosk's queue has no room for one more packet. Asking socketioxide to emit a value
/// that refuses to serialise takes a place in the queue and gives it back at once: the answer
/// says whether there was one, and nothing is sent. It runs for every kiosk on every event, so
/// it is kept cheap: an empty event name (nothing to escape) and an empty error message
/// (serde_json then allocates only its error box, and finds no position in the message).
pub fn queue_full(socket: &SocketRef) -> bool {
    struct Probe;
    impl serde::Serialize for Probe {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom(""))
        }
    }
    use socketioxide::{SendError, SocketError};
    matches!(
        socket.emit("", &Probe),
        Err(SendError::Socket(SocketError::InternalChannelFull))
    )
}
