//! Which database errors are transient: the command that failed with one may run again (see
//! `ofx_core::commander::reprocess`). Added to each hub the database attaches to.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Whether `error` (one error of a failed command's chain) is a transient database error:
/// a serialization failure (PostgreSQL `40001`), a deadlock (`40P01`), SQLite's `BUSY` or
/// `LOCKED`, a connection closed or lost (the transaction did not commit: a commit whose
/// outcome is unknown is verified first, and reported in doubt, never as this), or no
/// connection to be had.
pub(crate) fn is_transient(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(error) = error.downcast_ref::<crate::Error>() {
        return matches!(error, crate::Error::Connect(_));
    }
    let Some(error) = error.downcast_ref::<DieselError>() else {
        return false;
    };
    match error {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand => true,
            _ => {
                let message = info.message();
                message.contains("deadlock detected")
                    || message.contains("database is locked")
                    || message.contains("database table is locked")
                    || message.contains("database schema is locked")
            }
        },
        _ => false,
    }
}
