//! Applying a batch of stream rows to a state: decoding, `apply`, and quarantine of what
//! fails, with no trace of a failed `apply` left in the state.

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::projection::Projection;
use super::rows::StreamRow;
use super::status::QuarantineReason;

/// An event set aside while applying a batch.
pub(crate) struct Failed {
    pub(crate) position: u64,
    pub(crate) reason: QuarantineReason,
    pub(crate) body: String,
}

/// What applying a batch gave.
pub(crate) struct Applied<S> {
    pub(crate) state: S,
    /// The position of the last row (applied or set aside).
    pub(crate) position: u64,
    /// The positions set aside, in order.
    pub(crate) failed: Vec<Failed>,
    /// The identity of the row at `position` (none when no row was read).
    pub(crate) anchor: Option<super::snapshot::Anchor>,
}

/// Applies `rows` (in position order, after `position`) to a copy of `base`. Positions
/// missing between `position` and a row are recorded as one [`QuarantineReason::Missing`]
/// range, whatever its length.
pub(crate) fn apply_batch<P: Projection>(
    projection: &P,
    base: &P::State,
    mut position: u64,
    rows: &[StreamRow],
) -> Applied<P::State> {
    let mut state = base.clone();
    let mut failed = Vec::new();
    // Rows applied so far, to apply again from `base` after an `apply` that failed midway.
    let mut applied: Vec<usize> = Vec::with_capacity(rows.len());
    // The last row read: its identity is the anchor.
    let mut last = None;
    for (index, row) in rows.iter().enumerate() {
        let at = u64::try_from(row.position).unwrap_or(0);
        if at <= position {
            continue; // read twice (cannot happen with one reader; harmless)
        }
        if at > position + 1 {
            failed.push(Failed {
                position: position + 1,
                reason: QuarantineReason::Missing { through: at - 1 },
                body: String::new(),
            });
        }
        position = at;
        last = Some(row);
        match apply_one(projection, &mut state, row, at) {
            Ok(()) => applied.push(index),
            Err(reason) => {
                failed.push(Failed {
                    position: at,
                    reason: reason.clone(),
                    body: row.body.clone(),
                });
                if !matches!(reason, QuarantineReason::Undecodable(_)) {
                    // `apply` may have changed the state before it failed: start again from
                    // the base, with the rows that applied.
                    state = base.clone();
                    for &index in &applied {
                        let row = &rows[index];
                        let at = u64::try_from(row.position).unwrap_or(0);
                        // It applied once; being pure, it applies again.
                        let _ = apply_one(projection, &mut state, row, at);
                    }
                }
            }
        }
    }
    Applied {
        state,
        position,
        failed,
        anchor: last.map(|row| super::snapshot::Anchor {
            operation_uuid: row.operation_uuid.clone(),
            appended_at: row.appended_at,
        }),
    }
}

/// Decodes and applies one row.
pub(crate) fn apply_one<P: Projection>(
    projection: &P,
    state: &mut P::State,
    row: &StreamRow,
    position: u64,
) -> Result<(), QuarantineReason> {
    let event: P::Event = serde_json::from_str(&row.body)
        .map_err(|error| QuarantineReason::Undecodable(error.to_string()))?;
    match catch_unwind(AssertUnwindSafe(|| {
        projection.apply(state, event, position)
    })) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(rejection)) => Err(QuarantineReason::Rejected(rejection.reason().to_owned())),
        Err(panic) => Err(QuarantineReason::Panicked(panic_message(&*panic))),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
