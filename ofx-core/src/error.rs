//! The errors of ofx-core.

/// An error of the ofx runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`capture`](crate::capture) was given a future that called no compute method, so there
    /// is no computed value to return. Call a `#[compute_method]` inside the future.
    #[error("the captured future called no compute method")]
    NothingCaptured,
}

/// `Result` with ofx-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
