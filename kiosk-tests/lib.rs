//! Shared helpers for the kiosk tests.
