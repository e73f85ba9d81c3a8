//! The kiosk side: Socket.IO served to the site's screens.

pub mod access;
pub mod kiosk;
