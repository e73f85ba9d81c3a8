//! Kiosks: which token may read what ([`access`]), how often an address may show a wrong one
//! ([`throttle`]), the Socket.IO server that admits them and hands their subscribes to the hub
//! ([`server`]), and the bound on sessions that have not joined yet ([`pending`]). Delivery
//! and the subscribe protocol
//! itself belong to the hub, which owns the rooms' contents and the order of events.

pub mod access;
pub mod pending;
pub mod server;
pub mod throttle;
