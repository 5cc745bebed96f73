//! Which database errors are transient: the command that failed with one may run again (see
//! `ofx_core::commander::reprocess`). Added to each hub the database attaches to.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Whether `error` (one error of a failed command's chain) is a transient database error:
/// a serialization failure (PostgreSQL `40001`), a deadlock (`40P01`), SQLite's `BUSY` or
/// `LOCKED`, a connection closed or lost (the transaction did not commit: a commit whose
/// outcome is unknown is verified first, and reported in doubt, never as this), or no
/// connection to be had.
///
/// A handler's error type that wraps Diesel's error with `#[error(transparent)]` hides it from
/// the chain (its `source()` is the database error's own, none): such a link is recognized by
/// its message, which is the database's.
pub(crate) fn is_transient(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(error) = error.downcast_ref::<crate::Error>() {
        return matches!(error, crate::Error::Connect(_));
    }
    match error.downcast_ref::<DieselError>() {
        Some(DieselError::DatabaseError(kind, info)) => match kind {
            DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand => true,
            _ => transient_message(info.message()),
        },
        Some(_) => false,
        None => transient_message(&error.to_string()),
    }
}

/// Whether a database's error message says serialization failure, deadlock, locked, or that
/// the server ended the session (PostgreSQL's `57P01` when the session is terminated by
/// `pg_terminate_backend` or a fast shutdown, `57P02` on a crash, `57P03` while it starts or
/// recovers: the transaction did not commit).
fn transient_message(message: &str) -> bool {
    message.contains("could not serialize access due to")
        || message.contains("deadlock detected")
        || message.contains("terminating connection due to")
        || message.contains("the database system is")
        || message.contains("server closed the connection unexpectedly")
        || message.contains("database is locked")
        || message.contains("database table is locked")
        || message.contains("database schema is locked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum HandlerError {
        #[error(transparent)]
        Query(#[from] DieselError),
        #[error("refused")]
        Refused,
    }

    fn database_error(kind: DatabaseErrorKind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn database_errors_are_recognized_bare_and_wrapped_transparently() {
        let cases = [
            (
                DatabaseErrorKind::SerializationFailure,
                "could not serialize access due to concurrent update",
                true,
            ),
            (DatabaseErrorKind::Unknown, "deadlock detected", true),
            (DatabaseErrorKind::Unknown, "database is locked", true),
            (
                DatabaseErrorKind::Unknown,
                "terminating connection due to administrator command",
                true,
            ),
            (
                DatabaseErrorKind::Unknown,
                "terminating connection due to crash of another server process",
                true,
            ),
            (
                DatabaseErrorKind::Unknown,
                "the database system is starting up",
                true,
            ),
            (
                DatabaseErrorKind::Unknown,
                "the database system is shutting down",
                true,
            ),
            (
                DatabaseErrorKind::UniqueViolation,
                "duplicate key value violates unique constraint",
                false,
            ),
        ];
        for (kind, message, transient) in cases {
            assert_eq!(
                is_transient(&database_error(kind, message)),
                transient,
                "{message}"
            );
            let wrapped = HandlerError::from(database_error(kind, message));
            assert_eq!(is_transient(&wrapped), transient, "wrapped: {message}");
        }
        assert!(!is_transient(&HandlerError::Refused));
        assert!(!is_transient(&DieselError::NotFound));
    }
}
