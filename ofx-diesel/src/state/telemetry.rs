//! A state service's metrics (names in [`crate::telemetry`]), labelled with the hub's host id
//! and the projection's name.

use std::sync::atomic::Ordering;

use ofx_core::WeakHub;

use super::apply::Failed;
use super::projection::Projection;
use super::service::{Inner, lock};
use super::status::QuarantineReason;
use crate::backend::Backend;
use crate::telemetry::{
    STATE_EVENTS_APPLIED, STATE_LAG_EVENTS, STATE_POSITION, STATE_QUARANTINED, STATE_READY,
};

/// Publishes the state's gauges and counters; `applied` stream events were applied since the
/// last call. Takes the status lock, then the published state: call it holding neither.
pub(crate) fn record<P: Projection, B: Backend>(inner: &Inner<P, B>, applied: u64) {
    let host = inner
        .hub
        .get()
        .and_then(WeakHub::upgrade)
        .map_or_else(String::new, |hub| hub.host_id().to_string());
    let head = lock(&inner.status).head;
    let (position, ready) = {
        let published = inner.published.borrow();
        (published.position, published.ready)
    };
    let labels = [("host", host), ("projection", P::NAME.to_owned())];
    #[allow(clippy::cast_precision_loss)] // a gauge is an f64
    {
        metrics::gauge!(STATE_POSITION, &labels).set(position as f64);
        metrics::gauge!(STATE_LAG_EVENTS, &labels).set(head.saturating_sub(position) as f64);
    }
    metrics::gauge!(STATE_READY, &labels).set(if ready { 1.0 } else { 0.0 });
    metrics::counter!(STATE_QUARANTINED, &labels)
        .absolute(inner.quarantined.load(Ordering::Relaxed));
    if applied > 0 {
        metrics::counter!(STATE_EVENTS_APPLIED, &labels).increment(applied);
    }
}

/// How many of `rows` stream events were applied, given those `failed`.
pub(crate) fn applied(rows: usize, failed: &[Failed]) -> u64 {
    let set_aside = failed
        .iter()
        .filter(|failed| !matches!(failed.reason, QuarantineReason::Missing { .. }))
        .count();
    u64::try_from(rows.saturating_sub(set_aside)).unwrap_or(u64::MAX)
}
