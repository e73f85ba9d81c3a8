//! Where changes come from. This release receives them from a Directus Flow webhook.

pub mod webhook;
