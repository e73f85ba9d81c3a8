//! `[assets]`: the Directus files that relayed items reference, cached on the relay's disk and
//! served to kiosks at `/assets/<id>`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults;
use super::units::{byte_size, duration};

/// The files cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetsConfig {
    /// Download the files that relayed items reference and serve them at `/assets/<id>`.
    /// Needs `[directus]`.
    #[serde(default)]
    pub enabled: bool,
    /// Where the files are kept. Absent: `assets` under `state_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// The disk budget of the cache: files and their variants, never more.
    #[serde(default = "defaults::assets_max_bytes", with = "byte_size")]
    pub max_bytes: usize,
    /// Files downloaded in the background at the same time.
    #[serde(default = "defaults::assets_concurrency")]
    pub concurrency: usize,
    /// How long `hold_for_assets` holds back an item whose files are not cached yet; then it
    /// is sent anyway (and counted).
    #[serde(default = "defaults::assets_hold_timeout", with = "duration")]
    pub hold_timeout: Duration,
}

impl Default for AssetsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: None,
            max_bytes: defaults::assets_max_bytes(),
            concurrency: defaults::assets_concurrency(),
            hold_timeout: defaults::assets_hold_timeout(),
        }
    }
}

impl AssetsConfig {
    /// The cache's folder: `dir`, or `assets` under `state_dir`.
    pub fn dir(&self, state_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| state_dir.join("assets"))
    }
}

/// The most files downloaded at once in the background (`assets.concurrency`).
pub const MAX_ASSET_CONCURRENCY: usize = 16;

/// The smallest disk budget accepted (`assets.max_bytes`).
pub const MIN_ASSET_BYTES: usize = 1 << 20;

/// Misses streamed through from Directus at the same time; one more is answered 503 with
/// `Retry-After`, so that a crowd of screens asking for files that are not cached cannot open
/// unbounded connections to Directus.
pub const STREAMS_THROUGH: usize = 16;

/// Files sent from disk at the same time; one more is answered 503 with `Retry-After`.
pub const STREAMS_FROM_DISK: usize = 256;

/// Memory of one file sent from disk: a 64 KiB chunk and hyper's 64 KiB write buffer, with
/// the allocator's slack (measured: 100 at once, +18.7 MiB; BENCHMARKS.md, "Files").
pub const FROM_DISK_BYTES: u64 = 190 << 10;

/// Memory of one file streamed through from Directus: the HTTP client's read buffer, the chunk
/// on its way, hyper's write buffer (measured: 16 at once, +28.8 MiB).
pub const THROUGH_BYTES: u64 = 1843 << 10;

impl AssetsConfig {
    /// What files in flight may hold in memory at most (0 without `[assets]`).
    pub fn memory_budget_bytes(&self) -> u64 {
        if !self.enabled {
            return 0;
        }
        STREAMS_FROM_DISK as u64 * FROM_DISK_BYTES + STREAMS_THROUGH as u64 * THROUGH_BYTES
    }
}
