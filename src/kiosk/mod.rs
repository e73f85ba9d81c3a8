//! Kiosks: which token may read what ([`access`]), how often an address may show a wrong one
//! ([`throttle`]), and the Socket.IO server that admits them and hands their subscribes to the
//! hub ([`server`]). Delivery and the subscribe protocol
//! itself belong to the hub, which owns the rooms' contents and the order of events.

pub mod access;
pub mod server;
pub mod throttle;
