//! The hub's Prometheus figures: the upstream's state, duplicates dropped, the mirror's size.

use tracing::{debug, warn};

use super::{Hub, UpstreamState};
use crate::metrics;

impl Hub {
    pub(super) fn note_upstream(&self) {
        for s in [
            UpstreamState::Live,
            UpstreamState::CatchingUp,
            UpstreamState::Offline,
        ] {
            let labels = metrics::StateLabels {
                state: s.as_str().into(),
            };
            let value = i64::from(s == self.upstream.state);
            self.metrics.upstream.get_or_create(&labels).set(value);
        }
    }

    pub(super) fn duplicate(&self, collection: &str) {
        debug!(collection, "duplicate change dropped");
        self.metrics
            .duplicates
            .get_or_create(&metrics::collection_labels(collection))
            .inc();
    }

    pub(super) fn note_mirror(&self, collection: &str) {
        if let Some(reason) = self.mirror.overflow(collection) {
            let items = self
                .metrics
                .mirror_items
                .get_or_create(&metrics::collection_labels(collection));
            if items.get() != -1 {
                warn!(
                    collection,
                    reason = reason.describe(),
                    "collection too large to mirror: kiosks get no snapshot of it until the relay restarts; raise the limit to mirror it"
                );
                items.set(-1);
            }
        } else {
            self.metrics
                .mirror_items
                .get_or_create(&metrics::collection_labels(collection))
                .set(self.mirror.len(collection) as i64);
        }
        self.metrics.mirror_bytes.set(self.mirror.bytes() as i64);
    }
}
